"""Scale of the default API: many locks held at once by one Client, and a long queue on one name.

    python bench/scale.py                              # 10,000 locks, 1,000 waiters, own etcd
    python bench/scale.py --locks 200 --waiters 50 --hold 1 --contend-seconds 1   # a smoke run

Part 1, many locks: one Client; `asyncio.gather` of --locks tasks, each `async with client.lock(f"scale/{i}",
ttl=10):` on its own name (no throttling by the caller), holding until all are settled. Reports failures
(count and kinds), acquires/s, RSS per held lock (VmRSS delta from before the gather / locks held), that no
held lock's `lost` is set (right after all were acquired and again after --hold seconds), release time, and
after the client is closed: keys and leases left on the server (etcdctl).

Part 2, hand-off: one Client, one lock name. --contenders tasks cycle on it for --contend-seconds (the
steady hand-off rate), then --waiters tasks queue behind a holder and are drained one by one (hand-offs/s
from the holder's release to the last waiter's release), then the contenders again. The drain rate over
the mean of the two contender rates is the ratio (target >= 0.9): a long queue must not slow hand-off.

Starts its own one-member etcd unless --endpoints is given. Writes bench/results/scale.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from etcdlock import Client, Lock
from etcdlock.testing import EtcdCluster

HERE = Path(__file__).resolve().parent
TTL = 10
HELD_PREFIX = "scale/"  # part 1's lock names
QUEUE_NAME = "scale-queue/one"  # part 2's lock name
RATIO_TARGET = 0.9


# ---- the server and the process, seen from outside the client ----


def etcdctl(endpoints: list[str], *args: str) -> str:
    env = {**os.environ, "ETCDCTL_API": "3"}
    cmd = ["etcdctl", f"--endpoints={','.join(endpoints)}", "--command-timeout=60s", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout


def keys_left(endpoints: list[str], prefix: str) -> int:
    return len([k for k in etcdctl(endpoints, "get", prefix, "--prefix", "--keys-only").splitlines() if k])


def leases_left(endpoints: list[str]) -> int:
    # `lease list` prints "found N leases" and then one id a line.
    return len([x for x in etcdctl(endpoints, "lease", "list").splitlines()[1:] if x.strip()])


def etcd_version(endpoints: list[str]) -> str:
    status = json.loads(etcdctl(endpoints, "endpoint", "status", "-w", "json"))
    return str(status[0]["Status"]["version"])


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def kind(exc: BaseException) -> str:
    return type(exc).__name__


# ---- part 1: many locks held at once ----


@dataclasses.dataclass
class HoldTally:
    """What the holders report: who holds, who failed to acquire (by kind), who failed to release."""

    expected: int
    held: list[Lock] = dataclasses.field(default_factory=list)
    failures: Counter[str] = dataclasses.field(default_factory=Counter)
    release_failures: Counter[str] = dataclasses.field(default_factory=Counter)
    settled: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def got(self, lock: Lock) -> None:
        self.held.append(lock)
        self._check()

    def failed(self, exc: BaseException) -> None:
        self.failures[kind(exc)] += 1
        self._check()

    def _check(self) -> None:
        if len(self.held) + self.failures.total() >= self.expected:
            self.settled.set()


async def hold_until(client: Client, name: str, tally: HoldTally, release: asyncio.Event) -> None:
    acquired = False
    try:
        async with client.lock(name, ttl=TTL) as lock:
            acquired = True
            tally.got(lock)
            await release.wait()
    except Exception as exc:
        if acquired:
            tally.release_failures[kind(exc)] += 1
        else:
            tally.failed(exc)


def not_held(locks: list[Lock]) -> Counter[str]:
    """Locks whose `lost` is set (or that are no longer held), by reason."""
    return Counter((lock.lost_reason or "not held") for lock in locks if not lock.held or lock.lost.is_set())


@dataclasses.dataclass
class ManyLocks:
    wanted: int
    held: int = 0
    failures: Counter[str] = dataclasses.field(default_factory=Counter)
    unsettled: int = 0  # neither acquired nor failed within the phase timeout
    acquire_s: float = 0.0
    rss_before_kb: int = 0
    rss_held_kb: int = 0
    lost_at_once: Counter[str] = dataclasses.field(default_factory=Counter)
    lost_after_hold: Counter[str] = dataclasses.field(default_factory=Counter)
    release_s: float = 0.0
    release_failures: Counter[str] = dataclasses.field(default_factory=Counter)
    keys_left: int = 0
    leases_left: int = 0
    leases_before: int = 0


async def many_locks(endpoints: list[str], n: int, hold_s: float, timeout: float) -> ManyLocks:
    out = ManyLocks(wanted=n, leases_before=leases_left(endpoints))
    async with Client(endpoints) as client:
        await client.get(HELD_PREFIX, prefix=True, count_only=True)  # connected: not part of the RSS delta
        tally = HoldTally(expected=n)
        release = asyncio.Event()
        out.rss_before_kb = rss_kb()
        started = time.perf_counter()
        holders = asyncio.gather(*(hold_until(client, f"{HELD_PREFIX}{i}", tally, release) for i in range(n)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tally.settled.wait(), timeout)
        out.acquire_s = time.perf_counter() - started
        out.rss_held_kb = rss_kb()
        out.held, out.failures = len(tally.held), tally.failures
        out.unsettled = n - out.held - tally.failures.total()
        out.lost_at_once = not_held(tally.held)
        await asyncio.sleep(hold_s)
        out.lost_after_hold = not_held(tally.held)
        started = time.perf_counter()
        release.set()
        await settle(holders, timeout)
        out.release_s = time.perf_counter() - started
        out.release_failures = tally.release_failures
    out.keys_left = keys_left(endpoints, HELD_PREFIX)
    out.leases_left = leases_left(endpoints)
    return out


async def settle(tasks: asyncio.Future[list[None]], timeout: float) -> None:
    """Wait for the tasks; past the timeout, cancel what is still waiting (they report themselves)."""
    try:
        await asyncio.wait_for(asyncio.shield(tasks), timeout)
    except TimeoutError:
        tasks.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tasks


# ---- part 2: hand-off through a long queue vs a few contenders ----


async def contend(client: Client, workers: int, seconds: float) -> float:
    """Hand-offs/s of `workers` tasks cycling on one name (after a short unmeasured warm-up)."""
    measuring = stop = False
    cycles = 0

    async def cycle() -> None:
        nonlocal cycles
        while not stop:
            async with client.lock(QUEUE_NAME, ttl=TTL):
                pass
            if measuring:
                cycles += 1

    tasks = asyncio.gather(*(cycle() for _ in range(workers)))
    await asyncio.sleep(0.3)
    measuring, started = True, time.perf_counter()
    await asyncio.sleep(seconds)
    measuring, elapsed = False, time.perf_counter() - started
    counted = cycles
    stop = True
    await tasks
    return counted / elapsed


async def queued(client: Client, count: int, timeout: float) -> bool:
    """Whether `count` keys came to wait on the queue name in time (each waiter has its place in etcd)."""
    # Polled: etcd's key count is the truth about the queue, whatever the client does inside.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await client.get(QUEUE_NAME + "/", prefix=True, count_only=True)).count >= count:
            return True
        await asyncio.sleep(0.05)
    return False


@dataclasses.dataclass
class Drain:
    waiters: int
    failures: Counter[str] = dataclasses.field(default_factory=Counter)
    all_queued: bool = False
    queue_s: float = 0.0  # from starting the waiters to all of them queued
    drain_s: float = 0.0
    handoffs_s: float = 0.0


async def drain(client: Client, waiters: int, timeout: float) -> Drain:
    """A holder, `waiters` queued behind it; hand-offs/s from the holder's release to the last waiter's."""
    out = Drain(waiters)

    async def wait_turn() -> None:
        try:
            async with client.lock(QUEUE_NAME, ttl=TTL):
                pass
        except Exception as exc:
            out.failures[kind(exc)] += 1

    holder = client.lock(QUEUE_NAME, ttl=TTL)
    await holder.acquire()  # no timeout: True once held
    started = time.perf_counter()
    line = asyncio.gather(*(wait_turn() for _ in range(waiters)))
    out.all_queued = await queued(client, waiters + 1, timeout)
    out.queue_s = time.perf_counter() - started
    started = time.perf_counter()
    await holder.release()
    await settle(line, timeout)
    out.drain_s = time.perf_counter() - started
    out.handoffs_s = (waiters - out.failures.total()) / out.drain_s
    return out


@dataclasses.dataclass
class Handoff:
    contend_before: float
    drain: Drain
    contend_after: float
    keys_left: int
    leases_left: int

    @property
    def ratio(self) -> float:
        return self.drain.handoffs_s / ((self.contend_before + self.contend_after) / 2)


async def handoff(
    endpoints: list[str], waiters: int, contenders: int, seconds: float, timeout: float
) -> Handoff:
    async with Client(endpoints) as client:
        before = await contend(client, contenders, seconds)
        drained = await drain(client, waiters, timeout)
        after = await contend(client, contenders, seconds)
    return Handoff(before, drained, after, keys_left(endpoints, QUEUE_NAME + "/"), leases_left(endpoints))


# ---- the report ----


def kinds(c: Counter[str]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in c.most_common()) or "none"


def verdict(ok: bool) -> str:
    return "ok" if ok else "NOT ok"


def many_locks_lines(m: ManyLocks) -> list[str]:
    per_lock = (m.rss_held_kb - m.rss_before_kb) * 1024 / m.held if m.held else 0.0
    return [
        f"## {m.wanted:,} locks on distinct names, one Client, acquired all at once",
        "",
        "| check | value | |",
        "|---|---|---|",
        f"| acquired | {m.held:,} of {m.wanted:,} | {verdict(m.held == m.wanted)} |",
        f"| acquire failures | {m.failures.total()} ({kinds(m.failures)}) | {verdict(not m.failures)} |",
        f"| neither acquired nor failed in time | {m.unsettled} | {verdict(m.unsettled == 0)} |",
        f"| time to settle all / acquires per s | {m.acquire_s:.2f} s / {m.held / m.acquire_s:,.0f} | |",
        # The delta includes each holder's task, as a user's program holding that many locks would have.
        f"| RSS per held lock (with its task) | {per_lock / 1024:.1f} KiB ({m.rss_before_kb / 1024:.0f} -> {m.rss_held_kb / 1024:.0f} MiB) | |",
        f"| `lost` set, right after all acquired | {m.lost_at_once.total()} ({kinds(m.lost_at_once)}) | {verdict(not m.lost_at_once)} |",
        f"| `lost` set, after the hold | {m.lost_after_hold.total()} ({kinds(m.lost_after_hold)}) | {verdict(not m.lost_after_hold)} |",
        f"| release all | {m.release_s:.2f} s; failures: {kinds(m.release_failures)} | {verdict(not m.release_failures)} |",
        f"| keys left under `{HELD_PREFIX}` after close | {m.keys_left} | {verdict(m.keys_left == 0)} |",
        f"| leases left after close | {m.leases_left} ({m.leases_before} before) | {verdict(m.leases_left <= m.leases_before)} |",
        "",
    ]


def handoff_lines(h: Handoff, contenders: int) -> list[str]:
    d = h.drain
    return [
        f"## Hand-off on one name: {d.waiters:,} queued waiters vs {contenders} contenders, one Client",
        "",
        "| check | value | |",
        "|---|---|---|",
        f"| {contenders} contenders, before / after | {h.contend_before:.0f} / {h.contend_after:.0f} hand-offs/s | |",
        f"| {d.waiters:,} waiters: queued in / drained in | {d.queue_s:.2f} s / {d.drain_s:.2f} s | "
        f"{verdict(d.all_queued)} |",
        f"| draining {d.waiters:,} waiters | {d.handoffs_s:.0f} hand-offs/s | |",
        f"| drain / mean of contenders | {h.ratio:.2f}x | >= {RATIO_TARGET:g}x: {verdict(h.ratio >= RATIO_TARGET)} |",
        f"| waiter failures | {d.failures.total()} ({kinds(d.failures)}) | {verdict(not d.failures)} |",
        f"| keys left under `{QUEUE_NAME}/` after close | {h.keys_left} | {verdict(h.keys_left == 0)} |",
        f"| leases left after close | {h.leases_left} | |",
        "",
    ]


def header(version: str, own_etcd: bool) -> list[str]:
    where = "one member on loopback, started fresh for the run" if own_etcd else "given by --endpoints"
    return [
        "# etcdlock at scale — the default API (`client.lock(name, ttl=10)`, no session)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- etcd: {version}, {where}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}",
        f"- command: `{shlex.join(['python', 'bench/scale.py', *sys.argv[1:]])}`",
        "",
    ]


# ---- running it ----


@contextlib.contextmanager
def etcd_endpoints(given: str | None) -> Iterator[list[str]]:
    if given:
        yield given.split(",")
        return
    with EtcdCluster(1) as cluster:
        yield cluster.endpoints


async def measure(args: argparse.Namespace, endpoints: list[str]) -> tuple[ManyLocks, Handoff]:
    m = await many_locks(endpoints, args.locks, args.hold, args.phase_timeout)
    print("\n".join(many_locks_lines(m)), flush=True)
    h = await handoff(endpoints, args.waiters, args.contenders, args.contend_seconds, args.phase_timeout)
    print("\n".join(handoff_lines(h, args.contenders)), flush=True)
    return m, h


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--endpoints", default=None, help="HOST:PORT[,...] of an etcd to use (else one is started)"
    )
    p.add_argument("--locks", type=int, default=10_000, help="part 1: locks held at once")
    p.add_argument("--hold", type=float, default=5.0, help="part 1: seconds to hold them all (then recheck)")
    p.add_argument("--waiters", type=int, default=1_000, help="part 2: waiters queued on one name")
    p.add_argument("--contenders", type=int, default=16, help="part 2: the contenders compared with")
    p.add_argument("--contend-seconds", type=float, default=3.0, help="part 2: each contender run's length")
    p.add_argument("--phase-timeout", type=float, default=600.0, help="give up waiting on a phase after this")
    p.add_argument("--out", type=Path, default=HERE / "results" / "scale.md")
    args = p.parse_args()
    with etcd_endpoints(args.endpoints) as endpoints:
        version = etcd_version(endpoints)
        m, h = asyncio.run(measure(args, endpoints))
    sections = [
        header(version, args.endpoints is None),
        many_locks_lines(m),
        handoff_lines(h, args.contenders),
    ]
    text = "\n".join(line for section in sections for line in section)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
