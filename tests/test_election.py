"""Acceptance tests of the election recipe (`client.election`: campaign, proclaim, resign, leader, observe)
on real etcd.

Campaigning is the lock's queue with a value (contender.py), so these tests look at what is the election's
own: leading and handing over, the proposal as the key's value, proclaim guarded by our key, leader(), and
observe(), which must follow the leader without a repeat or a gap through compaction and failover. Tests
end with `assert_clean` (tests/test_lock.py): no key, lease, watcher or task survives what they did. Nothing
sleeps to synchronize: tests wait on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from etcdlock import (
    AlreadyHeldError,
    Client,
    ConfigError,
    Election,
    Leader,
    LockError,
    LockLost,
    LockTimeout,
    NotAcquiredError,
    Op,
    Term,
)
from etcdlock._core.watch import STREAM_KEY
from etcdlock.testing import EtcdCluster, EtcdMember, FaultProxy
from tests.holdables import contender_of, is_waiting
from tests.test_lock import (
    assert_clean,
    baseline,
    cancel_at,
    create_revision,
    default_session_leases,
    keys_under,
    second_client,
)
from tests.test_lock_gaps import compact_past, hold_back_new_watchers, restart_compacted
from tests.waiting import wait_until

# A leader's identity as observe() reports it: a new key, a new term of the same key, or a new value.
Identity = tuple[str, int, bytes]


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


async def leading(term: Term) -> Term:
    """`term`, leading (for tests where it must): fails the test if its timeout passed first."""
    if not await term.acquire():
        raise AssertionError(f"campaign in {term.name!r} did not lead within its timeout")
    return term


def identity(leader: Leader) -> Identity:
    return (leader.key, leader.token, leader.value)


def term_identity(term: Term) -> Identity:
    return (term.key, term.token, term.value)


async def candidates(client: Client, name: str) -> list[str]:
    """The candidates' keys under NAME/, oldest (the leader) first."""
    r = await client.get(name + "/", prefix=True, sort_target="create", sort_order="ascend")
    return [kv.key.decode() for kv in r.kvs]


class Observer:
    """`election.observe()` consumed by a task of its own; `expect()` checks what it yields, one by one."""

    def __init__(self, election: Election) -> None:
        self.seen: list[Leader] = []
        self._read = 0
        self._task = asyncio.create_task(self._run(election), name="test:observer")

    async def _run(self, election: Election) -> None:
        async for leader in election.observe():
            self.seen.append(leader)

    async def next(self, timeout: float = 10.0) -> Leader:
        """The next leader yielded (waits for it)."""
        await wait_until(
            lambda: len(self.seen) > self._read or self._task.done(),
            timeout,
            f"observation #{self._read + 1}",
        )
        if len(self.seen) <= self._read:
            self._task.result()  # the observation ended: its error says why
            pytest.fail("observe() ended by itself")
        self._read += 1
        return self.seen[self._read - 1]

    async def expect(self, term: Term, timeout: float = 10.0) -> Leader:
        """The next leader yielded is `term` with its current value (and nothing came in between)."""
        got = await self.next(timeout)
        assert identity(got) == term_identity(term), (
            f"observation #{self._read}: {identity(got)}, expected {term_identity(term)}; so far "
            f"{[identity(s) for s in self.seen]}"
        )
        return got

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@contextlib.asynccontextmanager
async def observing(election: Election) -> AsyncIterator[Observer]:
    obs = Observer(election)
    try:
        yield obs
    finally:
        await obs.stop()


async def led_at(term: Term) -> float:
    """Campaign until `term` leads; the monotonic time it did."""
    await leading(term)
    return time.monotonic()


# ---------------------------------------------------------------------------------------------------------
# Campaign, hand-over, tokens
# ---------------------------------------------------------------------------------------------------------


async def test_campaign_leads_a_second_candidate_waits_and_is_woken_by_the_resignation(
    client: Client, ns: str
) -> None:
    base = await baseline(client)
    name = ns + "basic"
    election = client.election(name)
    second = election.campaign("node-2", timeout=30)
    task: asyncio.Task[float] | None = None
    try:
        async with election.campaign("node-1", timeout=5) as first:
            assert first.held and first.value == b"node-1"
            assert first.key == f"{name}/{first.lease:x}", "not Go's key: NAME/<lease hex>"
            assert first.token == await create_revision(client, first.key)
            [kv] = (await client.get(first.key)).kvs
            assert kv.value == b"node-1" and kv.lease == first.lease
            assert first.lease in default_session_leases(client)

            task = asyncio.create_task(led_at(second), name="test:second-candidate")
            await wait_until(lambda: is_waiting(second), 5, "the second candidate parked")
            assert await candidates(client, name) == [first.key, contender_of(second).key.decode()]
            assert not task.done() and contender_of(second).wakeups == 0
            assert first.held and not first.lost.is_set()
            queue = client._recipes.queues.names[name]
            events_before = queue.events
            leader = await election.leader()
            assert leader is not None and identity(leader) == term_identity(first)
            resigning_at = time.monotonic()
        # Leaving the block resigned: the deletion of our key is what lets the second candidate in.
        took = (await asyncio.wait_for(task, 10) - resigning_at) * 1000
        # Informative only (no assertion on speed: the machine is shared).
        print(f"\nelection hand-over (resign -> next leader, same client): {took:.1f} ms")
        assert not first.held
        assert contender_of(second).wakeups == 1, "the new leader was not woken (exactly once) by the queue"
        assert queue.events == events_before + 1, "one deletion, one wake-up"
        assert second.token > kv.create_revision
        assert second.token == await create_revision(client, second.key)
        assert await candidates(client, name) == [second.key]
        leader = await election.leader()
        assert leader is not None and leader.proposal == "node-2" and leader.token == second.token
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await second.resign()
    assert await election.leader() is None
    await assert_clean(client, ns, base)


async def test_tokens_increase_with_each_new_leader(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "tokens"
    tokens: list[int] = []
    async with second_client(etcd_endpoints) as other:
        reused = client.election(name).campaign("again", timeout=5)
        for i in range(6):
            # Leaders from two clients in turn, and one Term object campaigning again and again.
            term = reused if i % 3 == 0 else (client if i % 2 else other).election(name).campaign(f"n{i}")
            async with term:
                assert term.token == await create_revision(client, term.key)
                leader = await client.election(name).leader()
                assert leader is not None and leader.token == term.token and leader.key == term.key
                tokens.append(term.token)
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), f"tokens not increasing: {tokens}"
    await assert_clean(client, ns, base)


async def test_resign_is_idempotent_and_a_term_campaigns_again_with_its_last_value(
    client: Client, ns: str
) -> None:
    base = await baseline(client)
    name = ns + "again"
    election = client.election(name)
    term = await leading(election.campaign("first", timeout=5))
    first_token = term.token
    await term.proclaim("proclaimed")
    await term.resign()
    await term.resign()
    assert not term.held and await election.leader() is None
    with pytest.raises(NotAcquiredError):
        term.token  # noqa: B018  (no term, no token)
    async with term:
        leader = await election.leader()
        assert leader is not None and leader.value == b"proclaimed" and leader.token > first_token
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# leader() and proclaim()
# ---------------------------------------------------------------------------------------------------------


async def test_leader_is_none_without_candidates_and_ignores_nested_names(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "who"
    election = client.election(name)
    assert await election.leader() is None
    async with client.election(name + "/nested").campaign("not-a-candidate-of-ours", timeout=5) as nested:
        assert await election.leader() is None, "a nested election's candidate taken for ours"
        async with election.campaign(b"\xffbytes", timeout=5) as term:
            leader = await election.leader()
            assert leader is not None
            assert leader.name == name
            assert leader.key == term.key and leader.token == term.token and leader.lease == term.lease
            assert leader.value == b"\xffbytes" and leader.proposal == "\ufffdbytes"
            assert leader.revision >= term.token
            nested_leader = await client.election(name + "/nested").leader()
            assert nested_leader is not None and nested_leader.key == nested.key
    assert await election.leader() is None
    await assert_clean(client, ns, base)


async def test_leader_pages_past_many_nested_candidates(client: Client, ns: str) -> None:
    """leader() reads 16 candidates a page: keys of nested names created first must not hide ours."""
    base = await baseline(client)
    name = ns + "paged"
    for i in range(40):
        await client.put(f"{name}/sub{i}/{i:x}", "nested")
    async with client.election(name).campaign("me", timeout=5) as term:
        leader = await client.election(name).leader()
        assert leader is not None and identity(leader) == term_identity(term)
    await client.delete(name + "/", prefix=True)
    await assert_clean(client, ns, base)


async def test_proclaim_changes_the_value_leader_returns(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "proclaim"
    election = client.election(name)
    async with election.campaign("v1", timeout=5) as term:
        created = await create_revision(client, term.key)
        await term.proclaim("v2")
        leader = await election.leader()
        assert leader is not None and leader.value == b"v2" and term.value == b"v2"
        assert leader.token == term.token == created, "a proclaim is not a new term"
        await term.proclaim(b"\x00raw")
        leader = await election.leader()
        assert leader is not None and leader.value == b"\x00raw"
        [kv] = (await client.get(term.key)).kvs
        assert kv.lease == term.lease, "the proclaimed value left our lease"
        with pytest.raises(ConfigError):
            await term.proclaim(42)  # type: ignore[arg-type]
        leader = await election.leader()
        assert leader is not None and leader.value == b"\x00raw", "a refused value was written"
    with pytest.raises(NotAcquiredError):
        await term.proclaim("after resigning")
    assert await keys_under(client, ns) == {}
    await assert_clean(client, ns, base)


@pytest.mark.parametrize("how", ["deleted-unseen", "deleted", "revoked"])
async def test_proclaim_by_a_deposed_leader_raises_lock_lost_and_writes_nothing(
    client: Client, ns: str, etcd_endpoints: list[str], how: str
) -> None:
    """deleted-unseen: our key is deleted and the loss has not reached us yet (as for a paused process):
    the proclaim's own guard (our create revision) must refuse it in etcd."""
    base = await baseline(client)
    name = ns + "deposed"
    async with second_client(etcd_endpoints) as other:
        old = await leading(client.election(name).campaign("old", timeout=5))
        new = other.election(name).campaign("new", timeout=10)
        task = asyncio.create_task(leading(new))
        try:
            await wait_until(lambda: is_waiting(new), 5, "the next candidate parked")
            if how == "deleted-unseen":
                interest = contender_of(old)._interest
                assert interest is not None
                interest.on_own_deleted = lambda _revision: None  # the deletion never reaches us
            if how == "revoked":
                await other.revoke(old.lease)
            else:
                assert (await other.delete(old.key)).deleted == 1
            await asyncio.wait_for(task, 5)
            if how != "deleted-unseen":
                await asyncio.wait_for(old.lost.wait(), 5)
            else:
                assert not old.lost.is_set(), "the test meant to proclaim before the loss was known"
            with pytest.raises(LockLost):
                await old.proclaim("stale")
            assert old.lost.is_set() and old.lost_reason is not None
            leader = await client.election(name).leader()
            assert leader is not None and leader.value == b"new" and leader.token == new.token
            assert await candidates(client, name) == [new.key], "the deposed leader wrote its key back"
            with pytest.raises(LockLost):
                await old.ensure_held()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await old.resign()
            await new.resign()
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# Loss, timeout, cancellation, sessions
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "revoked"])
async def test_lost_fires_and_ensure_held_raises_after_the_loss(
    client: Client, ns: str, etcd_endpoints: list[str], how: str
) -> None:
    base = await baseline(client)
    name = ns + "lost"
    term = client.election(name).campaign("me", timeout=5)
    async with second_client(etcd_endpoints) as other, term:
        await term.ensure_held()
        if how == "revoked":
            await other.revoke(term.lease)
        else:
            await other.delete(term.key)
        await asyncio.wait_for(term.lost.wait(), 5)
        assert term.lost_reason is not None and not term.held
        assert term.key in term.lost_reason or f"{term.lease:x}" in term.lost_reason, term.lost_reason
        with pytest.raises(LockLost):
            await term.ensure_held()
        assert not (await client.txn([term.is_owner()], [])).succeeded
    await assert_clean(client, ns, base)


async def test_timeout_raises_or_returns_false_and_leaves_no_key(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "timeout"
    election = client.election(name)
    async with election.campaign("leader", timeout=5) as leader:
        body_ran = False
        t0 = time.monotonic()
        with pytest.raises(LockTimeout) as ei:
            async with election.campaign("late", timeout=0.3):
                body_ran = True
        assert not body_ran, "the body ran without leading"
        assert 0.3 <= time.monotonic() - t0 < 2.0
        assert isinstance(ei.value, LockError) and name in str(ei.value)
        assert await candidates(client, name) == [leader.key], "the timed-out candidacy left its key"

        late = election.campaign("late")
        assert await late.acquire(timeout=0.3) is False
        assert await late.acquire(timeout=0) is False
        assert not late.held
        assert await candidates(client, name) == [leader.key]
        assert leader.held and not leader.lost.is_set()
    await assert_clean(client, ns, base)


async def test_cancelling_a_waiting_campaign_leaves_no_key(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    name = ns + "cancel"
    async with second_client(etcd_endpoints) as other:
        async with other.election(name).campaign("leader", timeout=5) as leader:
            base = await baseline(client)
            parked = 0
            # Cancelled at a range of points of its way in: before its key exists, while it is created,
            # once parked on the queue.
            for step in [*range(0, 40, 3), 0.05, 0.2]:
                term = client.election(name).campaign("waiter")
                out = await cancel_at(term.acquire(), step, probe=functools.partial(is_waiting, term))
                assert not out.done_before_cancel and out.cancelled, f"step {step!r}: {out}"
                parked += out.reached
                assert not term.held
                assert await candidates(client, name) == [leader.key], f"step {step!r}: a key was left"
            assert parked, "no cancellation landed while the campaign was parked"
            assert leader.held and not leader.lost.is_set()
        await assert_clean(client, ns, base)


async def test_campaign_on_an_explicit_session_and_on_the_default_one(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "sessions"
    election = client.election(name)
    async with client.session(10) as s:
        async with election.campaign("explicit", session=s, timeout=5) as term:
            assert term.lease == s.lease_id and term.key == f"{name}/{s.lease_id:x}"
            assert term.lease not in default_session_leases(client)
            with pytest.raises(AlreadyHeldError):
                # One candidacy per name and session: Go's key is NAME/<lease>.
                async with election.campaign("twice", session=s, timeout=1):
                    pytest.fail("a second candidacy on the same session ran")
            # A candidate on the default session waits behind the explicit one.
            default = election.campaign("default", timeout=10)
            task = asyncio.create_task(leading(default))
            await wait_until(lambda: is_waiting(default), 5, "the default-session candidate parked")
        await asyncio.wait_for(task, 10)
        assert default.lease in default_session_leases(client) and default.lease != s.lease_id
        assert s.lease_id in set(await client.leases()), "resigning ended the explicit session"
        await default.resign()
    await assert_clean(client, ns, base)


async def test_cancel_on_loss_cancels_the_body_and_raises_lock_lost(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "cancel-on-loss"
    body_cancelled = False
    async with second_client(etcd_endpoints) as other:
        with pytest.raises(LockLost) as ei:
            async with client.election(name).campaign("me", timeout=5, cancel_on_loss=True) as term:
                try:
                    await other.delete(term.key)
                    await asyncio.wait_for(asyncio.Event().wait(), 10)
                except asyncio.CancelledError:
                    body_cancelled = True
                    raise
    assert body_cancelled, "the body was not cancelled"
    assert name in str(ei.value)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0, "the loss cancellation leaked into the caller"
    await assert_clean(client, ns, base)


async def test_bad_proposal_and_name_raise_config_error(client: Client, ns: str) -> None:
    with pytest.raises(ConfigError):
        client.election(ns + "bad").campaign(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        client.election(ns + "bad/")
    assert await keys_under(client, ns) == {}


# ---------------------------------------------------------------------------------------------------------
# observe()
# ---------------------------------------------------------------------------------------------------------


async def test_observe_yields_the_leader_then_each_change_and_nothing_else(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "observe"
    async with second_client(etcd_endpoints) as other:
        e = other.election(name)
        a = await leading(e.campaign("a1", timeout=5))
        b = e.campaign("b1", timeout=30)
        b_task = asyncio.create_task(leading(b))
        try:
            async with observing(client.election(name)) as obs:
                await obs.expect(a)  # the current leader first

                # A candidate that does not lead joins, another joins and leaves, a nested election gets
                # a leader, the leader proclaims the value it has: none of it is a change of leader.
                await wait_until(lambda: is_waiting(b), 5, "b parked")
                c = e.campaign("c1", timeout=0.2)
                assert await c.acquire() is False
                async with other.election(name + "/nested").campaign("x", timeout=5):
                    await a.proclaim("a1")
                # ... so the next observation is the next proclaimed value.
                await a.proclaim("a2")
                await obs.expect(a)
                await a.proclaim(b"a3")
                await obs.expect(a)

                await a.resign()
                await asyncio.wait_for(b_task, 5)
                await obs.expect(b)  # a new leader
                await b.proclaim("b2")
                await obs.expect(b)

                # No candidate: nothing to yield; the next candidate leads and is yielded.
                await b.resign()
                async with e.campaign("d1", timeout=5) as d:
                    await obs.expect(d)
                    # The same session campaigning again is a new term of the same key.
                    await d.resign()
                    async with d:
                        await obs.expect(d)
                assert all(leader.name == name for leader in obs.seen)
                tokens = [leader.token for leader in obs.seen]
                assert tokens == sorted(tokens)
        finally:
            b_task.cancel()
            await asyncio.gather(b_task, return_exceptions=True)
            await b.resign()
    await assert_clean(client, ns, base)


async def test_observe_yields_the_state_after_a_whole_revision(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    """One Txn deletes the leader and changes the next candidate's value: etcd was never in the state in
    between (the next candidate leading with its old value), so observe() must not yield it."""
    base = await baseline(client)
    name = ns + "one-revision"
    async with second_client(etcd_endpoints) as other:
        e = other.election(name)
        a = await leading(e.campaign("a", timeout=5))
        b = e.campaign("b-old", timeout=30)
        b_task = asyncio.create_task(leading(b))
        try:
            await wait_until(lambda: is_waiting(b), 5, "b parked")
            b_key = contender_of(b).key
            async with observing(client.election(name)) as obs:
                await obs.expect(a)
                await other.txn([], [Op.delete(a.key), Op.put(b_key, "b-new", lease=contender_of(b).lease)])
                await asyncio.wait_for(b_task, 5)
                got = await obs.next()
                assert (got.key, got.token, got.value) == (b.key, b.token, b"b-new"), identity(got)
                await b.proclaim("b-last")
                await obs.expect(b)
        finally:
            b_task.cancel()
            await asyncio.gather(b_task, return_exceptions=True)
            await a.resign()
            await b.resign()
    await assert_clean(client, ns, base)


async def test_observe_waits_while_there_is_no_leader(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "empty"
    async with observing(client.election(name)) as obs:
        await wait_until(lambda: client.resources().watchers >= 1, 5, "the observer's watch")
        assert obs.seen == []
        async with client.election(name).campaign("first", timeout=5) as term:
            got = await obs.expect(term)
            assert got.revision >= term.token
    await assert_clean(client, ns, base)


async def test_breaking_out_of_observe_ends_its_watch(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "break"
    async with client.election(name).campaign("v0", timeout=5) as term:
        # The queue's own watcher is there while we lead: count the observers' watches on top of it.
        await wait_until(lambda: client._recipes.queues.names[name].watcher.created.is_set(), 5, "queue")
        watchers = client.resources().watchers
        for i in range(1, 4):
            async with asyncio.timeout(10):
                async for leader in client.election(name).observe():
                    if leader.value == f"v{i}".encode():
                        break  # the first value came from the list, this one from the watch: it is live
                    await term.proclaim(f"v{i}")  # (the watch starts after the list: it sees this)
            await wait_until(lambda: client.resources().watchers == watchers, 5, "the observer's watch ended")
        # A cancelled observer ends its watch too.
        obs = Observer(client.election(name))
        await obs.expect(term)
        await wait_until(lambda: client.resources().watchers == watchers + 1, 5, "the observer's watch")
        await obs.stop()
        await wait_until(lambda: client.resources().watchers == watchers, 5, "the cancelled observer's watch")
    await assert_clean(client, ns, base)


# ---- compaction ------------------------------------------------------------------------------------------


@pytest.fixture
def proxy(etcd_fresh: EtcdCluster) -> Iterator[FaultProxy]:
    p = FaultProxy(etcd_fresh.endpoints[0]).start()
    try:
        yield p
    finally:
        p.close()


def count_reads(client: Client) -> list[int]:
    """Counts the client's get() calls from now on (observe() lists the candidates with one)."""
    reads = [0]
    real = client.get

    async def get(*args: Any, **kwargs: Any) -> Any:
        reads[0] += 1
        return await real(*args, **kwargs)

    client.get = get  # type: ignore[method-assign]
    return reads


@pytest.mark.parametrize("meanwhile", ["new-leader", "same-leader"])
async def test_observe_resumes_after_its_watch_was_compacted(
    etcd_fresh: EtcdCluster, proxy: FaultProxy, ns: str, meanwhile: str
) -> None:
    """The observer is not reading (suspended after a yield of its watch); its connection breaks and,
    before it is back, etcd is compacted past the watch's revision: the resumed watch is compacted.
    observe() lists again and yields the current leader, unless it is the one it yielded last."""
    name = ns + "compacted"
    async with (
        Client(etcd_fresh.endpoints) as outside,
        Client([proxy.endpoint], timeout=2) as observer_client,
    ):
        e = outside.election(name)
        a = await leading(e.campaign("a1", timeout=5))
        b = e.campaign("b1", timeout=30)
        b_task = asyncio.create_task(leading(b))
        observed = observer_client.election(name).observe()
        try:
            await wait_until(lambda: is_waiting(b), 5, "b parked")
            assert identity(await asyncio.wait_for(anext(observed), 10)) == term_identity(a)  # listed
            await a.proclaim("a2")
            assert identity(await asyncio.wait_for(anext(observed), 10)) == term_identity(a)  # watched
            reads = count_reads(observer_client)
            await restart_compacted(proxy, observer_client, outside, ns)
            if meanwhile == "new-leader":
                await a.proclaim("a3")  # gone with the compacted history: never observed
                await a.resign()
                await asyncio.wait_for(b_task, 5)
                await b.proclaim("b2")
            await compact_past(outside, ns)
            proxy.pass_through()
            following = asyncio.ensure_future(anext(observed))
            await wait_until(lambda: reads[0] >= 1, 20, "observe() to list the candidates again")
            if meanwhile == "new-leader":
                got = await asyncio.wait_for(following, 10)
                assert identity(got) == term_identity(b), f"not the current leader: {identity(got)}"
                await b.proclaim("b3")
                assert identity(await asyncio.wait_for(anext(observed), 10)) == term_identity(b)
            else:
                # The leader is the one yielded last: no repeat; the next observation is a's next value.
                await a.proclaim("a3")
                got = await asyncio.wait_for(following, 10)
                assert identity(got) == term_identity(a), f"a repeat or a stale leader: {identity(got)}"
            assert reads[0] == 1, f"observe() listed {reads[0]} times"
        finally:
            await observed.aclose()
            b_task.cancel()
            await asyncio.gather(b_task, return_exceptions=True)
            await a.resign()
            await b.resign()
        assert observer_client.resources().watchers == 0


async def test_observe_lists_again_when_its_watch_is_compacted_before_it_starts(
    etcd_fresh: EtcdCluster, ns: str
) -> None:
    """The candidates are listed at revision R and the watch from R + 1 reaches etcd only after a
    compaction past it (held back here): observe() lists again and yields the new leader."""
    name = ns + "compacted-early"
    async with Client(etcd_fresh.endpoints) as client, Client(etcd_fresh.endpoints) as other:
        base = await baseline(client)
        e = other.election(name)
        a = await leading(e.campaign("a", timeout=5))
        b = e.campaign("b", timeout=30)
        b_task = asyncio.create_task(leading(b))
        observed = client.election(name).observe()
        try:
            await wait_until(lambda: is_waiting(b), 5, "b parked")
            assert identity(await asyncio.wait_for(anext(observed), 10)) == term_identity(a)
            gate = hold_back_new_watchers(client)
            reads = count_reads(client)
            following = asyncio.ensure_future(anext(observed))  # creates the watch, held back
            await a.resign()
            await asyncio.wait_for(b_task, 5)
            await b.proclaim("b2")
            await compact_past(other, ns)
            gate.set()
            got = await asyncio.wait_for(following, 10)
            assert identity(got) == term_identity(b), f"not the current leader: {identity(got)}"
            assert reads[0] == 1, "observe() did not list the candidates again"
        finally:
            await observed.aclose()
            b_task.cancel()
            await asyncio.gather(b_task, return_exceptions=True)
            await a.resign()
            await b.resign()
        await assert_clean(client, ns, base, keys=frozenset({ns + "filler"}))


# ---- failover --------------------------------------------------------------------------------------------


@pytest.fixture
def cluster(etcd_cluster3: EtcdCluster) -> Iterator[EtcdCluster]:
    yield etcd_cluster3
    for m in etcd_cluster3.members:
        if not m.is_running:
            m.restart()
    etcd_cluster3.wait_healthy(timeout=20)


def member_at(cluster: EtcdCluster, endpoint: str) -> EtcdMember:
    return next(m for m in cluster.members if m.endpoint == endpoint)


async def test_observe_survives_a_failover_without_repeats_or_gaps(cluster: EtcdCluster, ns: str) -> None:
    name = ns + "failover"
    proclaims = 30
    async with Client(cluster.endpoints, timeout=5) as observer_client:
        victim = member_at(cluster, observer_client.current_endpoint)
        others = [m.endpoint for m in cluster.members if m is not victim]
        async with Client(others, timeout=10) as writer:
            e = writer.election(name)
            terms = [e.campaign(p, ttl=30, timeout=30) for p in ("a0", "b0", "c0")]
            tasks: list[asyncio.Task[Term]] = []
            expected: list[Identity] = []
            try:
                for t in terms:  # one after the other: they lead in this order
                    tasks.append(asyncio.create_task(leading(t)))
                    if t is terms[0]:
                        await asyncio.wait_for(tasks[0], 5)
                    else:
                        await wait_until(functools.partial(is_waiting, t), 5, "candidate parked")
                async with observing(observer_client.election(name)) as obs:
                    await obs.expect(terms[0])
                    expected.append(term_identity(terms[0]))
                    # The observer's watch is created once the first leader was yielded.
                    streams = observer_client._watch._streams
                    await wait_until(
                        lambda: STREAM_KEY in streams and streams[STREAM_KEY].replies_since_open > 0,
                        10,
                        "the observer's watch",
                    )
                    stream = streams[STREAM_KEY]
                    generation = stream.generations
                    for n, term in enumerate(terms):
                        if n:
                            await asyncio.wait_for(tasks[n], 10)
                            expected.append(term_identity(term))
                        for i in range(1, proclaims + 1):
                            await term.proclaim(f"{term.value.decode()[0]}{i}")
                            expected.append(term_identity(term))
                            if n == 0 and i == proclaims // 3:
                                victim.kill()  # the observer's member dies mid-flow
                        if n < len(terms) - 1:
                            await term.resign()
                    await wait_until(lambda: len(obs.seen) >= len(expected), 30, "every observation")
                    assert stream.generations > generation, "the watch stream never broke: proves nothing"
                    # One more change, so that anything extra would have shown up before it.
                    await terms[-1].proclaim("last")
                    expected.append(term_identity(terms[-1]))
                    await wait_until(lambda: len(obs.seen) >= len(expected), 10, "the last observation")
                    got = [identity(s) for s in obs.seen]
                    missing = [x for x in expected if x not in got]
                    assert got == expected, (
                        f"repeats or gaps: missing {missing}, {len(got)} vs {len(expected)}"
                    )
                assert observer_client.current_endpoint != victim.endpoint
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for t in terms:
                    await t.resign()
