"""`etcdlock demo`: a short tour against a real etcd — KV, txn, watch, lease keepalive — ending with the
client's resource counts back at zero."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from etcdlock import Client, Compare, Op
from etcdlock._cli.common import add_endpoint_options, endpoints_or_local


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="a short tour of etcdlock against a (local) etcd")
    add_endpoint_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with endpoints_or_local(args) as endpoints:
        return asyncio.run(_demo(endpoints, args.user, args.password))


async def _demo(endpoints: list[str], user: str | None, password: str | None) -> int:
    async with Client(endpoints, username=user, password=password) as client:
        status = await client.status()
        print(f"connected to etcd {status.version} at {status.endpoint}")
        await client.put("demo/greeting", "hello")
        got = await client.get("demo/greeting")
        print(f"put/get: demo/greeting = {got.kvs[0].value.decode()} (revision {got.revision})")

        txn = await client.txn(
            [Compare.create_revision("demo/once", "==", 0)],
            [Op.put("demo/once", "first")],
            [Op.get("demo/once")],
        )
        print(f"txn create-if-absent: {'created' if txn.succeeded else 'already there'}")

        watcher = client.watch("demo/events/", prefix=True)
        async with watcher:
            await watcher.wait_created()
            for i in range(3):
                await client.put(f"demo/events/{i}", str(i))
            for _ in range(3):
                ev = await asyncio.wait_for(watcher.next_event(), 5)
                print(f"watch: {ev.type.value} {ev.kv.key.decode()} at revision {ev.revision}")

        lease = await client.grant(5)
        keeper = client.keep_alive(lease.id, lease.ttl)
        await client.put("demo/leased", "alive", lease=lease.id)
        print(f"lease {lease.id:x} (ttl {lease.ttl}s) kept alive on the shared stream: {client.resources()}")
        keeper.stop()
        await client.revoke(lease.id)
        await client.delete("demo/", prefix=True)
    print(f"after close: {client.resources()}")
    return 0 if client.resources().total() == 0 else 1
