"""`etcdlock status [PREFIX]`: every lock, election, semaphore and read/write lock under PREFIX, by kind,
with its holders and its queue of waiters."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

from etcdlock._cli.common import (
    Connection,
    add_connection_options,
    connection_from,
    report_error,
)
from etcdlock._core.errors import ConfigError, EtcdError
from etcdlock._recipes.status import KINDS, Kind, LockHolder, LockStatus, lock_names, recipe_status

EXIT_USAGE = 2  # as argparse: the command line asks for something this command will not do

_DESCRIPTION = """Show each lock, election, semaphore and read/write lock under PREFIX, grouped by kind:
who holds it and who waits, in queue order, with the TTL left on each key's lease. Keys of any client
count: etcdlock's, Go's (concurrency.Mutex and Election, contrib/recipes RWMutex), etcdctl lock and elect.

The kind is told from the keys alone: NAME/read/... and NAME/write/... make a read/write lock NAME (its
readers before the first writer hold, or that writer); NAME/<hex> keys whose values are all one number N
a semaphore of limit N (the first N hold); with other values an election (the first is the leader, its
value the proposal; the others are candidates); without values a lock (the first holds).

Without PREFIX this would read every key in etcd, so it refuses unless --limit N is given: then it reads
at most N keys (of any kind, in key order) and says so when it stopped before the end. With PREFIX it
reads every key under PREFIX, or at most --limit N of them."""

_TITLES: dict[Kind, str] = {
    "lock": "locks",
    "election": "elections",
    "semaphore": "semaphores",
    "rwlock": "read/write locks",
}


@dataclass
class Entry:
    key: str
    lease: str
    ttl_left: int  # seconds, -1 if the lease is gone
    create_revision: int
    role: str  # holder | waiter
    kind: str  # lock | election | semaphore | rwlock
    value: str  # the key's value as text: an election candidate's proposal, a semaphore's limit
    mode: str | None  # a read/write lock's key: read | write


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="show each lock's, election's, semaphore's and read/write lock's holders and waiters",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prefix", nargs="?", default="", help="only names that start with this")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="read at most N keys (required without PREFIX: no whole-keyspace scan by default)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output: {NAME: [entry, ...]}")
    add_connection_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.prefix and args.limit is None:
        print(
            "etcdlock: no PREFIX given: refusing to scan the whole keyspace; give a PREFIX, or --limit N to "
            "read at most N keys",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        conn = connection_from(args)
    except ConfigError as err:
        return report_error(err, None)
    try:
        statuses, complete = asyncio.run(collect(conn, args.prefix, args.limit))
    except (EtcdError, ConfigError) as err:
        return report_error(err, conn)
    if not complete:
        print(
            f"etcdlock: stopped after {args.limit} keys under {args.prefix!r}; names beyond them are not "
            "shown (raise --limit or narrow PREFIX)",
            file=sys.stderr,
        )
    held = [s for s in statuses if s.holder is not None]
    if args.json:
        shown: dict[str, list[dict[str, Any]]] = {}
        for s in held:  # (a name with two kinds of keys lists both, each entry with its kind)
            shown.setdefault(s.name, []).extend(asdict(e) for e in entries(s))
        print(json.dumps(shown, indent=2))
        return 0
    if not held:
        print(f"nothing held under {args.prefix!r}")
    for kind in KINDS:
        of_kind = [s for s in held if s.kind == kind]
        if of_kind:
            print(f"{_TITLES[kind]}:")
        for s in of_kind:
            print(f"  {s.name}  {_summary(s)}")
            for e in entries(s):
                print(f"    {_line(e)}")
    return 0


def _summary(s: LockStatus) -> str:
    waiting = f"{len(s.waiters)} waiting"
    if s.kind == "election":
        assert s.holder is not None
        return f"leader {_text(s.holder.value)!r}  ({waiting})"
    if s.kind == "semaphore":
        return f"limit {s.limit}  ({len(s.holders)} holding, {waiting})"
    if s.kind == "rwlock":
        assert s.holder is not None
        holding = "1 writer" if s.holder.mode == "write" else f"{len(s.holders)} reading"
        return f"({holding}, {waiting})"
    return f"({waiting})"


def _line(e: Entry) -> str:
    ttl = "lease gone" if e.ttl_left < 0 else f"ttl {e.ttl_left}s"
    where = f"lease {e.lease}  {ttl}  since revision {e.create_revision}"
    if e.kind == "election":
        role = "leader" if e.role == "holder" else "candidate"
        return f"{role:<9} {e.key}  {e.value!r}  {where}"
    if e.kind == "rwlock":
        return f"{e.role:<6} {e.mode or '?':<5} {e.key}  {where}"
    return f"{e.role:<6} {e.key}  {where}"


def _text(value: bytes) -> str:
    return value.decode(errors="replace")


def entries(status: LockStatus) -> list[Entry]:
    def entry(h: LockHolder, role: str) -> Entry:
        return Entry(h.key, f"{h.lease:x}", h.ttl_left, h.token, role, status.kind, _text(h.value), h.mode)

    return [entry(h, "holder") for h in status.holders] + [entry(w, "waiter") for w in status.waiters]


async def collect(conn: Connection, prefix: str, limit: int | None) -> tuple[list[LockStatus], bool]:
    """The status of each name found under prefix (its kind told by its keys; read/write locks as
    such), sorted by name; and False if the scan stopped at `limit` keys before the end."""
    async with conn.client() as client:
        scan = await lock_names(client, prefix, limit=limit)
        # A name's NAME/<hex> keys say their own kind; its NAME/read/, NAME/write/ keys are a read/write lock.
        asked: list[tuple[str, Kind | None]] = [(name, None) for name in scan.names]
        asked += [(name, "rwlock") for name in scan.rwlocks]
        asked.sort(key=lambda a: (a[0], a[1] or ""))
        statuses = await asyncio.gather(*(recipe_status(client, n, kind=k) for n, k in asked))
    return list(statuses), scan.complete
