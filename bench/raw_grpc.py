"""The transport floor: exactly the two RPCs of an uncontended lock cycle (the anchor's `rawtxn` mode: one
Txn put-if-absent + range, one Delete), on raw grpcio with our generated messages and no etcdlock code.

    python bench/raw_grpc.py --endpoint 127.0.0.1:2379 -d 5            # grpc.aio, one worker
    python bench/raw_grpc.py --endpoint 127.0.0.1:2379 -d 5 -c 16      # 16 workers, each its own key
    python bench/raw_grpc.py --endpoint 127.0.0.1:2379 -d 5 --api sync # blocking grpcio, one worker

Compared with Go's `-mode rawtxn` in the same run, it shows how much of the gap to Go is the Python gRPC
stack itself rather than etcdlock. `--api sync` is the fastest grpcio gets in Python, holding the thread
for each call (an asyncio library cannot do that). Prints a RESULT line like the other tools.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import grpc
import grpc.aio

from etcdlock._wire import methods
from etcdlock._wire import rpc_pb2 as pb


def requests(worker: int) -> tuple[pb.TxnRequest, pb.DeleteRangeRequest]:
    prefix = b"/bench/rawpy%d/" % worker
    key = prefix + b"k"
    acquire = pb.TxnRequest(
        compare=[pb.Compare(key=key, target=pb.Compare.CREATE, create_revision=0)],
        success=[
            pb.RequestOp(request_put=pb.PutRequest(key=key)),
            pb.RequestOp(
                request_range=pb.RangeRequest(
                    key=prefix,
                    range_end=prefix[:-1] + b"0",
                    limit=1,
                    sort_order=pb.RangeRequest.ASCEND,
                    sort_target=pb.RangeRequest.CREATE,
                )
            ),
        ],
        failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
    )
    return acquire, pb.DeleteRangeRequest(key=key)


def callables(channel: Any) -> tuple[Any, Any]:
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
    return txn, delete


def result(label: str, c: int, cycles: list[float], elapsed: float) -> str:
    cycles.sort()
    p50 = cycles[len(cycles) // 2] * 1000 if cycles else 0.0
    return (
        f"RESULT label={label} mode=py-rawtxn c={c} cycles={len(cycles)} secs={elapsed:.2f} "
        f"ops_s={len(cycles) / elapsed:.1f} p50_ms={p50:.3f}"
    )


async def run_aio(endpoint: str, duration: float, workers: int) -> str:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        txn, delete = callables(channel)
        cycles: list[float] = []
        measuring = stop = False

        async def worker(i: int) -> None:
            acquire, release = requests(i)
            while not stop:
                t = time.perf_counter()
                await txn(acquire, timeout=5)
                await delete(release, timeout=5)
                if measuring:
                    cycles.append(time.perf_counter() - t)

        tasks = [asyncio.create_task(worker(i)) for i in range(workers)]
        await asyncio.sleep(0.3)  # warm-up, not counted
        measuring = True
        t0 = time.perf_counter()
        await asyncio.sleep(duration)
        measuring = False
        elapsed = time.perf_counter() - t0
        stop = True
        await asyncio.gather(*tasks)
    return result("py-raw-aio", workers, cycles, elapsed)


def run_sync(endpoint: str, duration: float) -> str:
    with grpc.insecure_channel(endpoint) as channel:
        txn, delete = callables(channel)
        acquire, release = requests(0)
        for _ in range(100):
            txn(acquire, timeout=5)
            delete(release, timeout=5)
        cycles: list[float] = []
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < duration:
            t = time.perf_counter()
            txn(acquire, timeout=5)
            delete(release, timeout=5)
            cycles.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - t0
    return result("py-raw-sync", 1, cycles, elapsed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--endpoint", default="127.0.0.1:2379")
    p.add_argument("-d", type=float, default=5.0)
    p.add_argument("-c", type=int, default=1, help="concurrent workers (aio only), each its own key")
    p.add_argument("--api", choices=["aio", "sync"], default="aio")
    args = p.parse_args()
    if args.api == "sync":
        if args.c != 1:
            p.error("--api sync runs one worker")
        print(run_sync(args.endpoint, args.d), flush=True)
    else:
        print(asyncio.run(run_aio(args.endpoint, args.d, args.c)), flush=True)


if __name__ == "__main__":
    main()
