"""The sync API: same core on one owned loop thread; interruption and loss seen from threads."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from etcdlock import LockTimeout, SyncClient
from tests.waiting import wait_until_sync

# grpc's asyncio poller: one per process, started and stopped by grpc itself (see the growth test below).
_GRPC_POLLER = "_poll_wrapper"


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if _GRPC_POLLER not in t.name}


@pytest.fixture
def sync_client(etcd_endpoints: list[str]) -> Iterator[SyncClient]:
    before = _threads()
    c = SyncClient(etcd_endpoints)
    try:
        yield c
    finally:
        c.close()
    assert not c.loop_thread.is_alive()
    assert _threads() <= before


def test_many_sync_clients_do_not_grow_threads_or_fds(etcd_endpoints: list[str]) -> None:
    from etcdlock._diagnostics.process import fd_count, thread_count

    for _ in range(3):
        SyncClient(etcd_endpoints).close()
    base = (thread_count(), fd_count())
    for _ in range(30):
        with SyncClient(etcd_endpoints) as c:
            c.get("x")
    wait_until_sync(lambda: (thread_count(), fd_count()) <= base, what=f"threads/fds back to {base}")


def test_kv_and_lock_round_trip(sync_client: SyncClient, ns: str) -> None:
    sync_client.put(ns + "k", "v")
    assert sync_client.get(ns + "k").kvs[0].value == b"v"
    with sync_client.lock(ns + "lock", ttl=5) as held:
        assert held.key.startswith(ns + "lock/")
        assert held.token == sync_client.get(held.key).kvs[0].create_revision
        assert not held.lost.is_set()
        assert sync_client.try_lock(ns + "lock") is None
        with pytest.raises(LockTimeout), sync_client.lock(ns + "lock", timeout=0.2):
            pytest.fail("body ran without the lock")
    assert sync_client.get(ns, prefix=True).count == 1  # only ns+"k"


def test_lost_is_a_threading_event_and_calls_back(
    sync_client: SyncClient, ns: str, etcd_endpoints: list[str]
) -> None:
    reasons: list[str] = []
    with sync_client.lock(ns + "lock", ttl=10, on_lost=reasons.append) as held:
        with SyncClient(etcd_endpoints) as other:
            other.revoke(held.lease)
        assert held.lost.wait(timeout=2.0), "lost did not fire after the lease was revoked"
        assert reasons and "deleted" in reasons[0]
    assert sync_client.get(ns, prefix=True).count == 0


def test_interrupted_acquire_leaves_nothing_behind(sync_client: SyncClient, ns: str) -> None:
    name = ns + "lock"
    holder = sync_client.lock(name).acquire()
    base_leases = set(sync_client.leases())
    main = threading.main_thread()
    assert threading.current_thread() is main

    def interrupt_when_queued() -> None:
        # Our waiter's key shows up as the second key under the name: then it is waiting.
        wait_until_sync(lambda: sync_client.get(name, prefix=True).count == 2, what="waiter queued")
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=interrupt_when_queued)
    t.start()
    with pytest.raises(KeyboardInterrupt):
        sync_client.lock(name, ttl=10).acquire()
    t.join()
    assert sync_client.get(name, prefix=True).count == 1, "the interrupted waiter left its key"
    # The waiter needed a second default session (the holder's has the name); idle, it is revoked.
    wait_until_sync(lambda: set(sync_client.leases()) == base_leases, what="the waiter's session to go")
    holder.release()


def test_calls_from_the_loop_thread_are_refused(sync_client: SyncClient, ns: str) -> None:
    errors: list[BaseException] = []

    def on_lost(reason: str) -> None:
        try:
            sync_client.get("x")
        except BaseException as e:
            errors.append(e)

    with sync_client.lock(ns + "lock", on_lost=on_lost) as held:
        sync_client.delete(held.key)
        assert held.lost.wait(2.0)
    assert errors and isinstance(errors[0], RuntimeError) and "loop thread" in str(errors[0])


def test_watch_iterates_and_closes(sync_client: SyncClient, ns: str) -> None:
    start = sync_client.put(ns + "w", "1").revision
    sync_client.put(ns + "w", "2")
    with sync_client.watch(ns + "w", start_revision=start) as events:
        got = [next(events).kv.value, next(events).kv.value]
        with pytest.raises(TimeoutError):
            events.next(timeout=0.1)
    assert got == [b"1", b"2"]
    wait_until_sync(lambda: sync_client.resources().watchers == 0, what="watch cancelled")


def test_close_is_idempotent(etcd_endpoints: list[str]) -> None:
    c = SyncClient(etcd_endpoints)
    c.close()
    c.close()
    assert not c.loop_thread.is_alive()


def test_sync_txn_and_ensure_held_raise_lock_lost_once_the_lock_is_gone(
    sync_client: SyncClient, ns: str
) -> None:
    from etcdlock import LockLost, Op

    with sync_client.lock(ns + "txn", ttl=30, timeout=5) as held:
        held.ensure_held()
        assert held.txn([], [Op.put(ns + "data", "1")]).succeeded
        sync_client.delete(held.key)  # deleted from outside the lock
        with pytest.raises(LockLost):
            held.txn([], [Op.put(ns + "data", "2")])
        with pytest.raises(LockLost):
            held.ensure_held()
    assert sync_client.get(ns + "data").kvs[0].value == b"1"
