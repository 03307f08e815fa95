"""The sync API: same core on one owned loop thread; interruption and loss seen from threads."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from etcdlock import (
    AlreadyHeldError,
    ClientClosedError,
    ConfigError,
    EventType,
    LockLost,
    LockTimeout,
    Op,
    SyncClient,
    SyncLock,
)
from etcdlock._sync.portal import Portal
from tests.waiting import wait_until_sync

# grpc's asyncio poller: one per process, started and stopped by grpc itself (see the growth test below).
_GRPC_POLLER = "_poll_wrapper"


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if _GRPC_POLLER not in t.name}


# ---- the portal (no etcd) ----


@pytest.fixture
def portal() -> Iterator[Portal]:
    p = Portal("test-portal")
    try:
        yield p
    finally:
        p.stop()
    assert not p.thread.is_alive()


def test_portal_runs_coroutines_and_functions_on_its_thread(portal: Portal) -> None:
    async def where() -> str:
        return threading.current_thread().name

    assert portal.call(where()) == "test-portal"
    assert portal.run(lambda: threading.current_thread().name) == "test-portal"

    async def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        portal.call(fail())


def test_portal_timeout_cancels_and_waits_for_the_cleanup(portal: Portal) -> None:
    cleaned = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits
            cleaned.set()

    with pytest.raises(TimeoutError):
        portal.call(forever(), timeout=0.05)
    assert cleaned.is_set(), "call() returned before the coroutine's cleanup ran"


def test_portal_timeout_keeps_a_result_that_came_too_late_to_cancel(portal: Portal) -> None:
    async def finishes_anyway() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "result"  # as a shielded acquire that completed when the cancel came
        return "never"

    assert portal.call(finishes_anyway(), timeout=0.05) == "result"


def test_portal_interrupted_call_undoes_a_result_that_came_too_late(portal: Portal) -> None:
    assert threading.current_thread() is threading.main_thread()
    started = threading.Event()
    undone: list[str] = []

    async def finishes_anyway() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "acquired"
        return "never"

    async def undo(result: str) -> None:
        undone.append(result)

    def interrupt() -> None:
        assert started.wait(5)
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=interrupt)
    t.start()
    with pytest.raises(KeyboardInterrupt):
        portal.call(finishes_anyway(), undo=undo)
    t.join()
    assert undone == ["acquired"]


def test_portal_refuses_its_own_thread_and_calls_after_stop(portal: Portal) -> None:
    async def nothing() -> None:
        pass

    with pytest.raises(RuntimeError, match="loop thread"):
        portal.run(lambda: portal.call(nothing()))

    waiting_error: list[BaseException] = []
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    def wait_forever() -> None:
        try:
            portal.call(forever())
        except BaseException as e:
            waiting_error.append(e)

    waiter = threading.Thread(target=wait_forever)
    waiter.start()
    assert started.wait(5)
    portal.stop()
    portal.stop()  # idempotent
    waiter.join(5)
    assert len(waiting_error) == 1 and isinstance(waiting_error[0], ClientClosedError)
    with pytest.raises(ClientClosedError):
        portal.call(nothing())
    portal.call_unless_closed(nothing())  # cleanup after the end: nothing to do, no error


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
    holder = sync_client.lock(name)
    assert holder.acquire()
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


# ---- the twins of the asyncio API ----


def test_lock_on_an_explicit_session(sync_client: SyncClient, ns: str, etcd_endpoints: list[str]) -> None:
    name = ns + "lock"
    with sync_client.session(ttl=10) as session:
        assert session.lease_id in sync_client.leases()
        assert session.keeper.active and not session.lost.is_set()
        with sync_client.lock(name, session=session, timeout=5) as held:
            assert held.lease == session.lease_id
            assert sync_client.get(held.key).kvs[0].lease == session.lease_id
            assert session.holds(name) and session.busy == 1
        assert not session.holds(name)
        assert sync_client.get(name, prefix=True).count == 0
        with SyncClient(etcd_endpoints) as other, pytest.raises(ConfigError, match="another client"):
            other.lock(name, session=session)
    assert session.closed
    assert session.lease_id not in sync_client.leases(), "the session's lease outlived the session"


def test_session_loss_is_a_threading_event(sync_client: SyncClient, etcd_endpoints: list[str]) -> None:
    with sync_client.session(ttl=3) as session:
        with SyncClient(etcd_endpoints) as other:
            other.revoke(session.lease_id)
        assert session.lost.wait(5), "lost did not fire after the session's lease was revoked"
        assert session.lost_reason
    with pytest.raises(ConfigError, match="not started"):
        sync_client.session().lost  # noqa: B018 - the property raises


def test_grant_with_a_chosen_lease_id(sync_client: SyncClient, ns: str) -> None:
    lease_id = secrets.randbits(62) or 1
    grant = sync_client.grant(10, lease_id=lease_id)
    assert grant.id == lease_id and grant.ttl == 10
    sync_client.put(ns + "k", "v", lease=lease_id)
    assert sync_client.time_to_live(lease_id, keys=True).keys == [(ns + "k").encode()]
    sync_client.revoke(lease_id)
    assert lease_id not in sync_client.leases()
    assert sync_client.get(ns + "k").count == 0


def test_keep_alive_renews_past_the_ttl_and_reports_the_loss(sync_client: SyncClient) -> None:
    grant = sync_client.grant(2)
    started = time.monotonic()
    keeper = sync_client.keep_alive(grant.id, grant.ttl)
    reasons: list[str] = []
    keeper.add_lost_callback(reasons.append)
    assert keeper.id == grant.id and keeper.ttl == 2
    assert keeper.active and keeper.check() and keeper.remaining() > 0
    # Renewed at once, then every (TTL - margin) / 3 s: eight renewals take longer than the TTL.
    wait_until_sync(lambda: keeper.renewals >= 8, timeout=10, what="eight renewals")
    assert time.monotonic() - started > grant.ttl
    assert sync_client.time_to_live(grant.id).ttl > 0, "the lease expired although it was kept alive"
    assert not keeper.lost.is_set()

    sync_client.revoke(grant.id)
    assert keeper.lost.wait(5), "lost did not fire after the lease was revoked"
    wait_until_sync(lambda: bool(reasons), what="the lost callback")
    assert keeper.lost_reason == reasons[0] and not keeper.active
    keeper.stop()
    assert sync_client.resources().keepalive_leases == 0


def test_keep_alive_stop_ends_renewals_without_a_loss(sync_client: SyncClient) -> None:
    grant = sync_client.grant(10)
    keeper = sync_client.keep_alive(grant.id, grant.ttl)
    assert sync_client.resources().keepalive_leases == 1
    keeper.stop()
    keeper.stop()
    assert not keeper.active and not keeper.lost.is_set()
    assert sync_client.resources().keepalive_leases == 0
    sync_client.revoke(grant.id)


def test_watch_takes_typed_options(sync_client: SyncClient, ns: str) -> None:
    with sync_client.watch(ns, prefix=True, no_put=True, prev_kv=True) as events:
        assert events.wait_created() > 0
        sync_client.put(ns + "a", "1")
        sync_client.delete(ns + "a")
        event = events.next(timeout=5)
        assert event.type is EventType.DELETE and event.kv.key == (ns + "a").encode()
        assert event.prev_kv is not None and event.prev_kv.value == b"1"
        assert events.buffered == 0
        with pytest.raises(TimeoutError):
            events.next(timeout=0.1)  # the put was filtered out
    assert events.done
    with pytest.raises(StopIteration):
        events.next_event()
    with pytest.raises(TypeError):
        sync_client.watch(ns, prefx=True)  # type: ignore[call-arg]


def test_member_list(sync_client: SyncClient, etcd_endpoints: list[str]) -> None:
    members = sync_client.member_list()
    assert len(members) == 1 and not members[0].is_learner
    assert any(etcd_endpoints[0] in url for url in members[0].client_urls), members


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def test_serve_debug(sync_client: SyncClient, ns: str) -> None:
    server = sync_client.serve_debug()
    assert server.host == "127.0.0.1" and server.port > 0
    with sync_client.lock(ns + "a"):
        pass
    with _OPENER.open(server.url + "/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    assert "etcdlock_lock_wait_seconds" in text
    server.close()
    server.close()
    with pytest.raises(urllib.error.URLError):
        _OPENER.open(server.url + "/metrics", timeout=10)


# ---- SyncLock, reusable like threading.Lock ----


def test_sync_lock_is_reusable_in_turn(sync_client: SyncClient, ns: str) -> None:
    name = ns + "lock"
    lock = sync_client.lock(name, ttl=5, timeout=5)
    tokens: list[int] = []
    for _ in range(3):
        with lock as held:
            assert held is lock and held.held and not held.lost.is_set()
            tokens.append(held.token)
            assert sync_client.get(name, prefix=True).count == 1
        assert not lock.held
        with pytest.raises(LockLost):
            lock.key  # noqa: B018 - the property raises
    assert tokens == sorted(set(tokens)) and len(tokens) == 3

    assert lock.acquire() is True
    with lock:  # takes over the hold acquire() got, and releases it
        assert lock.held
    assert not lock.held
    lock.release()  # idempotent

    with lock:
        with pytest.raises(AlreadyHeldError):
            lock.acquire()  # not reentrant: a clear error, not a deadlock
        with pytest.raises(AlreadyHeldError), lock:
            pytest.fail("entered a lock this thread holds")
        assert lock.held
    assert sync_client.get(name, prefix=True).count == 0

    held = sync_client.try_lock(name)
    assert held is not None and held.held
    with held:  # try_lock's result is usable in `with`
        assert held.held
    assert sync_client.get(name, prefix=True).count == 0


def test_sync_lock_shared_by_threads_excludes_and_both_finish(
    sync_client: SyncClient, ns: str, etcd_endpoints: list[str]
) -> None:
    name, rounds = ns + "lock", 5
    shared = sync_client.lock(name, ttl=5, timeout=30)
    guard = threading.Lock()
    inside: list[str] = []
    most_inside = 0
    finished: dict[str, int] = {}
    errors: list[BaseException] = []

    def hold(tag: str, lock: SyncLock) -> None:
        nonlocal most_inside
        try:
            for i in range(rounds):
                with lock as held:
                    with guard:
                        inside.append(tag)
                        most_inside = max(most_inside, len(inside))
                    # Work on etcd while holding: a second holder would come in meanwhile, if it could.
                    assert held.txn([], [Op.put(ns + "data", f"{tag}{i}")]).succeeded
                    held.ensure_held()
                    with guard:
                        inside.remove(tag)
            finished[tag] = rounds
        except BaseException as e:
            errors.append(e)

    with SyncClient(etcd_endpoints) as other:
        threads = [
            threading.Thread(target=hold, args=("a", shared)),
            threading.Thread(target=hold, args=("b", shared)),  # the same SyncLock object
            threading.Thread(target=hold, args=("c", other.lock(name, ttl=5, timeout=30))),  # another client
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a thread did not finish"
    assert not errors, errors
    assert finished == {"a": rounds, "b": rounds, "c": rounds}
    assert most_inside == 1, "two holders at once"
    assert sync_client.get(name, prefix=True).count == 0


def test_acquire_timeout_false_leaves_nothing(
    sync_client: SyncClient, ns: str, etcd_endpoints: list[str]
) -> None:
    name = ns + "lock"
    with sync_client.lock(ns + "warm-up", ttl=5):
        pass  # the client's default session for ttl=5 now exists; nothing else may be added below
    base_leases = set(sync_client.leases())
    lock = sync_client.lock(name, ttl=5)
    with pytest.raises(ConfigError):
        lock.acquire(timeout=-1)

    with SyncClient(etcd_endpoints) as other:
        holder = other.lock(name)
        assert holder.acquire()
        assert lock.acquire(timeout=0.2) is False
        assert lock.acquire(timeout=0) is False
        assert lock.acquire(timeout=0) is False
        assert sync_client.try_lock(name, ttl=5) is None
        with pytest.raises(LockTimeout), sync_client.lock(name, ttl=5, timeout=0.2):
            pytest.fail("body ran without the lock")
        assert not lock.held and lock.lost_reason is None
        with pytest.raises(LockLost):
            lock.token  # noqa: B018 - the property raises
        assert sync_client.get(name, prefix=True).count == 1, "a waiter that gave up left its key"
        wait_until_sync(
            lambda: set(sync_client.leases()) - base_leases == {holder.lease}, what="no lease left behind"
        )
        holder.release()

    # The SyncLock is as good as new, and one that another thread holds times out without etcd.
    assert lock.acquire(timeout=5)
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(lock.acquire(timeout=0.2)))
    waiter.start()
    waiter.join(10)
    assert results == [False]
    lock.release()
    assert sync_client.get(name, prefix=True).count == 0
