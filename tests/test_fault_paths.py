"""The client's own answers to faults, each on a real 3-member cluster behind FaultProxy:

* a member that stops answering (black hole: no error, just silence) is left within about a second:
  the keepalive notices unanswered renewals, the watch streams on that member follow, and a held lock
  survives a cut shorter than its TTL;
* a lease grant whose reply is lost is revoked by the ID we chose, not left for its TTL;
* a process frozen past its TTL learns it lost the lock at its next ensure_held(), before anything else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from etcdlock import Client, ConfigError, ConnectionFailedError, EtcdTimeoutError, LockLost
from etcdlock._core.tasks import backoff
from etcdlock.testing import EtcdCluster, FaultProxy
from tests.test_lock import acquired
from tests.waiting import wait_until


@pytest.fixture
def proxies(etcd_cluster3: EtcdCluster) -> Iterator[list[FaultProxy]]:
    etcd_cluster3.wait_healthy(timeout=20)
    ps = [FaultProxy(m.endpoint).start() for m in etcd_cluster3.members]
    try:
        yield ps
    finally:
        for p in ps:
            p.close()


async def test_a_black_holed_member_is_left_and_a_held_lock_survives(
    etcd_cluster3: EtcdCluster, proxies: list[FaultProxy], ns: str
) -> None:
    ttl = 5
    endpoints = [p.endpoint for p in proxies]
    async with Client(endpoints, timeout=2) as holder, Client(endpoints, timeout=2) as waiter:
        name = ns + "cut"
        async with holder.lock(name, ttl=ttl, timeout=5) as held:
            token = held.token
            assert holder.current_endpoint == endpoints[0]
            waiting = asyncio.ensure_future(acquired(waiter.lock(name, ttl=ttl, timeout=30)))
            await wait_until(
                lambda: len(etcd_keys(etcd_cluster3, name)) == 2, timeout=10, what="the waiter to queue"
            )
            cut_at = time.monotonic()
            proxies[0].blackhole()  # both clients' member goes silent
            # The holder's renewals go unanswered; it moves to another member and renews there.
            await wait_until(
                lambda: holder.current_endpoint != endpoints[0], timeout=ttl, what="the holder to move on"
            )
            moved_after = time.monotonic() - cut_at
            keeper = held.contender.session.keeper
            renewals = keeper.renewals
            await wait_until(lambda: keeper.renewals > renewals, timeout=ttl, what="a renewal elsewhere")
            assert not held.lost.is_set(), held.lost_reason
            await held.ensure_held()
        # Released through another member; the waiter's watch must have followed its client off the
        # silent member to see the deletion.
        lock = await asyncio.wait_for(waiting, 20)
        try:
            assert lock.held and lock.token > token
        finally:
            await lock.release()
        assert moved_after < ttl, f"took {moved_after:.1f}s to leave the silent member"
        proxies[0].pass_through()
    assert not etcd_keys(etcd_cluster3, name)


def etcd_keys(cluster: EtcdCluster, prefix: str) -> list[str]:
    import subprocess

    from etcdlock.testing import find_etcdctl_binary

    out = subprocess.run(
        [
            find_etcdctl_binary(),
            f"--endpoints={','.join(cluster.endpoints)}",
            "get",
            "--prefix",
            "--keys-only",
            prefix,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


async def test_a_grant_whose_reply_is_lost_is_revoked_not_left_for_its_ttl(
    etcd_cluster3: EtcdCluster, proxies: list[FaultProxy], ns: str
) -> None:
    ttl = 60  # far longer than the test: only a revoke can remove the lease in time
    async with Client(etcd_cluster3.endpoints) as direct:
        before = set(await direct.leases())
        async with Client([proxies[0].endpoint], timeout=1) as c:
            await c.get(ns + "warm")  # connected before the delay starts
            proxies[0].delay(0.7)  # every reply arrives after the 1 s call timeout; requests still land
            with pytest.raises((EtcdTimeoutError, ConnectionFailedError)):
                await c.lock(ns + "slow", ttl=ttl).acquire()

            async def granted_then_gone() -> bool:
                return set(await direct.leases()) == before

            # The grant went through on the server (its reply came too late); the lease must go again,
            # by the client revoking the ID it chose, well before its 60 s TTL.
            await wait_until(granted_then_gone, timeout=15, what="the unconfirmed lease to be revoked")
            proxies[0].pass_through()
        assert c.resources().total() == 0


async def test_a_process_frozen_past_its_ttl_learns_it_lost_the_lock_before_doing_more(
    etcd: EtcdCluster, ns: str
) -> None:
    """The event loop is blocked past the TTL (as if SIGSTOPped: no timer can run). The first thing the
    holder does afterwards is ensure_held(), and that must already say LockLost: the deadline is read from
    the clock at that moment, not left to a timer that has not had its turn yet."""
    ttl = 2
    async with Client(etcd.endpoints) as c:
        async with c.lock(ns + "frozen", ttl=ttl, timeout=5) as held:
            await held.ensure_held()
            keeper = held.contender.session.keeper
            assert keeper.remaining() > 0
            time.sleep(ttl + 0.2)  # noqa: ASYNC251 - the fault itself: the process stands still past the TTL
            with pytest.raises(LockLost, match="no successful keepalive within the TTL"):
                await held.ensure_held()
            assert held.lost.is_set() and not held.held
        assert c.resources().keepalive_leases == 0


def test_backoff_is_bounded_however_many_failures() -> None:
    assert backoff(0) == 0.05
    assert backoff(3) == 0.4
    assert backoff(5000) == 1.0  # 2**5000 as a float would overflow


async def test_a_watch_alone_leaves_a_silent_member_and_misses_nothing(
    etcd_cluster3: EtcdCluster, proxies: list[FaultProxy], ns: str
) -> None:
    """No lease, no other calls: only the watch stream itself can notice that its member went silent. It
    asks for a progress report when idle; unanswered, it resumes on another member from its next revision,
    so what was written during the silence is delivered, once."""
    async with (
        Client([p.endpoint for p in proxies], timeout=2) as c,
        Client(etcd_cluster3.endpoints) as writer,
    ):
        key = ns + "silent"
        w = c.watch(key)
        async with w:
            await w.wait_created()
            await writer.put(key, "before")
            assert (await asyncio.wait_for(w.next_event(), 5)).kv.value == b"before"
            proxies[0].blackhole()
            await writer.put(key, "during")  # written while the watch's member is cut off
            event = await asyncio.wait_for(w.next_event(), 30)
            assert event.kv.value == b"during"
            assert c.current_endpoint != proxies[0].endpoint
            await writer.put(key, "after")
            assert (await asyncio.wait_for(w.next_event(), 5)).kv.value == b"after"
        proxies[0].pass_through()
    assert c.resources().total() == 0


async def test_a_silent_member_does_not_use_up_a_read_s_timeout(proxies: list[FaultProxy], ns: str) -> None:
    """Reads give each endpoint a share of the timeout: when the member in use goes silent (an established
    connection, so gRPC reports nothing), a read still succeeds within its timeout, through the next one."""
    async with Client([p.endpoint for p in proxies], timeout=3) as c:
        await c.put(ns + "k", "v")
        proxies[0].blackhole()
        try:
            started = time.monotonic()
            r = await c.get(ns + "k")
            assert [kv.value for kv in r.kvs] == [b"v"]
            assert c.current_endpoint != proxies[0].endpoint
            assert time.monotonic() - started < 3
        finally:
            proxies[0].pass_through()


async def test_a_waiter_cut_off_past_its_lease_fails_at_its_local_deadline_not_after_cleanup(
    etcd_cluster3: EtcdCluster, proxies: list[FaultProxy], ns: str
) -> None:
    """The waiter's cleanup cannot reach etcd (black hole); LockLost must still come at the lease's local
    deadline, with the cleanup going on in the background (its 5 s deadline would come much later)."""
    ttl = 3
    name = ns + "deadline"
    async with Client(etcd_cluster3.endpoints) as holder_client, Client([proxies[0].endpoint]) as c:
        holder = await acquired(holder_client.lock(name, ttl=30))
        try:
            waiting = asyncio.ensure_future(acquired(c.lock(name, ttl=ttl, timeout=60)))
            await wait_until(lambda: len(etcd_keys(etcd_cluster3, name)) == 2, timeout=10, what="the queue")
            keepalive = c._lease.keepalive  # the waiter's one lease
            (lease_id,) = keepalive.lease_ids()
            keeper = keepalive._registry[lease_id]
            proxies[0].blackhole()
            loop = asyncio.get_running_loop()
            with pytest.raises(LockLost):
                await asyncio.wait_for(waiting, ttl + 5)
            raised_at = loop.time()
            # The local deadline (margin included) had passed, and LockLost came right at it: well before
            # a cleanup that waits for the network could have ended.
            assert keeper.lost.is_set()
            assert raised_at - keeper.expires_at < 1.0, f"{raised_at - keeper.expires_at:.2f}s late"
        finally:
            proxies[0].pass_through()
            await holder.release()
    assert c.resources().total() == 0
    await wait_until(lambda: not etcd_keys(etcd_cluster3, name), timeout=ttl + 5, what="no key left")


async def test_the_lease_margin_fires_lost_before_etcd_may_expire_the_lease(
    etcd_cluster3: EtcdCluster, proxies: list[FaultProxy], ns: str
) -> None:
    ttl, margin = 4, 1.5
    async with Client([proxies[0].endpoint], lease_margin=margin) as c:
        async with c.lock(ns + "margin", ttl=ttl, timeout=10) as held:
            keeper = held.contender.session.keeper
            assert keeper.margin == margin and keeper.interval == pytest.approx((ttl - margin) / 3)
            renewals = keeper.renewals
            await wait_until(lambda: keeper.renewals > renewals, timeout=ttl, what="a renewal")
            proxies[0].blackhole()  # no renewal gets through any more
            await asyncio.wait_for(held.lost.wait(), ttl + 2)
            fired = asyncio.get_running_loop().time()
            # expires_at = last successful renewal's send time + TTL - margin: etcd keeps the lease until
            # at least expires_at + margin, and the loss was declared before that.
            assert keeper.expires_at <= fired < keeper.expires_at + margin
        proxies[0].pass_through()
    with pytest.raises(ConfigError):
        Client(lease_margin=-1)
    with pytest.raises(ConfigError):
        Client(lease_margin=float("nan"))
    with pytest.raises(ConfigError):
        Client(lease_margin=True)


async def test_a_held_lock_survives_a_restart_of_its_only_member(etcd_fresh: EtcdCluster, ns: str) -> None:
    """Reconnecting after the member comes back is prompt (gRPC's reconnect backoff is bounded), so the
    renewals resume well inside the lease's TTL and the lock is not lost."""
    ttl = 5
    async with (
        Client(etcd_fresh.endpoints, timeout=2) as c,
        c.lock(ns + "restart", ttl=ttl, timeout=10) as held,
    ):
        keeper = held.contender.session.keeper
        renewals = keeper.renewals
        await wait_until(lambda: keeper.renewals > renewals, timeout=ttl, what="a renewal")
        # In a thread: the client's loop must keep running (and failing to renew) while etcd is down.
        await asyncio.to_thread(etcd_fresh.members[0].stop)
        renewals = keeper.renewals
        await asyncio.to_thread(etcd_fresh.members[0].start)
        await wait_until(lambda: keeper.renewals > renewals, timeout=ttl, what="a renewal after the restart")
        assert not held.lost.is_set(), held.lost_reason
        await held.ensure_held()
