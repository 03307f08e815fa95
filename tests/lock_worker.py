"""A mutual-exclusion worker for tests/test_lock_exclusion.py (run as a program, one per process).

    python tests/lock_worker.py --endpoints 127.0.0.1:2379 --name /t/x/lock --count 200 --out result.json

Takes the lock NAME `count` times, each with its own session (plain `client.lock(name, ttl=10)`), and in
each critical section:
  1. enters an "occupancy" key: Txn If(version(occ) == 0) Then put(occ, worker_id). If it fails someone
     else is inside: an OVERLAP.
  2. updates a fenced resource R = "last_token,counter": reads R and writes "token,counter+1" back only
     through held.txn([value(R) == old], ...) (so only while the lock is still ours and R unchanged), after
     checking token > last_token: a resource that rejects stale tokens. token <= last_token is a STALE.
     A failed write (the lock was lost, or R changed under us) is a CONFLICT.
  3. leaves the occupancy key: Txn If(value(occ) == worker_id) Then delete(occ).
Writes a JSON result: overlaps, stale, conflicts and one record per acquisition.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import TypedDict

from etcdlock import Client, Compare, Op


class Record(TypedDict):
    counter: int  # the counter value this acquisition wrote (0 if it wrote nothing)
    token: int
    worker: str
    lease: int
    key: str


class Result(TypedDict):
    worker: str
    pid: int
    overlaps: int
    stale: int
    conflicts: int
    started: float  # wall clock (time.time()) of the first acquire and after the last release
    finished: float
    records: list[Record]


def parse_resource(value: bytes) -> tuple[int, int]:
    last_token, counter = value.decode().split(",")
    return int(last_token), int(counter)


async def run(
    endpoints: list[str],
    name: str,
    count: int,
    worker: str,
    occ: str,
    resource: str,
    ttl: int,
    timeout: float,
) -> Result:
    overlaps = stale = conflicts = 0
    records: list[Record] = []
    async with Client(endpoints) as client:
        started = time.time()
        for _ in range(count):
            async with client.lock(name, ttl=ttl, timeout=timeout) as held:
                token = held.token
                # 1. Enter: nobody else may be inside.
                entered = await client.txn([Compare.version(occ, "==", 0)], [Op.put(occ, worker)])
                if not entered.succeeded:
                    overlaps += 1
                # 2. The fenced resource.
                current = await client.get(resource)
                if not current.kvs:
                    raise RuntimeError(f"resource key {resource} is missing")
                old = current.kvs[0].value
                last_token, counter = parse_resource(old)
                written = 0
                if token <= last_token:
                    stale += 1
                else:
                    r = await held.txn(
                        [Compare.value(resource, "==", old)], [Op.put(resource, f"{token},{counter + 1}")]
                    )
                    if r.succeeded:
                        written = counter + 1
                    else:
                        conflicts += 1
                records.append(
                    {
                        "counter": written,
                        "token": token,
                        "worker": worker,
                        "lease": held.lease,
                        "key": held.key,
                    }
                )
                # 3. Leave (only our own mark).
                if entered.succeeded:
                    await client.txn([Compare.value(occ, "==", worker)], [Op.delete(occ)])
        finished = time.time()
    return {
        "worker": worker,
        "pid": os.getpid(),
        "overlaps": overlaps,
        "stale": stale,
        "conflicts": conflicts,
        "started": started,
        "finished": finished,
        "records": records,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--endpoints", required=True, help="comma-separated host:port list")
    p.add_argument("--name", required=True, help="the lock name")
    p.add_argument("--count", type=int, default=200, help="acquisitions to make")
    p.add_argument("--out", required=True, help="where to write the JSON result")
    p.add_argument("--id", default=None, help="worker id (default: w<pid>)")
    p.add_argument("--occupancy-key", default=None, help="default: NAME + ':occ'")
    p.add_argument("--resource-key", default=None, help="default: NAME + ':res' (must hold 'token,counter')")
    p.add_argument("--ttl", type=int, default=10, help="per-lock session TTL")
    p.add_argument("--timeout", type=float, default=60.0, help="per-acquisition timeout")
    args = p.parse_args(argv)
    name: str = args.name
    result = asyncio.run(
        run(
            endpoints=[e for e in str(args.endpoints).split(",") if e],
            name=name,
            count=args.count,
            worker=args.id or f"w{os.getpid()}",
            occ=args.occupancy_key or name + ":occ",
            resource=args.resource_key or name + ":res",
            ttl=args.ttl,
            timeout=args.timeout,
        )
    )
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
