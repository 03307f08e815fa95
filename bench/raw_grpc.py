"""The transport floor: exactly the two RPCs of an uncontended lock cycle (the anchor's `rawtxn` mode: one
Txn put-if-absent + range, one Delete), on raw grpc.aio with our generated messages and no etcdlock code.

    python bench/raw_grpc.py --endpoint 127.0.0.1:2379 -d 5

Compared with Go's `-mode rawtxn` in the same run, it shows how much of the sequential gap to Go is the
Python gRPC stack itself rather than etcdlock. Prints a RESULT line like the other tools.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import grpc.aio

from etcdlock._wire import methods
from etcdlock._wire import rpc_pb2 as pb


async def run(endpoint: str, duration: float) -> str:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        txn = channel.unary_unary(
            methods.TXN.path,
            request_serializer=methods.TXN.serializer(),
            response_deserializer=methods.TXN.deserializer(),
        )
        delete = channel.unary_unary(
            methods.DELETE_RANGE.path,
            request_serializer=methods.DELETE_RANGE.serializer(),
            response_deserializer=methods.DELETE_RANGE.deserializer(),
        )
        key = b"/bench/rawpy/k"
        acquire = pb.TxnRequest(
            compare=[pb.Compare(key=key, target=pb.Compare.CREATE, create_revision=0)],
            success=[
                pb.RequestOp(request_put=pb.PutRequest(key=key)),
                pb.RequestOp(
                    request_range=pb.RangeRequest(
                        key=b"/bench/rawpy/",
                        range_end=b"/bench/rawpy0",
                        limit=1,
                        sort_order=pb.RangeRequest.ASCEND,
                        sort_target=pb.RangeRequest.CREATE,
                    )
                ),
            ],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
        )
        release = pb.DeleteRangeRequest(key=key)
        for _ in range(100):
            await txn(acquire, timeout=5)
            await delete(release, timeout=5)
        cycles: list[float] = []
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < duration:
            t = time.perf_counter()
            await txn(acquire, timeout=5)
            await delete(release, timeout=5)
            cycles.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - t0
    cycles.sort()
    p50 = cycles[len(cycles) // 2] * 1000
    return f"RESULT label=py-raw mode=py-rawtxn c=1 cycles={len(cycles)} secs={elapsed:.2f} ops_s={len(cycles) / elapsed:.1f} p50_ms={p50:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--endpoint", default="127.0.0.1:2379")
    p.add_argument("-d", type=float, default=5.0)
    args = p.parse_args()
    print(asyncio.run(run(args.endpoint, args.d)), flush=True)


if __name__ == "__main__":
    main()
