#!/usr/bin/env bash
# Fails if src/etcdlock/_wire/*_pb2.py(i) are not exactly what scripts/gen_proto.sh (pinned grpcio-tools)
# generates from proto/ -- i.e. someone edited a .proto or a stub by hand, or regenerated with another protoc.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$root/scripts/gen_proto.sh" "$tmp" >/dev/null
committed=$root/src/etcdlock/_wire
fresh=$tmp/etcdlock/_wire
# Compare only generated files (the package also holds hand-written modules such as __init__.py).
mkdir "$tmp/a" "$tmp/b"
cp "$committed"/*_pb2.py "$committed"/*_pb2.pyi "$tmp/a/" 2>/dev/null || true
cp "$fresh"/*_pb2.py "$fresh"/*_pb2.pyi "$tmp/b/"
if ! diff -r "$tmp/a" "$tmp/b" >"$tmp/diff"; then
  sed -e "s#$tmp/a#src/etcdlock/_wire#g" -e "s#$tmp/b#regenerated#g" "$tmp/diff" | head -60
  echo "check_stubs_fresh: src/etcdlock/_wire/*_pb2.py(i) differ from what scripts/gen_proto.sh generates" \
       "from proto/ (grpcio-tools $(grep -o 'GRPCIO_TOOLS_PIN:-[^}]*' "$root/scripts/gen_proto.sh" | cut -d- -f2))." \
       "Run scripts/gen_proto.sh and commit the result." >&2
  exit 1
fi
echo "check_stubs_fresh: committed stubs match proto/ (regenerated with scripts/gen_proto.sh)"
