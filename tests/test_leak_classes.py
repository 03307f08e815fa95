"""Leak classes H, J and K (the others live beside the code they test; see the module docstrings):

H  native memory from cancelled stream reads: RSS over N and 2N watch create/cancel cycles must not grow
   (the stream's single reader is never cancelled mid-read; watches end by cancel requests).
J  exceptions holding frames: failed acquires (timeouts) and failed calls must not keep library objects
   alive through tracebacks or leave reference cycles.
K  timers not cancelled: closing a client cancels every timer it scheduled (lock-queue linger, keepalive
   and watch back-off waits), so the loop's scheduled handles return to baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref

import pytest

from etcdlock import Client, ConnectionFailedError, LockTimeout
from etcdlock._diagnostics.process import rss_bytes
from etcdlock._recipes.contender import Contender
from etcdlock.testing import EtcdCluster
from tests.waiting import wait_until

MB = 1024 * 1024


async def _watch_cycles(c: Client, n: int) -> None:
    for start in range(0, n, 50):

        async def one(i: int) -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.005 if i % 2 else 0.0):
                    async for _ in c.watch(f"h/{i}"):
                        pass

        await asyncio.gather(*(one(i) for i in range(start, start + 50)))


async def test_h_rss_flat_over_n_and_2n_watch_create_cancel_cycles(
    etcd_fresh: EtcdCluster, request: pytest.FixtureRequest
) -> None:
    n = 50_000 if request.config.getoption("--slow") else 10_000  # --slow: 100k cycles in all
    async with Client(etcd_fresh.endpoints) as c:
        await _watch_cycles(c, 2_000)  # warm-up: allocator arenas, grpc pools
        gc.collect()
        r0 = rss_bytes()
        await _watch_cycles(c, n)
        gc.collect()
        r1 = rss_bytes()
        await _watch_cycles(c, n)
        gc.collect()
        r2 = rss_bytes()
        await wait_until(
            lambda: c.resources().watch_streams + c.resources().watch_streams_closing == 0,
            what="watch streams closed",
        )
    # The second N cycles may not cost what a leak would: a few hundred bytes per cycle adds megabytes.
    assert r2 - r1 < 2 * MB, (
        f"RSS grew {(r2 - r1) / MB:.2f} MB over the second {n} cycles (first: {(r1 - r0) / MB:.2f})"
    )


async def test_j_failed_acquires_leave_no_objects_or_cycles(client: Client, ns: str) -> None:
    refs: list[weakref.ref[Contender]] = []
    # The attempts go on a session of their own: each then gets as far as the queue (a default session
    # started on demand could take longer than the timeout, and the attempt end before it had a Contender).
    async with client.lock(ns + "busy"), client.session() as session:
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(20):
                lock = client.lock(ns + "busy", timeout=0.01, session=session)
                with contextlib.suppress(LockTimeout):
                    await lock.acquire()
                assert lock._last is not None
                refs.append(weakref.ref(lock._last))
                del lock
            alive = sum(1 for r in refs if r() is not None)
            assert alive == 0, f"{alive} mutexes of failed acquires still alive (held by a traceback?)"
            gc.collect()
            cycles = sorted({type(o).__name__ for o in gc.garbage})
            assert not gc.garbage, f"failed acquires left {len(gc.garbage)} objects in cycles: {cycles[:12]}"
        finally:
            gc.set_debug(0)
            gc.garbage.clear()


async def test_j_failed_calls_leave_no_cycles() -> None:
    c = Client(["127.0.0.1:1"], timeout=0.2)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(5):
            with pytest.raises(ConnectionFailedError):
                await c.get("x")
        gc.collect()
        kinds = sorted({type(o).__name__ for o in gc.garbage})
        assert not gc.garbage, f"failed calls left {len(gc.garbage)} objects in cycles: {kinds[:12]}"
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        await c.close()


def _scheduled(loop: asyncio.AbstractEventLoop) -> int:
    # CPython's event loop keeps its pending timers in _scheduled; cancelled ones are dropped lazily.
    return sum(1 for h in getattr(loop, "_scheduled", []) if not h.cancelled())


async def test_k_closing_a_client_cancels_its_timers(etcd_endpoints: list[str], ns: str) -> None:
    loop = asyncio.get_running_loop()
    base = _scheduled(loop)
    c = Client(etcd_endpoints)
    async with c:
        for i in range(5):
            async with c.lock(f"{ns}k{i}"):  # each leaves a lingering queue watcher with a linger timer
                pass
        assert _scheduled(loop) > base, "expected linger/keepalive timers while the client is open"
    # Right after close, not "eventually": a linger timer left behind would expire by itself a second later.
    assert _scheduled(loop) <= base, f"{_scheduled(loop) - base} timers still scheduled after close"


async def test_g_one_connection_per_endpoint_whatever_the_lock_traffic(
    etcd_endpoints: list[str], ns: str
) -> None:
    from etcdlock._diagnostics.process import fd_count, tcp_connections

    ports = {int(e.rsplit(":", 1)[1]) for e in etcd_endpoints}
    async with Client(etcd_endpoints) as c:
        await c.get("warm")
        base_fds = fd_count()

        async def worker(i: int) -> None:
            for _ in range(5):
                async with c.lock(f"{ns}g{i % 4}"):
                    await c.get(f"{ns}x")

        await asyncio.gather(*(worker(i) for i in range(12)))
        assert c.resources().channels == 1
        assert tcp_connections(ports) == 1, "locks must share the client's one connection to etcd"
        assert fd_count() <= base_fds
