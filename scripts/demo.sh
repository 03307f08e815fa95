#!/usr/bin/env bash
# The main job: install what is missing, then, each against a throwaway local etcd that is stopped after:
#   1. a short tour of the client (KV, txn, watch, lease keepalive, resources back to zero),
#   2. a one-minute accelerated soak of the workload that leaked in production (10 lock names, lock/hold/
#      unlock back to back), with its verdict, a text chart here, and soak-out/chart.png + report.json.
# Extra arguments go to the soak (e.g. --duration 600 --rate 1 --hold 1 for the seed-rate workload).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/bootstrap.sh"
cd "$root"
"$root/.venv/bin/etcdlock" demo
echo
exec "$root/.venv/bin/etcdlock" soak --keys 10 --hold 0 --no-tick --duration 60 --no-live --sample-every 2 \
  --out "$root/soak-out" "$@"
