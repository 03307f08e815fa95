#!/usr/bin/env bash
# Prints the python of a venv for Python VERSION (3.12, 3.13, ...) with etcdlock (editable) and its dev
# dependencies, made from that Python as pyenv (or PATH) has it; reused until pyproject.toml changes.
#   $(bash scripts/python_venv.sh 3.13) -m pytest -q tests/test_kv.py
set -euo pipefail
version=${1:?usage: $0 VERSION}
root=$(cd "$(dirname "$0")/.." && pwd)
find_python() {
  local candidate
  # pyenv's own install first: its shim on PATH may refuse a version that is not selected.
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python"$version" \
      "$(command -v "python$version" 2>/dev/null || true)"; do
    if [ -x "$candidate" ] && "$candidate" -c '' 2>/dev/null; then echo "$candidate"; return 0; fi
  done
  echo "Python $version not found (neither python$version on PATH nor under pyenv's versions)" >&2
  return 1
}
base=$(find_python)
venv=/tmp/etcdlock-py$version
stamp="$root $(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
(
  flock 9
  if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating $venv from $base" >&2
    "$base" -m venv "$venv"
  fi
  if [ "$(cat "$venv/.etcdlock-installed" 2>/dev/null)" != "$stamp" ]; then
    echo "==> installing etcdlock[dev] into $venv" >&2
    # (pip's note about configured package locations missing on this machine is noise: filtered out)
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[dev]" 2>&1 \
      | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
    "$venv/bin/python" -c "import etcdlock, grpc, pytest" || { echo "install into $venv failed" >&2; exit 1; }
    echo "$stamp" > "$venv/.etcdlock-installed"
  fi
) 9>"$venv.lock"
echo "$venv/bin/python"
