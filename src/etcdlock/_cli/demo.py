"""`etcdlock demo`: a short tour against a real etcd — KV, txn, watch, lease keepalive — ending with the
client's resource counts back at zero."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from etcdlock import Compare, Op
from etcdlock._cli.common import (
    EXIT_ERROR,
    Connection,
    add_connection_options,
    connection_from,
    endpoints_or_local,
    report_error,
)
from etcdlock._core.errors import ConfigError, EtcdError

DESCRIPTION = """\
A short tour of etcdlock against etcd: a put and a get, a create-if-absent
transaction, a watch, and a lease kept alive on the client's shared stream.
It ends showing the client's resource counts back at zero once it closes.

It writes keys under demo/, and deletes everything under demo/ when done."""

EPILOG = f"""exit status:
  0  the tour ran and the client closed holding nothing
  1  the client still held resources after closing
  {EXIT_ERROR}  error: etcd unreachable, auth failed, bad input"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="a short tour of etcdlock against a (throwaway, by default) etcd",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection_options(p, local_etcd=True)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        conn = connection_from(args, local_etcd=True)
    except ConfigError as e:
        return report_error(e, None)
    try:
        with endpoints_or_local(conn) as endpoints:
            return asyncio.run(_demo(conn, endpoints))
    except (EtcdError, ConfigError) as e:
        return report_error(e, conn)


async def _demo(conn: Connection, endpoints: list[str]) -> int:
    async with conn.client(endpoints) as client:
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
