"""`etcdlock status [PREFIX]`: every lock under PREFIX, its holder and its queue of waiters."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from dataclasses import asdict, dataclass
from typing import Any

from etcdlock._cli.common import given_endpoints
from etcdlock._client import Client
from etcdlock._core.errors import ConfigError, EtcdError

_LOCK_KEY = re.compile(rb"^(?P<name>.+)/(?P<lease>[0-9a-f]+)$")


@dataclass
class Entry:
    key: str
    lease: str
    ttl_left: int  # seconds, -1 if the lease is gone
    create_revision: int
    role: str  # holder | waiter


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="show each lock's holder and waiters")
    p.add_argument("prefix", nargs="?", default="", help="only locks whose name starts with this")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--endpoints", default=None, help="comma-separated host:port (default $ETCDCTL_ENDPOINTS)")
    p.add_argument("--user", default=None)
    p.add_argument("--password", default=None)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        locks = asyncio.run(collect(given_endpoints(args), args.prefix, args.user, args.password))
    except (EtcdError, ConfigError) as err:
        print(f"etcdlock: {err}", file=sys.stderr)
        return 5
    if args.json:
        print(json.dumps({name: [asdict(e) for e in entries] for name, entries in locks.items()}, indent=2))
        return 0
    if not locks:
        print(f"no locks under {args.prefix!r}")
    for name, entries in locks.items():
        print(f"{name}  ({len(entries) - 1} waiting)")
        for e in entries:
            ttl = "lease gone" if e.ttl_left < 0 else f"ttl {e.ttl_left}s"
            print(f"  {e.role:<6} {e.key}  lease {e.lease}  {ttl}  since revision {e.create_revision}")
    return 0


async def collect(
    endpoints: list[str], prefix: str, user: str | None, password: str | None
) -> dict[str, list[Entry]]:
    """Lock keys are NAME/<hex lease> on that lease; each name's queue is its keys in create order."""
    async with Client(endpoints, username=user, password=password) as client:
        r = await client.get(prefix, prefix=True, keys_only=True, sort_order="ascend", sort_target="create")
        queues: dict[str, list[Any]] = {}
        for kv in r.kvs:
            m = _LOCK_KEY.match(kv.key)
            if m is None or kv.lease == 0 or int(m["lease"], 16) != kv.lease:
                continue
            queues.setdefault(m["name"].decode(errors="replace"), []).append(kv)
        ttls = dict(
            zip(
                (kv.lease for q in queues.values() for kv in q),
                await asyncio.gather(*(client.time_to_live(kv.lease) for q in queues.values() for kv in q)),
                strict=True,
            )
        )
    return {
        name: [
            Entry(
                kv.key.decode(errors="replace"),
                f"{kv.lease:x}",
                ttls[kv.lease].ttl,
                kv.create_revision,
                "holder" if i == 0 else "waiter",
            )
            for i, kv in enumerate(q)
        ]
        for name, q in sorted(queues.items())
    }
