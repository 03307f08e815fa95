"""Keepalive at scale: thousands of explicit sessions (one lease each) on one Client, held past their TTL.

    python bench/sessions_scale.py                          # 5,000 sessions, TTL 10 s, held 25 s, own etcd
    python bench/sessions_scale.py --sessions 200 --hold 6  # a smoke run

Every session is opened at once (`asyncio.gather`, no throttling by the caller) and takes one lock on a name
of its own, so the client renews N leases on its one keepalive stream while N lock Txns and N watch creates
compete with the renewals. The sessions are then held for --hold seconds (several TTLs): a lease declared
lost while etcd is healthy and answering is a failure. Reports failures by kind, sessions whose `lost`
fired, renewals sent, and after the client is closed: keys and leases left on the server (etcdctl).
Writes bench/results/sessions-scale.md.

Measured limit (2 cores, etcd 3.4): 5,000 sessions started at once take ~7 s to open, longer than the
trusted life of a 5 s lease (TTL - lease_margin = 4 s) while etcd applies thousands of grants and Txns and
answers renewals behind them: with --ttl 5 most are lost while acquiring (3,000 pass). With TTL 10, the
library's default, all 5,000 hold.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
import time
from collections import Counter
from pathlib import Path

from scale import etcd_endpoints, etcd_version, header, keys_left, kind, leases_left, verdict

from etcdlock import Client, Session

HERE = Path(__file__).resolve().parent
PREFIX = "sessions-scale/"


@dataclasses.dataclass
class Outcome:
    wanted: int
    ttl: int
    hold_s: float
    leases_before: int = 0
    opened: int = 0
    failures: Counter[str] = dataclasses.field(default_factory=Counter)
    open_s: float = 0.0
    lost: int = 0
    lost_reasons: Counter[str] = dataclasses.field(default_factory=Counter)
    renewals: int = 0
    keys_left: int = -1
    leases_left: int = -1
    settled: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def count(self) -> None:
        if self.opened + self.failures.total() >= self.wanted:
            self.settled.set()


async def hold(
    client: Client, i: int, ttl: int, out: Outcome, ready: list[Session], release: asyncio.Event
) -> None:
    try:
        async with client.session(ttl) as session, client.lock(f"{PREFIX}{i}", session=session):
            ready.append(session)
            out.opened += 1
            out.count()
            await release.wait()
    except Exception as exc:
        out.failures[kind(exc)] += 1
        out.count()


async def measure(endpoints: list[str], n: int, ttl: int, hold_s: float, timeout: float) -> Outcome:
    out = Outcome(wanted=n, ttl=ttl, hold_s=hold_s, leases_before=leases_left(endpoints))
    async with Client(endpoints) as client:
        release = asyncio.Event()
        ready: list[Session] = []
        started = time.perf_counter()
        holders = asyncio.gather(*(hold(client, i, ttl, out, ready, release) for i in range(n)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(out.settled.wait(), timeout)
        out.open_s = time.perf_counter() - started
        await asyncio.sleep(hold_s)  # hold every lease through several TTLs
        for session in ready:
            if session.lost.is_set():
                out.lost += 1
                out.lost_reasons[str(session.lost_reason)[:60]] += 1
        out.renewals = client._keepalive_renewals_sent
        release.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(holders, timeout)
    out.keys_left = keys_left(endpoints, PREFIX)
    out.leases_left = leases_left(endpoints)
    return out


def lines(o: Outcome) -> list[str]:
    reasons = ", ".join(f"{k} x{v}" for k, v in o.lost_reasons.most_common(3)) or "none"
    failures = ", ".join(f"{k} x{v}" for k, v in o.failures.most_common()) or "none"
    return [
        f"## {o.wanted:,} explicit sessions (TTL {o.ttl} s), one lock each, one Client, held {o.hold_s:g} s",
        "",
        "| check | value | |",
        "|---|---|---|",
        f"| sessions opened and locked | {o.opened:,} of {o.wanted:,} in {o.open_s:.2f} s | {verdict(o.opened == o.wanted)} |",
        f"| failures | {failures} | {verdict(not o.failures)} |",
        f"| leases declared lost while held | {o.lost} ({reasons}) | {verdict(o.lost == 0)} |",
        f"| keepalive renewals sent | {o.renewals:,} | |",
        f"| keys left under `{PREFIX}` after close | {o.keys_left} | {verdict(o.keys_left == 0)} |",
        f"| leases left after close | {o.leases_left} ({o.leases_before} before) | {verdict(o.leases_left == o.leases_before)} |",
        "",
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--endpoints", default=None, help="HOST:PORT[,...] of an etcd to use (else one is started)"
    )
    p.add_argument("--sessions", type=int, default=5_000)
    p.add_argument("--ttl", type=int, default=10)
    p.add_argument("--hold", type=float, default=25.0, help="seconds to hold them all (several TTLs)")
    p.add_argument("--phase-timeout", type=float, default=600.0)
    p.add_argument("--out", type=Path, default=HERE / "results" / "sessions-scale.md")
    args = p.parse_args()
    with etcd_endpoints(args.endpoints) as endpoints:
        version = etcd_version(endpoints)
        o = asyncio.run(measure(endpoints, args.sessions, args.ttl, args.hold, args.phase_timeout))
    head = header(version, args.endpoints is None)
    head[0] = "# etcdlock keepalive at scale — explicit sessions, one lease each"
    head[-2] = f"- command: `python bench/sessions_scale.py {' '.join(sys.argv[1:])}`".rstrip()
    text = "\n".join([*head, *lines(o)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0 if o.opened == o.wanted and not o.failures and o.lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
