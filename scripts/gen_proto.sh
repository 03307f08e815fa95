#!/usr/bin/env bash
# Regenerates src/etcdlock/_wire/*_pb2.py(i) from proto/ with a pinned grpcio-tools, in a throwaway venv,
# so the output is byte-for-byte reproducible (CI regenerates and diffs against the committed files).
# The pin decides the oldest protobuf runtime the stubs accept; see pyproject.toml for the proven range.
set -euo pipefail
# 1.65.5 is the newest grpcio-tools whose gencode has no _runtime_version check (1.66+ embeds one and then
# rejects every runtime older than its own protoc). Its output imports on protobuf 3.20.0 .. 7.36.2 without
# a warning; 1.49-1.65 produce equally wide gencode, 1.65.5 is the newest of them.
GRPCIO_TOOLS_PIN=${GRPCIO_TOOLS_PIN:-1.65.5}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/src}
venv=${GEN_PROTO_VENV:-/tmp/etcdlock-gen-proto-venv-$GRPCIO_TOOLS_PIN}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "grpcio-tools==$GRPCIO_TOOLS_PIN"
fi
cd "$root/proto"
"$venv/bin/python" -m grpc_tools.protoc -I. --python_out="$out" --pyi_out="$out" \
  etcdlock/_wire/kv.proto etcdlock/_wire/rpc.proto
echo "generated into $out/etcdlock/_wire with grpcio-tools==$GRPCIO_TOOLS_PIN"
