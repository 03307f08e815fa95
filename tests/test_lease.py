"""Leases: grant / revoke / time_to_live / leases, and keepalive over the client's one shared stream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import etcdlock
from etcdlock import Client, KeepAlive, LeaseGrant
from etcdlock.testing import EtcdCluster
from tests.waiting import wait_until

# etcd's minimum TTL is ceil(1.5 * election timeout); the test clusters use 500 ms, so 1 s is allowed.
# TTL 2 is used where time_to_live must report a positive TTL: etcd truncates the remaining seconds,
# so a 1 s lease renewed every 1/3 s always reports 0.
SHORT_TTL = 2


def keepalive_tasks(client: Client) -> list[str]:
    return [t for t in client.resources().tasks if "keepalive" in t]


async def revoke_quietly(client: Client, lease_id: int) -> None:
    """Cleanup: revoke if it still exists."""
    with contextlib.suppress(etcdlock.LeaseNotFoundError):
        await client.revoke(lease_id)


async def grant_short(client: Client) -> tuple[LeaseGrant, float]:
    """Grant a SHORT_TTL lease; returns it and the loop time the grant was sent."""
    sent = asyncio.get_running_loop().time()
    grant = await client.grant(SHORT_TTL)
    assert grant.ttl >= SHORT_TTL, f"etcd granted TTL {grant.ttl} for a request of {SHORT_TTL}"
    return grant, sent


@pytest.fixture
async def other_client(etcd_endpoints: list[str]) -> AsyncIterator[Client]:
    c = Client(etcd_endpoints)
    async with c:
        yield c
    assert c.resources().total() == 0


# ---- plain lease RPCs ------------------------------------------------------------------------


async def test_grant_ttl_leases_revoke(client: Client, ns: str) -> None:
    grant = await client.grant(60)
    assert grant.id > 0
    assert grant.ttl == 60
    assert grant.header.revision > 0
    try:
        await client.put(ns + "a", "1", lease=grant.id)
        await client.put(ns + "b", "2", lease=grant.id)
        await client.put(ns + "free", "3")

        ttl = await client.time_to_live(grant.id)
        assert ttl.id == grant.id
        assert 0 < ttl.ttl <= 60
        assert ttl.granted_ttl == 60
        assert ttl.keys == []  # not asked for

        with_keys = await client.time_to_live(grant.id, keys=True)
        assert sorted(with_keys.keys) == [(ns + "a").encode(), (ns + "b").encode()]

        assert grant.id in await client.leases()
    finally:
        header = await client.revoke(grant.id)
    assert header.revision > 0
    assert grant.id not in await client.leases()
    # Revoking deletes the keys attached to the lease, and only those.
    assert (await client.get(ns + "a")).count == 0
    assert (await client.get(ns + "b")).count == 0
    assert (await client.get(ns + "free")).count == 1


async def test_grant_with_chosen_id(client: Client) -> None:
    wanted = 0x7E57_0000_0000 + (time.monotonic_ns() & 0xFFFF_FFFF)
    grant = await client.grant(30, lease_id=wanted)
    try:
        assert grant.id == wanted
        assert wanted in await client.leases()
        with pytest.raises(etcdlock.EtcdError, match="lease already exists"):
            await client.grant(30, lease_id=wanted)
    finally:
        await client.revoke(wanted)


async def test_revoke_unknown_or_revoked_lease(client: Client) -> None:
    grant = await client.grant(60)
    await client.revoke(grant.id)
    with pytest.raises(etcdlock.LeaseNotFoundError, match="not found") as info:
        await client.revoke(grant.id)
    assert info.value.lease_id == grant.id
    assert f"{grant.id:x}" in str(info.value)

    unknown = 0x0BAD_0000_0000_0001
    with pytest.raises(etcdlock.LeaseNotFoundError) as info2:
        await client.revoke(unknown)
    assert info2.value.lease_id == unknown


async def test_time_to_live_of_revoked_or_unknown_lease(client: Client) -> None:
    grant = await client.grant(60)
    await client.revoke(grant.id)
    gone = await client.time_to_live(grant.id)
    assert gone.ttl == -1
    assert gone.id == grant.id
    gone_keys = await client.time_to_live(grant.id, keys=True)
    assert gone_keys.ttl == -1
    assert gone_keys.keys == []
    assert (await client.time_to_live(0x0BAD_0000_0000_0002)).ttl == -1


async def test_put_with_unknown_lease_fails(client: Client, ns: str) -> None:
    with pytest.raises(etcdlock.LeaseNotFoundError):
        await client.put(ns + "k", "v", lease=0x0BAD_0000_0000_0003)
    assert (await client.get(ns + "k")).count == 0


async def test_lease_expires_without_keepalive(client: Client, ns: str) -> None:
    grant = await client.grant(1)
    assert grant.ttl >= 1
    await client.put(ns + "k", "v", lease=grant.id)

    async def expired() -> bool:
        return (await client.time_to_live(grant.id)).ttl == -1

    await wait_until(expired, timeout=grant.ttl + 3.0, what="the un-renewed lease to expire")
    assert (await client.get(ns + "k")).count == 0


@pytest.mark.parametrize(
    ("ttl", "message"),
    [
        (0, r"lease TTL must be between 1 and \d+ seconds, got 0"),
        (-1, r"lease TTL must be between 1 and \d+ seconds, got -1"),
        (10**12, r"lease TTL must be between 1 and \d+ seconds, got 1000000000000"),
        ("10", r"lease TTL must be a whole number of seconds, not str"),
        (1.5, r"lease TTL must be a whole number of seconds, not float"),
        (True, r"lease TTL must be a whole number of seconds, not bool"),
        (None, r"lease TTL must be a whole number of seconds, not NoneType"),
    ],
)
async def test_grant_bad_ttl(etcd_endpoints: list[str], ttl: Any, message: str) -> None:
    c = Client(etcd_endpoints)
    try:
        with pytest.raises(etcdlock.ConfigError, match=message):
            await c.grant(ttl)
        with pytest.raises(etcdlock.ConfigError, match=message):
            c.keep_alive(1, ttl)
        assert c.resources().channels == 0, "a grant with a bad TTL sent something"
        assert c.resources().keepalive_leases == 0
    finally:
        await c.close()


# ---- keepalive -------------------------------------------------------------------------------


async def test_keepalive_keeps_lease_alive_past_ttl(client: Client, ns: str) -> None:
    loop = asyncio.get_running_loop()
    grant, sent = await grant_short(client)
    await client.put(ns + "k", "v", lease=grant.id)
    handle = client.keep_alive(grant.id, grant.ttl, granted_at=sent)
    try:
        assert isinstance(handle, KeepAlive)
        assert handle.id == grant.id
        assert handle.active
        assert client.resources().keepalive_leases == 1
        # The stream is opened by the keepalive task, just after registration.
        await wait_until(
            lambda: client.resources().keepalive_streams == 1, what="the keepalive stream to open"
        )

        await wait_until(
            lambda: handle.renewals >= 3 and loop.time() - sent > grant.ttl + 0.5,
            timeout=grant.ttl + 5.0,
            what="3 renewals and the TTL to pass",
        )
        ttl = await client.time_to_live(grant.id)
        assert ttl.ttl > 0, f"lease kept alive for {loop.time() - sent:.1f}s reports TTL {ttl.ttl}"
        assert ttl.granted_ttl == grant.ttl
        assert not handle.lost.is_set()
        assert handle.lost_reason is None
        assert handle.active
        assert handle.remaining() > 0
        assert (await client.get(ns + "k")).count == 1
    finally:
        handle.stop()
    # stop() leaves the registry at once; the stream and its tasks go shortly after.
    assert client.resources().keepalive_leases == 0
    assert not handle.active
    await wait_until(lambda: client.resources().keepalive_streams == 0, what="the keepalive stream to close")
    await wait_until(lambda: not keepalive_tasks(client), what="the keepalive tasks to end")
    assert not handle.lost.is_set(), "stop() must not fire lost"
    handle.stop()  # idempotent
    # stop() does not revoke.
    assert (await client.time_to_live(grant.id)).ttl > 0
    await client.revoke(grant.id)


async def test_keepalive_twice_for_same_lease_is_refused(client: Client) -> None:
    grant = await client.grant(30)
    handle = client.keep_alive(grant.id, grant.ttl)
    try:
        with pytest.raises(etcdlock.ConfigError, match="already kept alive"):
            client.keep_alive(grant.id, grant.ttl)
        assert client.resources().keepalive_leases == 1
    finally:
        handle.stop()
        await client.revoke(grant.id)
    await wait_until(lambda: client.resources().keepalive_streams == 0, what="the keepalive stream to close")


async def test_two_leases_share_one_stream(client: Client) -> None:
    g1, sent1 = await grant_short(client)
    g2, sent2 = await grant_short(client)
    h1 = client.keep_alive(g1.id, g1.ttl, granted_at=sent1)
    h2 = client.keep_alive(g2.id, g2.ttl, granted_at=sent2)
    try:
        await wait_until(
            lambda: h1.renewals >= 2 and h2.renewals >= 2, timeout=10.0, what="both leases renewed"
        )
        res = client.resources()
        assert res.keepalive_leases == 2
        assert res.keepalive_streams == 1
        assert len(keepalive_tasks(client)) == 2  # the scheduler and the stream's single reader

        # One leaves: the stream stays for the other.
        h1.stop()
        assert client.resources().keepalive_leases == 1
        renewed = h2.renewals
        await wait_until(lambda: h2.renewals > renewed, timeout=5.0, what="the remaining lease renewed again")
        assert client.resources().keepalive_streams == 1
    finally:
        h1.stop()
        h2.stop()
        await client.revoke(g1.id)
        await client.revoke(g2.id)
    await wait_until(lambda: client.resources().keepalive_streams == 0, what="the keepalive stream to close")
    await wait_until(lambda: not keepalive_tasks(client), what="the keepalive tasks to end")


async def test_revoked_elsewhere_fires_lost(client: Client, other_client: Client, ns: str) -> None:
    grant, sent = await grant_short(client)
    await client.put(ns + "k", "v", lease=grant.id)
    handle = client.keep_alive(grant.id, grant.ttl, granted_at=sent)
    reasons: list[str] = []
    handle.add_lost_callback(reasons.append)
    try:
        await wait_until(lambda: handle.renewals >= 1, timeout=5.0, what="a first renewal")
        assert not handle.lost.is_set()

        await other_client.revoke(grant.id)
        revoked_at = time.monotonic()
        async with asyncio.timeout(grant.ttl + 1.0):
            await handle.lost.wait()
        assert time.monotonic() - revoked_at <= grant.ttl + 1.0

        assert handle.lost_reason is not None
        assert "TTL=0" in handle.lost_reason
        assert "revoked" in handle.lost_reason
        assert reasons == [handle.lost_reason]  # the callback ran exactly once
        assert not handle.active
        assert client.resources().keepalive_leases == 0
        late: list[str] = []
        handle.add_lost_callback(late.append)  # already lost: runs at once
        assert late == [handle.lost_reason]
        assert (await client.get(ns + "k")).count == 0
    finally:
        handle.stop()
    await wait_until(lambda: client.resources().keepalive_streams == 0, what="the keepalive stream to close")
    await wait_until(lambda: not keepalive_tasks(client), what="the keepalive tasks to end")


async def test_lost_by_local_deadline_when_server_is_paused(etcd_fresh: EtcdCluster) -> None:
    member = etcd_fresh.members[0]
    loop = asyncio.get_running_loop()
    c = Client(etcd_fresh.endpoints, timeout=2.0)
    async with c:
        sent = loop.time()
        grant = await c.grant(SHORT_TTL)
        assert grant.ttl >= SHORT_TTL
        handle = c.keep_alive(grant.id, grant.ttl, granted_at=sent)
        lost_at: list[float] = []
        handle.add_lost_callback(lambda _reason: lost_at.append(loop.time()))
        try:
            await wait_until(lambda: handle.renewals >= 2, timeout=5.0, what="two renewals")
            assert not handle.lost.is_set()
            deadline_before_pause = handle.expires_at
            paused_at = loop.time()
            member.pause()
            try:
                await wait_until(
                    handle.lost.is_set,
                    timeout=grant.ttl + 2.0,
                    what="the lease to be lost while etcd is paused",
                )
                assert len(lost_at) == 1
                # Lost no later than the TTL after the last possible renewal (+ slack for scheduling) ...
                assert lost_at[0] <= paused_at + grant.ttl + 0.3, (
                    f"lost {lost_at[0] - paused_at:.2f}s after the pause, TTL {grant.ttl}s"
                )
                # ... and not before the local deadline that was known when the server stopped answering.
                assert lost_at[0] >= deadline_before_pause
                assert handle.lost_reason is not None
                assert "no successful keepalive within the TTL" in handle.lost_reason
                assert c.resources().keepalive_leases == 0
                assert not handle.active
            finally:
                member.resume()
        finally:
            handle.stop()
        await wait_until(lambda: c.resources().keepalive_streams == 0, what="the keepalive stream to close")
        await wait_until(lambda: not keepalive_tasks(c), what="the keepalive tasks to end")
    assert c.resources().total() == 0


async def test_keepalive_stops_on_client_close(etcd_endpoints: list[str], other_client: Client) -> None:
    c = Client(etcd_endpoints)
    async with c:
        grant = await c.grant(30)
        handle = c.keep_alive(grant.id, grant.ttl)
        await wait_until(lambda: c.resources().keepalive_streams == 1, what="the keepalive stream to open")
    assert c.resources().total() == 0
    assert not handle.active
    assert not handle.lost.is_set()  # closing is not losing
    with pytest.raises(etcdlock.ClientClosedError):
        c.keep_alive(grant.id + 1, 30)
    # close() does not revoke: the lease is still there until its owner revokes it.
    assert (await other_client.time_to_live(grant.id)).ttl > 0
    await other_client.revoke(grant.id)


# ---- scale: 1,000 leases on one stream -------------------------------------------------------


async def test_thousand_leases_one_stream_then_revoked(client: Client) -> None:
    n, batch, ttl = 1000, 100, 6
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    baseline = set(await client.leases())
    handles: list[KeepAlive] = []
    ids: list[int] = []
    try:
        for _ in range(n // batch):
            sent = loop.time()
            grants = await asyncio.gather(*(client.grant(ttl) for _ in range(batch)))
            for g in grants:
                ids.append(g.id)
                handles.append(client.keep_alive(g.id, g.ttl, granted_at=sent))
        assert len(set(ids)) == n
        assert not set(ids) & baseline
        assert client.resources().keepalive_leases == n
        await wait_until(
            lambda: client.resources().keepalive_streams == 1, what="the keepalive stream to open"
        )

        await wait_until(
            lambda: all(h.renewals >= 1 for h in handles),
            timeout=ttl + 5.0,
            what="every one of the 1000 leases renewed at least once",
        )
        assert client.resources().keepalive_streams == 1
        assert not [h for h in handles if h.lost.is_set()], "a kept-alive lease was lost"
        assert set(ids) <= set(await client.leases())
        assert (await client.time_to_live(ids[0])).ttl > 0
    finally:
        for h in handles:
            h.stop()
        for i in range(0, len(ids), batch):
            await asyncio.gather(*(revoke_quietly(client, x) for x in ids[i : i + batch]))

    assert client.resources().keepalive_leases == 0
    await wait_until(lambda: client.resources().keepalive_streams == 0, what="the keepalive stream to close")
    await wait_until(lambda: client.resources().tasks == [], what="every client task to end")
    after = set(await client.leases())
    assert not after & set(ids), f"{len(after & set(ids))} of our leases are still on the server"
    # Back to the baseline: nothing new; a baseline lease may only be missing if it expired meanwhile.
    expired = {x for x in baseline - after if (await client.time_to_live(x)).ttl == -1}
    assert after == baseline - expired
    assert not [h for h in handles if h.lost.is_set()], "stop() must not fire lost"
    elapsed = time.monotonic() - start
    assert elapsed < 20.0, f"1000 leases took {elapsed:.1f}s"


async def test_keepalive_of_unknown_lease_is_lost_at_once(client: Client) -> None:
    unknown = 0x0BAD_0000_0000_0004
    handle = client.keep_alive(unknown, 30)
    try:
        async with asyncio.timeout(3.0):
            await handle.lost.wait()
        assert handle.lost_reason is not None
        assert "TTL=0" in handle.lost_reason
        assert handle.renewals == 0
        assert client.resources().keepalive_leases == 0
    finally:
        handle.stop()
    await wait_until(lambda: client.resources().keepalive_streams == 0, what="the keepalive stream to close")
