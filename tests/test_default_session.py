"""The lock users call first, `client.lock(name)` with no session: the client's own default session.

One lease for all of a client's locks (a cycle is two RPCs), a second session only while two locks of one
name are held or awaited at once in this process (each lock its own key and token, FIFO in etcd), a lost
session replaced by a new one, and etcd's "too many requests" retried rather than leaving keys behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

from etcdlock import Client, LockLost
from etcdlock._recipes.lock import Lock
from tests.test_lock import (
    MAX_ITERATIONS,
    acquired,
    assert_clean,
    baseline,
    cancel_at,
    is_waiting,
    keys_under,
    report,
    second_client,
)
from tests.waiting import wait_until


async def test_locks_of_a_client_share_one_lease_and_a_cycle_is_two_rpcs(client: Client, ns: str) -> None:
    base = await baseline(client)
    leases = set()
    for i in range(5):
        async with client.lock(f"{ns}n{i}", timeout=5) as held:
            leases.add(held.lease)
    assert len(leases) == 1, "every lock of the client hangs on its one default session"
    granted = client._recipes.sessions.started
    async with client.lock(ns + "n0", timeout=5):
        pass
    assert client._recipes.sessions.started == granted, "no new lease for a lock on a known TTL"
    await assert_clean(client, ns, base)


async def test_an_uncontended_cycle_on_the_default_session_is_two_rpcs(
    counting: _Counting, etcd_endpoints: list[str], ns: str
) -> None:
    async with Client(etcd_endpoints) as c:
        async with c.lock(ns + "warm", timeout=5):  # the session and the name's watcher exist after this
            pass
        counting.calls.clear()
        async with c.lock(ns + "warm", timeout=5):
            pass
        # The quorum read of a keepalive round may fall in the cycle; it is no part of the lock.
        lock_calls = [m for m in counting.calls if m != "/etcdserverpb.KV/Range"]
        assert lock_calls == ["/etcdserverpb.KV/Txn", "/etcdserverpb.KV/Txn"], counting.calls


async def test_two_tasks_of_one_process_on_one_name_exclude_each_other_and_both_finish(
    client: Client, ns: str
) -> None:
    base = await baseline(client)
    name = ns + "twice"
    inside: list[int] = []
    overlaps = 0
    tokens: list[int] = []

    async def worker(i: int) -> None:
        nonlocal overlaps
        for _ in range(10):
            async with client.lock(name, timeout=10) as held:
                overlaps += bool(inside)
                inside.append(i)
                tokens.append(held.token)
                await asyncio.sleep(0)  # let the other task run while this one holds the lock
                inside.remove(i)

    await asyncio.wait_for(asyncio.gather(worker(0), worker(1)), 30)
    assert overlaps == 0
    assert len(tokens) == 20 and tokens == sorted(tokens) and len(set(tokens)) == 20
    await assert_clean(client, ns, base)
    # The second session was only needed while both wanted the name: it goes once idle.
    await wait_until(
        lambda: len(client._recipes.sessions.sessions()) == 1, timeout=5, what="one default session"
    )


async def test_cancel_a_second_lock_of_a_held_name_at_every_point(client: Client, ns: str) -> None:
    """The second lock of a name this client holds needs a session of its own (started on the way):
    cancelled at every await point, it leaves no key, and its session goes once idle."""
    name = ns + "second"
    holder = await acquired(client.lock(name, timeout=5))
    queue = client._recipes.queues.names[name]
    failures: dict[str, list[str]] = {}
    trials = 0
    try:
        parked_at: int | None = None
        for k in range(MAX_ITERATIONS):
            trials += 1
            lock = client.lock(name, timeout=None)
            out = await cancel_at(lock.acquire(), k, probe=lambda lk=lock: is_waiting(lk))
            assert not out.done_before_cancel and out.cancelled, f"step {k}: {out.error!r}"
            keys = await keys_under(client, ns)
            if keys != {holder.key: holder.token} or len(queue.interests) != 1:
                failures[repr(k)] = [f"keys {sorted(keys)}, {len(queue.interests)} interests in the name"]
            if out.reached and parked_at is None:
                parked_at = k
            if parked_at is not None and k >= parked_at + 3:
                break
        assert parked_at is not None, "the second lock never queued"
        assert holder.held and not holder.lost.is_set()
    finally:
        await holder.release()
    assert not failures, report(failures, trials)
    # Every extra session went once idle: one lease left, the client's first default session.
    await wait_until(
        lambda: len(client._recipes.sessions.sessions()) == 1, timeout=5, what="one default session"
    )
    (first,) = client._recipes.sessions.sessions()
    await wait_until(lambda: client.resources().keepalive_leases == 1, timeout=5, what="one lease kept")
    assert first.lease_id == holder_lease(holder)


async def test_a_revoked_default_session_loses_every_lock_on_it_and_the_next_lock_gets_a_new_one(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    async with second_client(etcd_endpoints) as other:
        a = await acquired(client.lock(ns + "a", timeout=5))
        b = await acquired(client.lock(ns + "b", timeout=5))
        lost_lease = a.lease
        assert b.lease == lost_lease
        await other.revoke(lost_lease)
        await asyncio.wait_for(asyncio.gather(a.lost.wait(), b.lost.wait()), 5)
        with pytest.raises(LockLost):
            await a.ensure_held()
        await a.release()
        await b.release()
        # The client heals itself: the lost session is never used again.
        async with client.lock(ns + "c", timeout=5) as c:
            assert c.lease != lost_lease
            await c.ensure_held()
        assert lost_lease not in {s.lease_id for s in client._recipes.sessions.sessions()}
    await assert_clean(client, ns, base)


def holder_lease(lock: Lock) -> int:
    mutex = lock._last
    assert mutex is not None
    return mutex.session.lease_id


# ---- etcd's admission control: "too many requests" ----


class _RefuseFirst(grpc.aio.UnaryUnaryClientInterceptor):
    """Answers the first `n` calls of `method` with etcd's "too many requests" without sending them (as
    etcd does: it refuses before proposing, so nothing is applied)."""

    def __init__(self, method: str, n: int) -> None:
        self.method, self.left, self.refused = method, n, 0

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        if method == self.method and self.left > 0:
            self.left -= 1
            self.refused += 1
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="etcdserver: too many requests",
            )
        return await continuation(details, request)


class _Counting(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        self.calls.append(method)
        return await continuation(details, request)


@pytest.fixture
def counting(refusing: list[grpc.aio.UnaryUnaryClientInterceptor]) -> _Counting:
    counter = _Counting()
    refusing.append(counter)
    return counter


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[grpc.aio.UnaryUnaryClientInterceptor]]:
    """Channels made while this is active carry the interceptors put in the returned list."""
    interceptors: list[grpc.aio.UnaryUnaryClientInterceptor] = []
    real = grpc.aio.insecure_channel

    def channel(target: str, options: Any = None, **kwargs: Any) -> grpc.aio.Channel:
        return real(target, options=options, interceptors=interceptors, **kwargs)

    monkeypatch.setattr(grpc.aio, "insecure_channel", channel)
    yield interceptors


@pytest.mark.parametrize(
    "method", ["/etcdserverpb.KV/Txn", "/etcdserverpb.Lease/LeaseRevoke", "/etcdserverpb.Lease/LeaseGrant"]
)
async def test_requests_refused_with_too_many_requests_are_retried_and_leave_nothing(
    refusing: list[grpc.aio.UnaryUnaryClientInterceptor], etcd_endpoints: list[str], ns: str, method: str
) -> None:
    refuse = _RefuseFirst(method, 3)
    refusing.append(refuse)
    async with Client(etcd_endpoints, timeout=5) as c:
        before = set(await c.leases())
        async with c.lock(ns + "busy", timeout=10) as held:
            await held.ensure_held()
            lease = held.lease
        assert await keys_under(c, ns) == {}
    assert refuse.refused == 3
    assert c._requests_throttled == 3  # (the revoke happens as the client closes)
    async with Client(etcd_endpoints) as check:
        assert lease not in await check.leases(), "the default session's lease was not revoked at close"
        assert set(await check.leases()) <= before
        assert await keys_under(check, ns) == {}
