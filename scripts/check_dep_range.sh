#!/usr/bin/env bash
# Runs a command against one end of the supported dependency range, in a venv with EXACTLY those pins:
#
#   scripts/check_dep_range.sh lowest  python -W error scripts/wire_smoke.py --endpoint 127.0.0.1:2379
#   scripts/check_dep_range.sh highest python -m pytest -q
#   scripts/check_dep_range.sh lowest            # just (re)build the venv and print the versions
#
# The pins below are the ends proven on Python 3.11 and must match [project] dependencies in pyproject.toml
# (checked here): lower bound == lowest pin, highest pin < upper bound. Venvs live in /tmp and are reused;
# the pins are re-applied on every run, so a reused venv cannot drift. The package is installed --no-deps
# (editable), so nothing but these pins decides the protobuf/grpcio versions under test; besides them the
# venv only gets the dev extra's pytest* test runners (which depend on neither).
set -euo pipefail

usage() { echo "usage: $0 lowest|highest [command [args...]]" >&2; exit 2; }
[ $# -ge 1 ] || usage
end=$1; shift
case $end in
  # Lowest: protobuf 3.20.0 is the first runtime with google.protobuf.internal.builder, which the stubs need
  # (3.19.x: ImportError). grpcio 1.49.1 is the oldest non-yanked grpcio with Python 3.11 wheels (1.49.0 is
  # yanked; 1.48.x has no cp311 wheel and its sdist does not build on 3.11).
  lowest)  PROTOBUF=3.20.0; GRPCIO=1.49.1 ;;
  highest) PROTOBUF=7.36.2; GRPCIO=1.85.1 ;;
  *) usage ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
venv=/tmp/etcdlock-deps-$end
py=$venv/bin/python
start=$(date +%s)

(
  # Serialize setup of the same venv (parallel CI jobs on one runner); the command itself runs unlocked.
  flock 9
  if [ ! -x "$py" ]; then
    python3 -m venv "$venv"
  fi
  # The test runners from the dev extra (pytest, pytest-asyncio) come along so the command can be pytest;
  # they are resolved together with the == pins, so they cannot move them.
  mapfile -t runners < <("$py" -c 'import sys, tomllib
for d in tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["dev"]:
    if d.startswith("pytest"): print(d)' "$root/pyproject.toml")
  "$py" -m pip install -q --disable-pip-version-check --only-binary=:all: \
    "protobuf==$PROTOBUF" "grpcio==$GRPCIO" "${runners[@]}"
  # Editable install, redone only when pyproject.toml changes (the source itself is picked up live).
  stamp="$root $(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
  if [ "$(cat "$venv/.etcdlock-installed" 2>/dev/null)" != "$stamp" ]; then
    "$py" -m pip install -q --disable-pip-version-check --no-deps -e "$root"
    echo "$stamp" > "$venv/.etcdlock-installed"
  fi
) 9>"$venv.lock"

# Print what is really installed, and fail if the pins and pyproject.toml disagree.
"$py" - "$root/pyproject.toml" "$end" "$PROTOBUF" "$GRPCIO" <<'EOF'
import re, sys, tomllib
from importlib.metadata import version
import google.protobuf, grpc
from google.protobuf.internal import api_implementation

path, end, pins = sys.argv[1], sys.argv[2], {"protobuf": sys.argv[3], "grpcio": sys.argv[4]}
print(f"[{end}] Python {sys.version.split()[0]}; protobuf {google.protobuf.__version__} "
      f"({api_implementation.Type()}); grpcio {grpc.__version__}; etcdlock {version('etcdlock')}")

def vt(v):
    t = tuple(int(x) for x in v.split("."))
    return t + (0,) * (3 - len(t))

errors = []
for name, pin in pins.items():
    got = {"protobuf": google.protobuf.__version__, "grpcio": grpc.__version__}[name]
    if got != pin:
        errors.append(f"{name}: pinned {pin} but {got} is installed")
deps = tomllib.load(open(path, "rb"))["project"]["dependencies"]
for name, pin in pins.items():
    spec = next((d for d in deps if re.match(rf"{name}\s*[<>=!~]", d)), None)
    m = spec and re.fullmatch(rf"{name}\s*>=\s*([\d.]+)\s*,\s*<\s*([\d.]+)", spec.replace(" ", ""))
    if not m:
        errors.append(f"pyproject.toml: expected '{name}>=X,<Y' in [project] dependencies, got {spec!r}")
        continue
    low, high = m.groups()
    if end == "lowest" and vt(low) != vt(pin):
        errors.append(f"pyproject.toml says {spec} but the lowest proven {name} is {pin}")
    if not vt(pin) < vt(high):
        errors.append(f"pyproject.toml says {spec}, which excludes the pinned {name} {pin}")
if errors:
    sys.exit("check_dep_range: " + "; ".join(errors))
EOF
echo "[$end] venv $venv ready in $(( $(date +%s) - start ))s"

[ $# -gt 0 ] || exit 0
export VIRTUAL_ENV=$venv PATH=$venv/bin:$PATH
unset PYTHONHOME
exec "$@"
