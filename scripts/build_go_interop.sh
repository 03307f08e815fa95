#!/usr/bin/env bash
# Builds interop/go/main.go (etcdlock-go-interop: etcd's Go Election and contrib/recipes RWMutex) offline, in
# GOPATH mode, from Debian's packaged etcd 3.4 sources — the same way as the Go mutex benchmark anchor
# (shared/anchors/go-mutex-bench/build.sh). Nothing is fetched from the internet: no Go modules, no vendoring.
# Usage: scripts/build_go_interop.sh [OUTPUT_BINARY]   (default: .cache/go-interop/etcdlock-go-interop)
# Skips the build when OUTPUT_BINARY is newer than main.go (and this script).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src="$root/interop/go/main.go"
out=${1:-$root/.cache/go-interop/etcdlock-go-interop}
case $out in /*) ;; *) out="$PWD/$out" ;; esac # the build runs in another directory
etcd_src=/usr/share/gocode/src/go.etcd.io/etcd
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ -x "$out" ] && [ "$out" -nt "$src" ] && [ "$out" -nt "${BASH_SOURCE[0]}" ]; then
  echo "up to date: $out"
  exit 0
fi

if ! command -v go >/dev/null || [ ! -d "$etcd_src/clientv3" ] || [ ! -d "$etcd_src/contrib/recipes" ]; then
  echo "==> installing golang-go and golang-etcd-server-dev (Debian packages)"
  # Try without refreshing the package lists first (works offline with a local mirror); update only if needed.
  if ! DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q golang-go golang-etcd-server-dev >/dev/null; then
    as_root apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q golang-go golang-etcd-server-dev >/dev/null
  fi
fi
for d in clientv3/concurrency contrib/recipes; do
  if [ ! -d "$etcd_src/$d" ]; then
    echo "error: $etcd_src/$d is missing: golang-etcd-server-dev does not ship it; not fetching it elsewhere" >&2
    exit 1
  fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src/etcdlock-go-interop" "$(dirname "$out")"
cp "$src" "$work/src/etcdlock-go-interop/"
cd "$work/src/etcdlock-go-interop"
# The compile cache persists under .cache/ (git-ignored), so a rebuild after editing main.go takes seconds
# instead of recompiling etcd's client and gRPC; GOCACHE from the environment still wins.
GO111MODULE=off GOPATH="$work:/usr/share/gocode" GOCACHE="${GOCACHE:-$root/.cache/go-build}" GOFLAGS= \
  go build -o "$out.tmp.$$" .
# Renamed into place so a concurrent reader never runs a half-written binary.
mv -f "$out.tmp.$$" "$out"
echo "built $out"
