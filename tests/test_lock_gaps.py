"""No deletion is swallowed when a lock name's watcher restarts, and a holder never learns late or never.

The fault is real: the client's only connection is reset (through a FaultProxy) and, while it cannot
reconnect, etcd is compacted past the watcher's resume revision, so the resume comes back compacted and
the name's watcher has to start again. What happens in between is driven in a fixed order:

* the re-read/watch gap: the predecessor's key is deleted right after the client's first read of the
  queue following the restart, and the new watcher is created only after that deletion. A watcher that
  starts "from now" never reports it and the waiter waits forever; a list-then-watch one starts at the
  read's revision + 1 and does.
* the holder-key gap: a holder's own key is deleted while its connection is down, before the compaction;
  after the restart the holder must be told it lost the lock, and `ensure_held()` must not pass meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from etcdlock import Client, Compare, ConnectionFailedError, EtcdTimeoutError, LockLost, Op
from etcdlock._core.watch import Watcher
from etcdlock.testing import EtcdCluster, FaultProxy
from tests.test_lock import acquired
from tests.waiting import wait_until

TTL = 30  # far longer than the test: no loss may come from the lease


@pytest.fixture
def proxy(etcd_fresh: EtcdCluster) -> Iterator[FaultProxy]:
    p = FaultProxy(etcd_fresh.endpoints[0]).start()
    try:
        yield p
    finally:
        p.close()


async def compact_past(client: Client, ns: str) -> None:
    """Two writes and a compaction at the second: every watch resuming at or before the first is compacted."""
    await client.put(ns + "filler", "1")
    r = await client.put(ns + "filler", "2")
    await client.compact(r.header.revision)


def hold_back_new_watchers(client: Client) -> asyncio.Event:
    """From now on, watchers this client creates start only once the returned event is set: the watch's
    create request reaches etcd after whatever the test does first."""
    gate = asyncio.Event()
    real_watch = client.watch

    def watch(*args: Any, **kwargs: Any) -> Watcher:
        w = real_watch(*args, **kwargs)
        start = w.start

        async def start_later() -> None:
            await gate.wait()
            start()

        def start_when_let() -> None:
            client._spawn_owned(start_later(), "test:held-back-watch")

        w.start = start_when_let  # type: ignore[method-assign]
        return w

    client.watch = watch  # type: ignore[method-assign]
    return gate


def after_next_read(client: Client, action: Callable[[], Awaitable[None]]) -> None:
    """Run `action` right after this client's next read of etcd (get or txn) returns, once."""
    armed = True
    for method in ("get", "txn"):
        real = getattr(client, method)

        async def read(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            nonlocal armed
            result = await _real(*args, **kwargs)
            if armed:
                armed = False
                await action()
            return result

        setattr(client, method, read)


async def restart_compacted(proxy: FaultProxy, client: Client, outside: Client, ns: str) -> None:
    """Reset the client's connection, compact past its watch while it cannot reconnect (the proxy resets
    every new connection until pass_through()), so its resume comes back compacted."""
    stream = client._watch._streams["watch"]  # to see the reset land
    await wait_until(lambda: stream.replies_since_open > 0, timeout=10, what="the watch to be created")
    generation = stream.generations
    proxy.reset()
    await wait_until(lambda: stream.generations > generation, timeout=10, what="the watch stream to break")
    await compact_past(outside, ns)


async def test_a_deletion_between_the_reread_and_the_new_watcher_still_wakes_the_waiter(
    etcd_fresh: EtcdCluster, proxy: FaultProxy, ns: str
) -> None:
    name = ns + "gap"
    async with Client(etcd_fresh.endpoints) as outside, Client([proxy.endpoint], timeout=2) as waiter_client:
        holder = await acquired(outside.lock(name, ttl=TTL))
        waiting = asyncio.ensure_future(acquired(waiter_client.lock(name, ttl=TTL, timeout=60)))
        try:
            await wait_until(
                lambda: waiter_client.resources().watchers == 1, timeout=10, what="the waiter's watch"
            )
            gate = hold_back_new_watchers(waiter_client)

            async def delete_predecessor_then_let_watchers_start() -> None:
                await outside.delete(holder.key)
                gate.set()

            after_next_read(waiter_client, delete_predecessor_then_let_watchers_start)
            await restart_compacted(proxy, waiter_client, outside, ns)
            proxy.pass_through()
            lock = await asyncio.wait_for(waiting, 20)
            assert lock.held and lock.token > holder.token
            await lock.release()
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            await holder.release()
        assert not (await outside.get(name + "/", prefix=True)).kvs


async def test_a_holder_whose_key_was_deleted_during_a_compacted_restart_is_told_it_lost(
    etcd_fresh: EtcdCluster, proxy: FaultProxy, ns: str
) -> None:
    name = ns + "blind"
    async with Client(etcd_fresh.endpoints) as outside, Client([proxy.endpoint], timeout=2) as holder_client:
        async with holder_client.lock(name, ttl=TTL, timeout=10) as held:
            await held.ensure_held()
            await restart_compacted(proxy, holder_client, outside, ns)
            await outside.delete(held.key)  # by an operator, or etcd after the lease expired
            await compact_past(outside, ns)
            # In doubt (the watch is down): ensure_held() must not pass. It asks etcd, which it cannot
            # reach while the proxy resets every connection.
            with pytest.raises((ConnectionFailedError, EtcdTimeoutError)):
                await held.ensure_held()
            proxy.pass_through()
            await asyncio.wait_for(held.lost.wait(), 15)
            assert "was deleted" in str(held.lost_reason), held.lost_reason
            with pytest.raises(LockLost):
                await held.ensure_held()
        # Only the client's default session is kept alive (its key was deleted; the lease was not).
        assert holder_client.resources().keepalive_leases == 1


async def test_txn_after_the_lock_is_gone_raises_lock_lost(etcd_fresh: EtcdCluster, ns: str) -> None:
    name = ns + "txn"
    async with (
        Client(etcd_fresh.endpoints) as outside,
        Client(etcd_fresh.endpoints) as c,
        c.lock(name, ttl=TTL, timeout=10) as held,
    ):
        ok = await held.txn([], [Op.put(name + "-data", "1")])
        assert ok.succeeded
        # The caller's own compare failing is not a loss: a plain unsucceeded result.
        mine_failed = await held.txn(
            [Compare.value(name + "-data", "==", "nope")], [Op.put(name + "-data", "2")], [Op.get(name)]
        )
        assert not mine_failed.succeeded and len(mine_failed.responses) == 1
        assert not held.lost.is_set()
        # Revoked from outside, and the txn goes out before the client could hear of it.
        await outside.revoke(held.lease)
        with pytest.raises(LockLost):
            await held.txn([], [Op.put(name + "-data", "3")])
        assert held.lost.is_set()
        assert (await outside.get(name + "-data")).kvs[0].value == b"1"
        with pytest.raises(LockLost):
            await held.txn([], [Op.put(name + "-data", "4")])


async def test_a_key_created_anew_under_the_same_name_does_not_stand_in_for_the_one_awaited(
    etcd_fresh: EtcdCluster, proxy: FaultProxy, ns: str
) -> None:
    """A session's key for a name is the same string every time it locks the name. The waiter waits for
    one incarnation of it; if that one is deleted and the name locked again on the same session while
    the waiter's watch is down (and compacted past), the resync finds the key present again: a new key,
    above the waiter in the queue and waiting for it. Taking it for the old one would deadlock both."""
    name = ns + "again"
    async with (
        Client(etcd_fresh.endpoints) as outside,
        Client([proxy.endpoint], timeout=2) as waiter_client,
        outside.session(ttl=TTL) as session,
    ):
        first = await acquired(outside.lock(name, session=session))
        first_key, first_token = first.key, first.token
        waiting = asyncio.ensure_future(acquired(waiter_client.lock(name, ttl=TTL, timeout=20)))
        try:
            await wait_until(lambda: waiter_client.resources().watchers == 1, timeout=10, what="the watch")
            await wait_until(
                lambda: len(waiter_client._recipes.queues.names[name]._by_key) == 1,
                timeout=10,
                what="the waiter to wait for the holder's key",
            )
            await restart_compacted(proxy, waiter_client, outside, ns)
            await first.release()  # deleted ...
            again = asyncio.ensure_future(acquired(outside.lock(name, session=session, timeout=20)))

            async def created_again() -> bool:
                r = await outside.get(first_key)
                return bool(r.kvs) and r.kvs[0].create_revision > first_token

            await wait_until(created_again, timeout=5, what="the same key created anew")
            await compact_past(outside, ns)
            proxy.pass_through()  # ... and the same key created anew: the waiter is first now
            lock = await asyncio.wait_for(waiting, 15)
            token = lock.token
            assert token > first_token
            await lock.release()
            second = await asyncio.wait_for(again, 15)
            assert second.key == first_key and second.token > token
            await second.release()
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
