#!/usr/bin/env bash
# Installs what etcdlock needs on a fresh Debian machine, idempotently:
#   - etcd + etcdctl (Debian's etcd-server / etcd-client) when `etcd` is missing
#   - a virtualenv at .venv with etcdlock and its dev dependencies from pyproject.toml
# Sourced by demo.sh and test.sh; prints what it does, stays quiet when nothing is missing.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
  echo "==> installing etcd-server and etcd-client (Debian packages)"
  as_root apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q etcd-server etcd-client >/dev/null
  # Debian's package may start a system etcd on 2379 where systemd runs; we never use it.
fi

venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating $venv"
  python3 -m venv "$venv"
fi
stamp="$venv/.etcdlock-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "==> installing etcdlock and its dependencies into $venv"
  "$venv/bin/pip" install -q --upgrade pip >/dev/null
  "$venv/bin/pip" install -q -e "$root[dev]"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
