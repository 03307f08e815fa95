"""Mutual exclusion, the acceptance test: 8 processes x 200 acquisitions of one lock (tests/lock_worker.py).

Every critical section marks an occupancy key (a second one inside is an overlap) and advances a fenced
resource that rejects stale tokens. Afterwards: no overlap, no stale token, the counter is exactly
8 x 200, the grants went in token (create_revision) order, and nothing is left in etcd.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from etcdlock import Client
from tests.waiting import wait_until

WORKER = Path(__file__).with_name("lock_worker.py")
PROCESSES = 8
ACQUISITIONS = 200
RUN_TIMEOUT = 300.0


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def spawn_worker(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        return subprocess.Popen(
            [sys.executable, str(WORKER), *argv], stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT
        )


def kill_and_reap(procs: list[subprocess.Popen[bytes]]) -> None:
    """Kill (by PID) every worker still running, and reap them all."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait()


def read_result(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text())
    return result


async def test_mutual_exclusion_8_processes(
    client: Client, ns: str, etcd_endpoints: list[str], tmp_path: Path
) -> None:
    name = ns + "exclusion"
    occ, resource = ns + "occupancy", ns + "resource"
    await client.put(resource, "0,0")
    baseline_leases = set(await client.leases())

    procs: list[subprocess.Popen[bytes]] = []
    outs = [tmp_path / f"worker{i}.json" for i in range(PROCESSES)]
    logs = [tmp_path / f"worker{i}.log" for i in range(PROCESSES)]
    started = time.monotonic()
    try:
        for i in range(PROCESSES):
            argv = [
                f"--endpoints={','.join(etcd_endpoints)}",
                f"--name={name}",
                f"--count={ACQUISITIONS}",
                f"--out={outs[i]}",
                f"--id=w{i}",
                f"--occupancy-key={occ}",
                f"--resource-key={resource}",
            ]
            procs.append(spawn_worker(argv, logs[i]))
        await wait_until(
            lambda: all(p.poll() is not None for p in procs),
            timeout=RUN_TIMEOUT,
            what=f"{PROCESSES} lock workers to finish",
        )
    finally:
        kill_and_reap(procs)
    wall = time.monotonic() - started

    for i, p in enumerate(procs):
        assert p.returncode == 0, f"worker {i} (pid {p.pid}) exited {p.returncode}:\n{tail(logs[i])}"
    results = [read_result(out) for out in outs]
    records: list[dict[str, Any]] = [r for res in results for r in res["records"]]
    leases_by_worker = {res["worker"]: {r["lease"] for r in res["records"]} for res in results}
    total = PROCESSES * ACQUISITIONS
    window = max(r["finished"] for r in results) - min(r["started"] for r in results)
    rate = f"{total / window:.0f} acquisitions/s ({total} in {window:.2f}s; {wall:.2f}s with start-up)"
    print(f"\nlock exclusion: {rate}")

    overlaps = {r["worker"]: r["overlaps"] for r in results if r["overlaps"]}
    stale = {r["worker"]: r["stale"] for r in results if r["stale"]}
    conflicts = {r["worker"]: r["conflicts"] for r in results if r["conflicts"]}
    assert not overlaps, f"two holders inside the critical section at once: {overlaps}; {rate}"
    assert not stale, f"stale fencing tokens reached the resource: {stale}"
    assert not conflicts, f"fenced writes failed (lock lost, or the resource changed): {conflicts}"
    assert len(records) == total

    # The counter advanced exactly once per acquisition, to exactly PROCESSES * ACQUISITIONS.
    r = await client.get(resource)
    last_token, counter = (int(x) for x in r.kvs[0].value.decode().split(","))
    assert counter == total, f"resource counter {counter}, expected {total}"
    by_counter = sorted(records, key=lambda rec: rec["counter"])
    assert [rec["counter"] for rec in by_counter] == list(range(1, total + 1))
    assert by_counter[-1]["token"] == last_token

    # Grants in token order: sorted by the counter they wrote, tokens strictly increase (FIFO by
    # create_revision), and every acquisition had a token (and a key, and a lease) of its own.
    tokens = [rec["token"] for rec in by_counter]
    regressions = [(a, b) for a, b in itertools.pairwise(by_counter) if b["token"] <= a["token"]]
    assert not regressions, f"grants out of token order, e.g. {regressions[:3]}"
    assert len(set(tokens)) == total
    # Every plain client.lock() of a process hangs its key on that client's default session: one lease per
    # process, one key per process (created anew, with a new token, for each grant).
    worker_leases = {rec["lease"] for rec in records}
    assert all(len(leases) == 1 for leases in leases_by_worker.values()), leases_by_worker
    assert len(worker_leases) == PROCESSES, "one default session per client"
    assert len({rec["key"] for rec in records}) == PROCESSES
    assert all(rec["key"] == f"{name}/{rec['lease']:x}" for rec in records)

    # Nothing left: no lock keys, no occupancy mark, no lease of a worker.
    async def no_lock_keys() -> bool:
        return (await client.get(name + "/", prefix=True, count_only=True)).count == 0

    await wait_until(no_lock_keys, timeout=5, what=f"no keys left under {name}/")
    assert (await client.get(occ)).count == 0, "the occupancy key was left behind"

    leftover: set[int] = set()

    async def leases_back_to_baseline() -> bool:
        nonlocal leftover
        leftover = set(await client.leases()) - baseline_leases
        return not leftover

    await wait_until(leases_back_to_baseline, timeout=5, what="the workers' leases to be gone")
    assert not worker_leases & set(await client.leases())
