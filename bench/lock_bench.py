"""Lock-cycle benchmark in the same shape as the Go reference (../shared/anchors/go-mutex-bench).

All workers share one Client (one channel, one keepalive stream, one watch stream): that sharing is the
point of the design. `--api` picks how a worker gets its lease:

- `default` (the default): `async with client.lock(name, ttl=10):` with no session — the API a user
  writes first; the client supplies the lease (its default session).
- `session`: each worker opens its own long-lived `client.session()` and passes it to every lock, like
  the Go harness's one session per worker.

    python bench/lock_bench.py --endpoint 127.0.0.1:2379 -c 16 -d 10 --api default --label py-c16-onelock

Prints one RESULT line with the same fields as the Go tool (plus api=, errors=, leftover_keys=).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from etcdlock import Client, Lock
from etcdlock._recipes.session import Session

TTL = 10
# One cycle's lock: `async with lock_for(name):` holds it for the (empty) body.
LockFactory = Callable[[str], Lock]


def pct(xs: list[float], p: float) -> float:
    return xs[int((len(xs) - 1) * p)] * 1000 if xs else 0.0


def on_session(client: Client, session: Session) -> LockFactory:
    return lambda name: client.lock(name, session=session)


@contextlib.asynccontextmanager
async def lock_factories(client: Client, api: str, workers: int) -> AsyncIterator[list[LockFactory]]:
    """One lock factory per worker, for the chosen API; explicit sessions are closed on the way out."""
    if api == "default":
        yield [lambda name: client.lock(name, ttl=TTL) for _ in range(workers)]
        return
    sessions = [await Session(client, TTL).start() for _ in range(workers)]
    try:
        yield [on_session(client, s) for s in sessions]
    finally:
        for s in sessions:
            await s.close()


async def run(args: argparse.Namespace) -> str:
    async with Client([args.endpoint], timeout=10) as client:
        lat: list[float] = []
        acq: list[float] = []
        rel: list[float] = []
        errors = 0
        measuring = False
        stop = False

        async def worker(i: int, lock_for: LockFactory) -> None:
            nonlocal errors
            name = f"/bench/lock{i}" if args.distinct else "/bench/lock"
            cycles = 0
            while not stop:
                t0 = time.perf_counter()
                try:
                    async with lock_for(name):
                        t1 = time.perf_counter()  # acquired: the body starts
                except Exception:
                    errors += 1
                    continue
                t2 = time.perf_counter()
                cycles += 1
                if measuring and cycles > args.warm:
                    lat.append(t2 - t0)
                    acq.append(t1 - t0)
                    rel.append(t2 - t1)

        async with lock_factories(client, args.api, args.c) as factories:
            tasks = [asyncio.create_task(worker(i, f)) for i, f in enumerate(factories)]
            await asyncio.sleep(0.3)  # warm-up, not counted
            measuring = True
            t0 = time.perf_counter()
            await asyncio.sleep(args.d)
            measuring = False
            elapsed = time.perf_counter() - t0
            stop = True
            await asyncio.gather(*tasks)
        leftover = (await client.get("/bench/", prefix=True, count_only=True)).count
    for xs in (lat, acq, rel):
        xs.sort()
    return (
        f"RESULT label={args.label} mode=py-{args.mode} api={args.api} c={args.c} conns=1 "
        f"distinct={str(args.distinct).lower()} "
        f"cycles={len(lat)} secs={elapsed:.2f} ops_s={len(lat) / elapsed:.1f} p50_ms={pct(lat, 0.5):.3f} "
        f"p90_ms={pct(lat, 0.9):.3f} p99_ms={pct(lat, 0.99):.3f} acq_p50_ms={pct(acq, 0.5):.3f} "
        f"acq_p99_ms={pct(acq, 0.99):.3f} rel_p50_ms={pct(rel, 0.5):.3f} rel_p99_ms={pct(rel, 0.99):.3f} "
        f"errors={errors} leftover_keys={leftover}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", default="127.0.0.1:2379")
    p.add_argument("--mode", default="mutex", choices=["mutex"])
    p.add_argument(
        "--api",
        default="default",
        choices=["default", "session"],
        help="default: client.lock(name, ttl=10) with no session; session: one explicit session per worker",
    )
    p.add_argument("-c", type=int, default=1, help="workers")
    p.add_argument("--distinct", action="store_true", help="each worker its own lock name")
    p.add_argument("-d", type=float, default=10.0, help="seconds measured")
    p.add_argument("--warm", type=int, default=5, help="cycles per worker not measured")
    p.add_argument("--label", default="")
    print(asyncio.run(run(p.parse_args())), flush=True)


if __name__ == "__main__":
    main()
