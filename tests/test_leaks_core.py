"""Leak tests for the client core. Each measures deltas against a baseline taken after a warm-up.

They are written to fail if the watch-stream registry were keyed by a per-call value (concurrent watchers
would then open more than one stream) or if any exit path skipped the watch cancel (etcd's own watcher
gauge would not come back down).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc

from etcdlock import Client
from etcdlock._diagnostics.process import fd_count, tcp_connections, thread_count
from etcdlock.testing import EtcdCluster
from tests.waiting import wait_until

WATCH_CYCLES = 10_000
CONCURRENCY = 50


def _server_watch_gauges(cluster: EtcdCluster) -> tuple[float, float]:
    m = cluster.members[0]
    return m.metric("etcd_debugging_mvcc_watch_stream_total"), m.metric("etcd_debugging_mvcc_watcher_total")


async def _one_watch_cycle(c: Client, i: int) -> None:
    """One create/cancel, ending by one of several exit paths, each under its own fresh scope."""
    mode = i % 5
    if mode == 0:  # cancelled right after registration, before the create reply can arrive
        w = c.watch(f"quiet/{i}")
        w.start()
        w.cancel()
    elif mode == 1:  # a fresh timeout around the consumer
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.02):
                async for _ in c.watch(f"quiet/{i}"):
                    pass
    elif mode == 2:  # break after the first event
        async for _ in c.watch("seen", start_revision=1):
            break
    elif mode == 3:  # the consuming task is cancelled after the watch was created
        w = c.watch(f"quiet/{i}")

        async def consume() -> None:
            async with w:
                async for _ in w:
                    pass

        task = asyncio.create_task(consume())
        await asyncio.wait_for(w.wait_created(), 5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    else:  # an exception in the body
        with contextlib.suppress(LookupError):
            async for _ in c.watch("seen", start_revision=1):
                raise LookupError


async def test_10k_watch_create_cancel_cycles_leave_nothing(etcd_fresh: EtcdCluster) -> None:
    async with Client(etcd_fresh.endpoints) as c:
        await c.put("seen", "x")
        for i in range(CONCURRENCY):  # warm-up: channel, grpc threads, first stream
            await _one_watch_cycle(c, i)
        await wait_until(
            lambda: c.resources().watch_streams + c.resources().watch_streams_closing == 0,
            what="warm-up stream closed",
        )
        await wait_until(lambda: _server_watch_gauges(etcd_fresh) == (0, 0), what="server idle after warm-up")
        gc.collect()
        base_tasks, base_fds = len(asyncio.all_tasks()), fd_count()
        base_gauges = _server_watch_gauges(etcd_fresh)

        max_streams = 0
        for start in range(0, WATCH_CYCLES, CONCURRENCY):
            await asyncio.gather(
                *(_one_watch_cycle(c, i) for i in range(start, start + CONCURRENCY)),
                _sample(c, lambda n: None),
            )
            max_streams = max(max_streams, c.resources().watch_streams)
            assert c.resources().watch_streams <= 1, f"stream registry grew: {c.resources()}"
            assert c.resources().watch_streams_closing <= 2, f"closing streams pile up: {c.resources()}"

        await wait_until(
            lambda: c.resources().watch_streams + c.resources().watch_streams_closing == 0,
            what="client watch streams closed",
        )
        assert c.resources().watchers == 0
        await wait_until(
            lambda: _server_watch_gauges(etcd_fresh) == base_gauges,
            timeout=10,
            what=f"etcd watch gauges back to {base_gauges}",
        )
        gc.collect()
        await wait_until(
            lambda: len(asyncio.all_tasks()) == base_tasks, what="asyncio tasks back to baseline"
        )
        assert fd_count() == base_fds
        assert max_streams <= 1


async def _sample(c: Client, _: object) -> None:
    """Look at the registry while the cycles run (they yield to us at every await)."""
    for _ in range(20):
        assert c.resources().watch_streams <= 1, f"stream registry grew during the cycles: {c.resources()}"
        await asyncio.sleep(0)


async def _client_cycle(endpoints: list[str], i: int) -> None:
    async with Client(endpoints) as c:
        await c.put(f"cycle/{i % 10}", "v")
        grant = await c.grant(30)
        keeper = c.keep_alive(grant.id, grant.ttl)
        async for _ in c.watch(f"cycle/{i % 10}", start_revision=1):
            break
        keeper.stop()
        await c.revoke(grant.id)


async def test_200_client_open_close_cycles_leave_nothing(etcd: EtcdCluster) -> None:
    ports = {int(e.rsplit(":", 1)[1]) for e in etcd.endpoints}
    for i in range(3):  # warm-up: grpc's process-wide threads start on first use
        await _client_cycle(etcd.endpoints, i)
    gc.collect()
    await wait_until(lambda: tcp_connections(ports) == 0, what="warm-up connections closed")
    base = (fd_count(), thread_count(), len(asyncio.all_tasks()))
    for i in range(200):
        await _client_cycle(etcd.endpoints, i)
    gc.collect()
    await wait_until(lambda: tcp_connections(ports) == 0, what="TCP connections to etcd closed")
    await wait_until(
        lambda: (fd_count(), thread_count(), len(asyncio.all_tasks())) == base,
        timeout=10,
        what=f"fds/threads/tasks back to {base}, now "
        f"{(fd_count(), thread_count(), len(asyncio.all_tasks()))}",
    )
