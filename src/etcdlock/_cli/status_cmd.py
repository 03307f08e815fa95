"""`etcdlock status [PREFIX]`: every lock under PREFIX, its holder and its queue of waiters."""

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
from etcdlock._recipes.status import LockHolder, LockStatus, lock_names

EXIT_USAGE = 2  # as argparse: the command line asks for something this command will not do

_DESCRIPTION = """Show each lock under PREFIX: its holder and its waiters in queue order (keys of any
client: etcdlock, Go's concurrency.Mutex, etcdctl lock).

Without PREFIX this would read every key in etcd, so it refuses unless --limit N is given: then it reads
at most N keys (of any kind, in key order) and says so when it stopped before the end. With PREFIX it
reads every key under PREFIX, or at most --limit N of them."""


@dataclass
class Entry:
    key: str
    lease: str
    ttl_left: int  # seconds, -1 if the lease is gone
    create_revision: int
    role: str  # holder | waiter


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="show each lock's holder and waiters",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prefix", nargs="?", default="", help="only locks whose name starts with this")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="read at most N keys (required without PREFIX: no whole-keyspace scan by default)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
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
            f"etcdlock: stopped after {args.limit} keys under {args.prefix!r}; locks beyond them are not "
            "shown (raise --limit or narrow PREFIX)",
            file=sys.stderr,
        )
    locks = {s.name: entries(s) for s in statuses if s.holder is not None}
    if args.json:
        print(json.dumps({name: [asdict(e) for e in es] for name, es in locks.items()}, indent=2))
        return 0
    if not locks:
        print(f"no locks under {args.prefix!r}")
    for name, es in locks.items():
        print(f"{name}  ({len(es) - 1} waiting)")
        for e in es:
            ttl = "lease gone" if e.ttl_left < 0 else f"ttl {e.ttl_left}s"
            print(f"  {e.role:<6} {e.key}  lease {e.lease}  {ttl}  since revision {e.create_revision}")
    return 0


def entries(status: LockStatus) -> list[Entry]:
    def entry(h: LockHolder, role: str) -> Entry:
        return Entry(h.key, f"{h.lease:x}", h.ttl_left, h.token, role)

    holder = [entry(status.holder, "holder")] if status.holder is not None else []
    return holder + [entry(w, "waiter") for w in status.waiters]


async def collect(conn: Connection, prefix: str, limit: int | None) -> tuple[list[LockStatus], bool]:
    """Each lock's status (client.lock_status) for the lock names found under prefix, sorted by name; and
    False if the scan stopped at `limit` keys before the end."""
    async with conn.client() as client:
        scan = await lock_names(client, prefix, limit=limit)
        statuses = await asyncio.gather(*(client.lock_status(name) for name in scan.names))
    return list(statuses), scan.complete
