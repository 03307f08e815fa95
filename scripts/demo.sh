#!/usr/bin/env bash
# The main job: install what is missing, start a throwaway local etcd, run the demo, stop etcd.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/bootstrap.sh"
exec "$root/.venv/bin/etcdlock" demo "$@"
