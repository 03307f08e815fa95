#!/usr/bin/env bash
# The whole check, as CI runs it: install what is missing, then stubs-fresh, lint, types, the API reference,
# tests against real etcd (the tests start and stop their own etcd processes), and the lowest/highest
# dependency versions.
# Options: --quick skips the dependency-range runs; extra arguments go to pytest (e.g. --slow, -k NAME).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source "$root/scripts/bootstrap.sh"
quick=0
if [ "${1:-}" = "--quick" ]; then quick=1; shift; fi

echo "==> generated stubs match proto/"
bash scripts/check_stubs_fresh.sh
echo "==> ruff"
ruff check src tests scripts bench
ruff format --check src tests scripts bench
echo "==> mypy --strict"
mypy
echo "==> API reference (docs/api/): builds without warnings, every public name documented"
python scripts/build_docs.py
echo "==> pytest"
python -m pytest -q -p no:cacheprovider "$@"
if [ "$quick" = 0 ]; then
  echo "==> dependency range: lowest and highest supported protobuf/grpcio"
  bash scripts/check_dep_range.sh lowest python -m pytest -q -p no:cacheprovider tests/test_kv.py tests/test_watch.py
  bash scripts/check_dep_range.sh highest python -m pytest -q -p no:cacheprovider tests/test_kv.py tests/test_watch.py
fi
echo "==> all checks passed"
