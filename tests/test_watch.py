"""Watch semantics against a real etcd: events, filters, history, exit paths, shared stream, overflow."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from etcdlock import Client, CompactedError, EventType, WatchOverflowError
from etcdlock._core.watch import STREAM_KEY
from etcdlock._wire import rpc_pb2 as pb
from etcdlock.testing import EtcdCluster
from tests.waiting import wait_until


async def collect(
    client: Client, n: int, key: str, **options: object
) -> list[tuple[EventType, bytes, bytes]]:
    out: list[tuple[EventType, bytes, bytes]] = []
    async for ev in client.watch(key, **options):  # type: ignore[arg-type]
        out.append((ev.type, ev.kv.key, ev.kv.value))
        if len(out) == n:
            break
    return out


@pytest.fixture
async def fresh_client(etcd_fresh: EtcdCluster) -> AsyncIterator[Client]:
    async with Client(etcd_fresh.endpoints) as c:
        yield c
    assert c.resources().total() == 0


async def test_put_and_delete_events_with_prev_kv(client: Client, ns: str) -> None:
    w = client.watch(ns + "k", prev_kv=True)
    async with w:
        await w.wait_created()
        await client.put(ns + "k", "v1")
        await client.put(ns + "k", "v2")
        await client.delete(ns + "k")
        e1, e2, e3 = [await w.next_event() for _ in range(3)]
    assert (e1.type, e1.kv.value, e1.prev_kv) == (EventType.PUT, b"v1", None)
    assert (e2.type, e2.kv.value) == (EventType.PUT, b"v2")
    assert e2.prev_kv is not None and e2.prev_kv.value == b"v1"
    assert e3.type == EventType.DELETE and e3.prev_kv is not None and e3.prev_kv.value == b"v2"
    assert e1.revision < e2.revision < e3.revision


async def test_prefix_watch_sees_only_its_prefix(client: Client, ns: str) -> None:
    w = client.watch(ns + "a/", prefix=True)
    async with w:
        await w.wait_created()
        await client.put(ns + "b/1", "x")
        await client.put(ns + "a/1", "y")
        ev = await w.next_event()
    assert ev.kv.key == (ns + "a/1").encode()


async def test_start_revision_replays_history(client: Client, ns: str) -> None:
    first = await client.put(ns + "h", "1")
    await client.put(ns + "h", "2")
    await client.put(ns + "h", "3")
    got = await asyncio.wait_for(collect(client, 3, ns + "h", start_revision=first.revision), 5)
    assert [v for _, _, v in got] == [b"1", b"2", b"3"]


async def test_filters(client: Client, ns: str) -> None:
    start = (await client.put(ns + "f", "1")).revision
    await client.delete(ns + "f")
    await client.put(ns + "f", "2")
    puts = await asyncio.wait_for(collect(client, 2, ns + "f", start_revision=start, no_delete=True), 5)
    assert [t for t, _, _ in puts] == [EventType.PUT, EventType.PUT]
    deletes = await asyncio.wait_for(collect(client, 1, ns + "f", start_revision=start, no_put=True), 5)
    assert [t for t, _, _ in deletes] == [EventType.DELETE]


async def test_first_watch_id_zero_is_valid(fresh_client: Client) -> None:
    w = fresh_client.watch("zero")
    async with w:
        await w.wait_created()
        assert w.watch_id == 0
        await fresh_client.put("zero", "x")
        ev = await asyncio.wait_for(w.next_event(), 5)
    assert ev.kv.value == b"x"


async def test_compacted_start_revision_is_a_typed_error(fresh_client: Client) -> None:
    r1 = await fresh_client.put("c", "1")
    r2 = await fresh_client.put("c", "2")
    await fresh_client.compact(r2.revision)
    with pytest.raises(CompactedError) as info:
        await asyncio.wait_for(collect(fresh_client, 1, "c", start_revision=r1.revision), 5)
    assert info.value.compact_revision == r2.revision
    assert fresh_client.resources().watchers == 0


async def test_all_watchers_share_one_stream(fresh_client: Client, etcd_fresh: EtcdCluster) -> None:
    member = etcd_fresh.members[0]
    base_streams = member.metric("etcd_debugging_mvcc_watch_stream_total")
    async with contextlib.AsyncExitStack() as stack:
        watchers = [await stack.enter_async_context(fresh_client.watch(f"s{i}")) for i in range(25)]
        for w in watchers:
            await asyncio.wait_for(w.wait_created(), 5)
        res = fresh_client.resources()
        assert (res.watch_streams, res.watchers) == (1, 25)
        assert member.metric("etcd_debugging_mvcc_watch_stream_total") == base_streams + 1
        assert len({w.watch_id for w in watchers}) == 25
    # The last watcher left: the stream closes, on our side and on the server.
    await wait_until(
        lambda: fresh_client.resources().watch_streams + fresh_client.resources().watch_streams_closing == 0,
        what="client watch stream closed",
    )
    await wait_until(
        lambda: member.metric("etcd_debugging_mvcc_watch_stream_total") == base_streams,
        what="server watch stream gone",
    )


# ---- every exit path sends a cancel ----


async def _exit_by_break(c: Client) -> None:
    async for _ in c.watch("x", start_revision=1):
        break


async def _exit_by_exception(c: Client) -> None:
    with contextlib.suppress(RuntimeError):
        async for _ in c.watch("x", start_revision=1):
            raise RuntimeError("boom")


async def _exit_by_timeout(c: Client) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.2):
            async for _ in c.watch("quiet"):
                pass


async def _exit_by_task_cancel(c: Client) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        w = c.watch("quiet")
        async with w:
            await w.wait_created()
            started.set()
            async for _ in w:
                pass

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.mark.parametrize(
    "exit_path", [_exit_by_break, _exit_by_exception, _exit_by_timeout, _exit_by_task_cancel]
)
async def test_every_exit_path_cancels_on_the_server(
    fresh_client: Client, etcd_fresh: EtcdCluster, exit_path: object
) -> None:
    member = etcd_fresh.members[0]
    # An anchor keeps the stream open, so the only way the server's watcher count drops is a cancel request.
    anchor = fresh_client.watch("anchor")
    async with anchor:
        await anchor.wait_created()
        base = member.metric("etcd_debugging_mvcc_watcher_total")
        await fresh_client.put("x", "1")
        await asyncio.wait_for(exit_path(fresh_client), 5)  # type: ignore[operator]
        await wait_until(
            lambda: member.metric("etcd_debugging_mvcc_watcher_total") == base,
            what="server watcher count back to baseline",
        )
        assert fresh_client.resources().watchers == 1
        assert fresh_client.resources().watch_streams == 1


async def test_cancel_before_create_reply_still_cancels(
    fresh_client: Client, etcd_fresh: EtcdCluster
) -> None:
    member = etcd_fresh.members[0]
    anchor = fresh_client.watch("anchor")
    async with anchor:
        await anchor.wait_created()
        base = member.metric("etcd_debugging_mvcc_watcher_total")
        for _ in range(50):
            w = fresh_client.watch("early")
            w.start()
            await asyncio.sleep(0)  # let the runner send the create, but not the reply arrive
            w.cancel()
        await wait_until(
            lambda: member.metric("etcd_debugging_mvcc_watcher_total") == base,
            what="abandoned creates cancelled on the server",
        )
        assert fresh_client.resources().watchers == 1


async def test_events_for_unknown_watch_id_trigger_a_cancel(fresh_client: Client) -> None:
    anchor = fresh_client.watch("anchor")
    async with anchor:
        await anchor.wait_created()
        stream = fresh_client._watch._streams[STREAM_KEY]
        before = stream.cancels_sent
        stranger = pb.WatchResponse(watch_id=4242)
        stranger.events.add().kv.key = b"zzz"
        stream._dispatch(stranger)
        stream._dispatch(stranger)  # a second stray batch must not send a second cancel
        await wait_until(lambda: stream.cancels_sent == before + 1, what="cancel for the unknown id")
        assert 4242 in stream.cancelling


async def test_slow_consumer_overflows_without_blocking_others(client: Client, ns: str) -> None:
    slow = client.watch(ns, prefix=True, max_buffer=10)
    fast = client.watch(ns, prefix=True)
    async with slow, fast:
        await slow.wait_created()
        await fast.wait_created()
        for i in range(30):
            await client.put(f"{ns}{i}", "v")
        got = [await asyncio.wait_for(fast.next_event(), 5) for _ in range(30)]
        assert len(got) == 30
        with pytest.raises(WatchOverflowError, match="max_buffer=10"):
            for _ in range(30):
                await asyncio.wait_for(slow.next_event(), 5)
        await wait_until(lambda: client.resources().watchers == 1, what="overflowed watcher removed")


async def test_large_catch_up_is_reassembled_from_fragments() -> None:
    # etcd fragments a response bigger than --max-request-bytes plus 512 KiB of gRPC allowance; a small
    # limit and a ~760 KB catch-up make it split.
    with EtcdCluster(1, extra_args=["--max-request-bytes=20000"]) as cluster:
        async with Client(cluster.endpoints) as c:
            first = None
            for i in range(40):
                r = await c.put(f"big/{i:02d}", bytes([65 + i]) * 19000)
                first = first or r.revision
            assert first is not None
            w = c.watch("big/", prefix=True, start_revision=first)
            async with w:
                events = [await asyncio.wait_for(w.next_event(), 5) for _ in range(40)]
                stream = c._watch._streams[STREAM_KEY]
                assert stream.fragments_received >= 1, "etcd did not fragment; the test proves nothing"
            assert [e.kv.key for e in events] == [f"big/{i:02d}".encode() for i in range(40)]
            assert all(len(e.kv.value) == 19000 for e in events)


async def test_progress_notifications_advance_the_resume_revision() -> None:
    with EtcdCluster(1, extra_args=["--experimental-watch-progress-notify-interval=200ms"]) as cluster:
        async with Client(cluster.endpoints) as c:
            w = c.watch("quiet", progress_notify=True)
            async with w:
                await w.wait_created()
                start = w.next_revision
                last = (await c.put("elsewhere", "x")).revision
                await wait_until(lambda: w.next_revision > last, timeout=5, what="progress notification")
                assert w.next_revision > start and w.buffered == 0


async def test_a_watch_from_exactly_the_compaction_revision_does_not_miss_its_deletion(
    etcd_fresh: EtcdCluster,
) -> None:
    """etcd drops the tombstones at its compaction revision: a watch starting exactly there would never see
    that deletion, and etcd says nothing. The client starts one revision early, so this is a
    CompactedError (a lock queue then reads the queue again) instead of a deletion lost in silence."""
    async with Client(etcd_fresh.endpoints) as c:
        await c.put("tomb", "v")
        deleted = await c.delete("tomb")
        await c.compact(deleted.header.revision)
        watcher = c.watch("tomb", start_revision=deleted.header.revision)
        with pytest.raises(CompactedError):
            async with asyncio.timeout(5):
                async for _ in watcher:
                    break
