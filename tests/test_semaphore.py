"""The semaphore (`client.semaphore(name, limit)`) on real etcd: at most `limit` holders across clients and
tasks, FIFO admission, one wake-up per release, a fencing token per holder, limit mismatches refused,
timeouts, cancellation and losses that leave nothing behind, explicit and default sessions.

Every test keeps its keys under its own `ns` and ends with `assert_clean` (no key, lease, watcher or task
left). Tests wait on conditions with deadlines, never on sleeps.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import pytest

from etcdlock import (
    AlreadyHeldError,
    Client,
    ConfigError,
    LimitMismatchError,
    LockLost,
    LockTimeout,
    NotAcquiredError,
    Op,
    Semaphore,
    Slot,
)
from etcdlock.testing import EtcdCluster
from tests.holdables import contender_of, is_waiting, wakeups
from tests.occupancy import SlotCheck
from tests.test_lock import (
    assert_clean,
    baseline,
    cancel_at,
    default_session_leases,
    grants_metric,
    keys_under,
    second_client,
)
from tests.waiting import wait_until

# ---------------------------------------------------------------------------------------------------------
# At most `limit` at once
# ---------------------------------------------------------------------------------------------------------


async def test_at_most_limit_holders_across_clients_and_tasks(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    """3 clients x 4 tasks, each task entering its client's one Semaphore object 5 times (limit 3)."""
    base = await baseline(client)
    name, limit, tasks_per_client, rounds = ns + "sem", 3, 4, 5
    check = SlotCheck(ns + "occupancy/", limit)
    inside: set[int] = set()  # tokens of the holders inside their block right now (one event loop: exact)
    most_inside = 0
    tokens: list[int] = []
    problems: list[str] = []

    async def worker(c: Client, sem: Semaphore) -> None:
        nonlocal most_inside
        for _ in range(rounds):
            async with sem as slot:
                inside.add(slot.token)
                most_inside = max(most_inside, len(inside))
                tokens.append(slot.token)
                await check.enter(slot)
                kv = (await c.get(slot.key)).kvs[0]
                if (kv.create_revision, kv.value, kv.lease) != (slot.token, b"3", slot.lease):
                    problems.append(f"{slot.key}: {kv} does not match token {slot.token}, lease {slot.lease}")
                await check.exit(slot)
                inside.discard(slot.token)

    async with second_client(etcd_endpoints) as c2, second_client(etcd_endpoints) as c3:
        clients = [client, c2, c3]
        sems = [c.semaphore(name, limit, timeout=60) for c in clients]
        workers = [
            asyncio.create_task(worker(c, sem), name=f"test:sem-worker-{i}-{j}")
            for i, (c, sem) in enumerate(zip(clients, sems, strict=True))
            for j in range(tasks_per_client)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*workers), 120)
        finally:
            for t in workers:
                t.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    assert not check.violations, check.violations
    assert not problems, problems
    assert most_inside <= limit, f"{most_inside} holders inside at once (limit {limit})"
    assert check.max_seen <= limit
    # 12 workers on 3 places: the places are all used at once (else this test could not see an excess).
    assert most_inside == limit, f"never {limit} holders at once (at most {most_inside})"
    total = len(clients) * tasks_per_client * rounds
    assert len(tokens) == total
    assert len(set(tokens)) == total, "two grants shared a fencing token"
    assert await keys_under(client, ns) == {}
    await assert_clean(client, ns, base)


async def test_slots_have_own_keys_values_and_tokens(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "tokens"
    sem = client.semaphore(name, 3, timeout=5)
    slots = [sem.slot() for _ in range(3)]
    for s in slots:
        assert await s.acquire()
    try:
        under = await keys_under(client, name + "/")
        assert under == {s.key: s.token for s in slots}
        assert [s.token for s in slots] == sorted({s.token for s in slots}), "tokens not distinct, increasing"
        for s in slots:
            assert s.key == f"{name}/{s.lease:x}" and s.limit == 3
            kv = (await client.get(s.key)).kvs[0]
            assert kv.value == b"3" and kv.lease == s.lease
            # Each holder's fencing compare holds in its own Txn, and only for its own key.
            assert (await s.txn([], [Op.put(ns + "fenced", str(s.token))])).succeeded
        assert len({s.lease for s in slots}) == 3, "two slots of one client on one lease (one key)"
        assert {s.lease for s in slots} <= default_session_leases(client)
    finally:
        for s in slots:
            await s.release()
    with pytest.raises(NotAcquiredError):
        slots[0].is_owner()
    await client.delete(ns + "fenced")
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# FIFO, one wake-up per release
# ---------------------------------------------------------------------------------------------------------


def at_least(items: list[int], n: int) -> bool:
    return len(items) >= n


async def test_fifo_admission_and_one_wakeup_per_release(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name, limit, n = ns + "fifo", 2, 6
    async with second_client(etcd_endpoints) as other:
        sems = [client.semaphore(name, limit, timeout=30), other.semaphore(name, limit, timeout=30)]
        holders = [sems[0].slot(), sems[1].slot()]
        for h in holders:
            assert await h.acquire()
        slots = [sems[i % 2].slot() for i in range(n)]
        leave = [asyncio.Event() for _ in range(n)]
        grants: list[int] = []

        async def waiter(i: int) -> None:
            async with slots[i]:
                grants.append(i)
                await leave[i].wait()

        tasks = [asyncio.create_task(waiter(i), name=f"test:sem-waiter-{i}") for i in range(n)]
        try:
            await wait_until(lambda: all(is_waiting(s) for s in slots), 10, "all waiters parked")
            order = sorted(range(n), key=lambda i: contender_of(slots[i]).token)
            assert min(contender_of(s).token for s in slots) > max(h.token for h in holders)
            assert [wakeups(s) for s in slots] == [0] * n

            # Each release (of a first holder, then of the waiter admitted longest ago) lets exactly the
            # next waiter in queue order in: woken once, the others not at all.
            async def release_step(k: int) -> None:
                if k < limit:
                    await holders[k].release()
                else:
                    leave[order[k - limit]].set()

            for k in range(n):
                await release_step(k)
                await wait_until(functools.partial(at_least, grants, k + 1), 10, f"grant #{k + 1}")
                assert grants == order[: k + 1], f"admitted {grants}, queue order {order}"
                for j, i in enumerate(order):
                    assert wakeups(slots[i]) == (1 if j <= k else 0), (
                        f"after release #{k + 1}: waiter {i} (place {j}) woken {wakeups(slots[i])}x"
                    )
                held = [h for h in [*holders, *slots] if h.held]
                assert len(held) == limit, f"{len(held)} hold after release #{k + 1}"
                under = await keys_under(client, name + "/")
                assert {h.key: h.token for h in held}.items() <= under.items()
            for e in leave:
                e.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for h in holders:
                await h.release()
    assert [wakeups(s) for s in slots] == [1] * n
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("theirs", [1, 3])
async def test_limit_mismatch_raises_and_takes_its_key_back(
    client: Client, ns: str, etcd_endpoints: list[str], theirs: int
) -> None:
    base = await baseline(client)
    name = ns + "mismatch"
    async with second_client(etcd_endpoints) as other, client.semaphore(name, 2, timeout=5) as holder:
        wrong = other.semaphore(name, theirs, timeout=5)
        body_ran = False
        with pytest.raises(LimitMismatchError) as ei:
            async with wrong:
                body_ran = True
        assert not body_ran
        msg = str(ei.value)
        assert name in msg and holder.key in msg, msg
        assert "limit 2" in msg and f"limit {theirs}" in msg and "same limit" in msg, msg
        assert await keys_under(client, ns) == {holder.key: holder.token}, "the refused key was left"

        # The same through a slot, waiting and not waiting (timeout=0).
        slot = wrong.slot()
        for timeout in (5.0, 0.0):
            with pytest.raises(LimitMismatchError):
                await slot.acquire(timeout)
            assert not slot.held
            assert await keys_under(client, ns) == {holder.key: holder.token}

        # The holder is undisturbed, and a user with the right limit still gets in.
        assert holder.held and not holder.lost.is_set()
        async with other.semaphore(name, 2, timeout=5) as second:
            assert set(await keys_under(client, ns)) == {holder.key, second.key}
    await assert_clean(client, ns, base)


async def test_limit_mismatch_with_a_waiters_key(client: Client, ns: str, etcd_endpoints: list[str]) -> None:
    """The waiters' keys carry the limit too: a newcomer is refused while only waiters disagree with it."""
    base = await baseline(client)
    name = ns + "mismatch-waiter"
    async with second_client(etcd_endpoints) as other:
        holder = client.semaphore(name, 1, timeout=5).slot()
        assert await holder.acquire()
        waiter = other.semaphore(name, 1, timeout=20).slot()
        waiting = asyncio.create_task(waiter.acquire())
        try:
            await wait_until(lambda: is_waiting(waiter), 5, "the waiter parked")
            with pytest.raises(LimitMismatchError, match="limit 1"):
                async with client.semaphore(name, 2, timeout=5):
                    pytest.fail("admitted with another limit")
            assert set(await keys_under(client, ns)) == {holder.key, contender_of(waiter).key.decode()}
            await holder.release()
            assert await asyncio.wait_for(waiting, 5)
            assert wakeups(waiter) == 1
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            await waiter.release()
            await holder.release()
    await assert_clean(client, ns, base)


async def test_plain_lock_key_under_the_name_is_a_mismatch(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "lock-and-sem"
    async with second_client(etcd_endpoints) as other, other.lock(name, timeout=5) as lock:
        with pytest.raises(LimitMismatchError) as ei:
            async with client.semaphore(name, 2, timeout=5):
                pytest.fail("a semaphore was admitted next to a plain lock's key")
        msg = str(ei.value)
        assert lock.key in msg and "not a semaphore" in msg and "limit 2" in msg, msg
        assert await keys_under(client, ns) == {lock.key: lock.token}
    await assert_clean(client, ns, base)


@pytest.mark.parametrize("nested", ["lock", "semaphore"])
async def test_keys_of_nested_names_are_not_checked_or_counted(client: Client, ns: str, nested: str) -> None:
    """NAME/sub/<hex> belongs to another name: neither a mismatch nor a holder of NAME (as for the mutex)."""
    base = await baseline(client)
    name = ns + "outer"
    inner = client.lock(name + "/sub", timeout=5) if nested == "lock" else client.semaphore(name + "/sub", 3)
    async with inner:
        t0 = time.monotonic()
        async with client.semaphore(name, 1, timeout=5) as slot:
            assert time.monotonic() - t0 < 2.0
            assert slot.held
    await assert_clean(client, ns, base)


async def test_a_session_that_used_the_name_before_writes_the_current_limit(client: Client, ns: str) -> None:
    """One session, the same name, first as a lock, then with limit 2, then 3: each key says its own limit.

    (The session keeps its prebuilt acquire requests per slot; one built for a lock or another limit must
    not be sent for this one.)"""
    base = await baseline(client)
    name = ns + "reused"
    async with client.session(10) as s:
        async with client.lock(name, session=s, timeout=5):
            pass
        for limit in (2, 3, 1):
            async with client.semaphore(name, limit, session=s, timeout=5) as slot:
                kv = (await client.get(slot.key)).kvs[0]
                assert kv.value == str(limit).encode(), f"limit {limit} wrote {kv.value!r}"
                # Another user of this limit is admitted next to it (not refused for a stale value).
                if limit > 1:
                    async with client.semaphore(name, limit, timeout=5) as second:
                        assert second.held
        async with client.lock(name, session=s, timeout=5) as lock:
            assert (await client.get(lock.key)).kvs[0].value == b""
    await assert_clean(client, ns, base)


BAD_LIMITS: list[object] = [0, -1, True, False, 1.5, 2.0, "2", None]


@pytest.mark.parametrize("limit", BAD_LIMITS, ids=[repr(x) for x in BAD_LIMITS])
async def test_bad_limit_is_a_config_error_before_anything_is_sent(
    client: Client, ns: str, etcd: EtcdCluster, limit: object
) -> None:
    base = await baseline(client)
    granted = grants_metric(etcd)
    with pytest.raises(ConfigError, match="limit") as ei:
        client.semaphore(ns + "bad", limit)  # type: ignore[arg-type]
    assert repr(limit) in str(ei.value)
    assert grants_metric(etcd) == granted, "a lease was granted before the limit was refused"
    assert await keys_under(client, ns) == {}
    await assert_clean(client, ns, base)


BAD_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("empty name", {"name": ""}),
    ("trailing slash", {"name": "{ns}sem/"}),
    ("non-str name", {"name": 7}),
    ("negative timeout", {"timeout": -1}),
    ("bool timeout", {"timeout": True}),
    ("ttl 0", {"ttl": 0}),
    ("float ttl", {"ttl": 2.5}),
]


@pytest.mark.parametrize(("what", "kwargs"), BAD_OPTIONS, ids=[w for w, _ in BAD_OPTIONS])
async def test_bad_options_are_config_errors_before_anything_is_sent(
    client: Client, ns: str, etcd: EtcdCluster, what: str, kwargs: dict[str, Any]
) -> None:
    base = await baseline(client)
    granted = grants_metric(etcd)
    args: dict[str, Any] = {"name": ns + "sem", **kwargs}
    if isinstance(args["name"], str):
        args["name"] = args["name"].format(ns=ns)
    with pytest.raises(ConfigError):
        client.semaphore(args.pop("name"), 2, **args)
    assert grants_metric(etcd) == granted, f"{what}: a lease was granted"
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# Timeouts and cancellation
# ---------------------------------------------------------------------------------------------------------


async def test_timeout_raises_or_returns_false_and_leaves_no_key(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "timeout"
    async with client.semaphore(name, 2, timeout=5) as a, client.semaphore(name, 2, timeout=5) as b:
        held = {a.key: a.token, b.key: b.token}
        t0 = time.monotonic()
        with pytest.raises(LockTimeout) as ei:
            async with client.semaphore(name, 2, timeout=0.3):
                pytest.fail("a third holder with limit 2")
        elapsed = time.monotonic() - t0
        assert 0.3 <= elapsed < 2.0, f"LockTimeout after {elapsed:.2f}s for 0.3s"
        assert isinstance(ei.value, TimeoutError) and name in str(ei.value)
        assert await keys_under(client, ns) == held

        slot = client.semaphore(name, 2).slot()
        assert not await slot.acquire(timeout=0.3)
        assert not await slot.acquire(timeout=0)
        assert not slot.held and slot.lost_reason is None
        assert await keys_under(client, ns) == held
        assert a.held and b.held
    await assert_clean(client, ns, base)


async def test_cancelled_waiter_leaves_no_key_and_the_queue_moves_on(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "cancel"
    sem = client.semaphore(name, 1, timeout=30)
    holder = sem.slot()
    assert await holder.acquire()
    doomed, later = sem.slot(), sem.slot()
    cancelled = asyncio.create_task(doomed.acquire())
    await wait_until(lambda: is_waiting(doomed), 5, "the first waiter parked")
    waiting = asyncio.create_task(later.acquire())
    try:
        await wait_until(lambda: is_waiting(later), 5, "the second waiter parked")
        doomed_key = contender_of(doomed).key.decode()
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        under = await keys_under(client, ns)
        assert doomed_key not in under and set(under) == {holder.key, contender_of(later).key.decode()}
        assert not waiting.done() and wakeups(later) == 0, "a waiter was let in while the place was held"
        await holder.release()
        assert await asyncio.wait_for(waiting, 5)
        assert wakeups(later) == 1
        await later.release()
    finally:
        for t in (cancelled, waiting):
            t.cancel()
        await asyncio.gather(cancelled, waiting, return_exceptions=True)
        await holder.release()
        await later.release()
    await assert_clean(client, ns, base)


@pytest.mark.parametrize("contended", [False, True])
async def test_cancel_at_every_point_leaves_no_key(client: Client, ns: str, contended: bool) -> None:
    base = await baseline(client)
    name = ns + "cancel-points"
    sem = client.semaphore(name, 1, timeout=30)
    holder = sem.slot()
    if contended:
        assert await holder.acquire()
    expected = {holder.key: holder.token} if contended else {}
    completed = 0
    try:
        for step in range(0, 60, 2):
            slot = sem.slot()
            outcome = await cancel_at(slot.acquire(), step)
            if outcome.done_before_cancel:
                completed += 1
                await slot.release()
            assert outcome.error is None, f"step {step}: {outcome.error!r}"
            assert not slot.held or outcome.done_before_cancel
            assert await keys_under(client, ns) == expected, f"step {step}: key left behind"
    finally:
        await holder.release()
    if contended:
        assert completed == 0, "acquired while the only place was held"
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["revoke", "delete"])
async def test_loss_fires_lost_and_frees_the_place(
    client: Client, ns: str, etcd_endpoints: list[str], how: str
) -> None:
    base = await baseline(client)
    name = ns + "lost"
    async with second_client(etcd_endpoints) as other:
        waiter = other.semaphore(name, 1, timeout=20).slot()
        waiting: asyncio.Task[bool] | None = None
        try:
            async with client.semaphore(name, 1, timeout=5) as slot:
                fired: list[str] = []
                slot.add_lost_callback(fired.append)
                waiting = asyncio.create_task(waiter.acquire())
                await wait_until(lambda: is_waiting(waiter), 5, "the waiter parked")
                if how == "revoke":
                    await other.revoke(slot.lease)
                else:
                    assert (await other.delete(slot.key)).deleted == 1
                await asyncio.wait_for(slot.lost.wait(), 2)
                assert fired == [slot.lost_reason] and not slot.held
                reason = slot.lost_reason or ""
                assert slot.key in reason or f"{slot.lease:x}" in reason, reason
                with pytest.raises(LockLost):
                    await slot.ensure_held()
                with pytest.raises(LockLost):
                    await slot.txn([], [Op.put(ns + "fenced", "x")])
                # The place is free: the waiter is let in, woken once.
                assert await asyncio.wait_for(waiting, 5)
                assert wakeups(waiter) == 1
            assert await keys_under(client, ns) == {waiter.key: waiter.token}
        finally:
            if waiting is not None:
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
            await waiter.release()
    await assert_clean(client, ns, base)


async def test_waiters_key_deleted_fails_its_acquire_at_once(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "waiter-lost"
    async with second_client(etcd_endpoints) as other, client.semaphore(name, 1, timeout=5) as holder:
        waiter = other.semaphore(name, 1, timeout=20).slot()
        waiting = asyncio.create_task(waiter.acquire())
        try:
            await wait_until(lambda: is_waiting(waiter), 5, "the waiter parked")
            await client.delete(contender_of(waiter).key)
            t0 = time.monotonic()
            with pytest.raises(LockLost):
                await asyncio.wait_for(waiting, 5)
            assert time.monotonic() - t0 < 1.0
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        assert not waiter.held and holder.held
        assert await keys_under(client, ns) == {holder.key: holder.token}
    await assert_clean(client, ns, base)


async def test_cancel_on_loss_raises_lock_lost_out_of_the_block(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "cancel-on-loss"
    body_cancelled = False
    async with second_client(etcd_endpoints) as other:
        with pytest.raises(LockLost, match="lost"):
            async with client.semaphore(name, 2, timeout=5, cancel_on_loss=True) as slot:
                try:
                    # The loss may be seen (on the watch) before the delete's own reply: the body can be
                    # cancelled inside this very call.
                    await other.delete(slot.key)
                    await asyncio.wait_for(asyncio.Event().wait(), 5)
                except asyncio.CancelledError:
                    body_cancelled = True
                    raise
    assert body_cancelled
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# Sessions, handles, tasks
# ---------------------------------------------------------------------------------------------------------


async def test_explicit_sessions(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "explicit"
    async with client.session(10) as s1, client.session(10) as s2:
        on1, on2 = client.semaphore(name, 2, session=s1, timeout=5), client.semaphore(name, 2, session=s2)
        async with on1 as a, on2 as b:
            assert (a.lease, b.lease) == (s1.lease_id, s2.lease_id)
            assert a.key == f"{name}/{s1.lease_id:x}" and b.key == f"{name}/{s2.lease_id:x}"
            assert set(await client.leases()) - base.leases == {s1.lease_id, s2.lease_id}
            # One place per session (one key NAME/<lease hex>): a second entry on s1 is refused at once.
            with pytest.raises(AlreadyHeldError):
                async with on1:
                    pytest.fail("two places on one session")
            assert await keys_under(client, ns) == {a.key: a.token, b.key: b.token}
        assert await keys_under(client, ns) == {}
        assert {s1.lease_id, s2.lease_id} <= set(await client.leases()), "a release ended its session"

        # Ending the session ends the slot on it.
        async with on1 as a:
            await s1.close()
            await asyncio.wait_for(a.lost.wait(), 2)
            assert not a.held
    await assert_clean(client, ns, base)


async def test_default_sessions_one_semaphore_many_tasks(client: Client, ns: str) -> None:
    """One Semaphore object entered by 4 tasks at once: each task its own slot, key, lease and token; the
    5th task waits; each block's end releases its own slot."""
    base = await baseline(client)
    name, limit = ns + "tasks", 4
    sem = client.semaphore(name, limit, timeout=20)
    slots: dict[int, Slot] = {}
    leave = [asyncio.Event() for _ in range(limit + 1)]

    async def task(i: int) -> None:
        async with sem as slot:
            slots[i] = slot
            await leave[i].wait()

    tasks = [asyncio.create_task(task(i), name=f"test:sem-task-{i}") for i in range(limit + 1)]
    try:
        await wait_until(lambda: len(slots) == limit, 10, f"{limit} tasks inside")
        (late,) = set(range(limit + 1)) - set(slots)
        assert len({id(s) for s in slots.values()}) == limit
        assert len({s.key for s in slots.values()}) == limit
        assert len({s.lease for s in slots.values()}) == limit
        assert {s.lease for s in slots.values()} <= default_session_leases(client)
        assert len({s.token for s in slots.values()}) == limit
        assert not tasks[late].done() and late not in slots

        # One task leaves: exactly its key goes, and the waiting task takes the place.
        first = next(iter(slots))
        gone = slots[first].key
        others = {s.key for i, s in slots.items() if i != first}
        leave[first].set()
        await wait_until(lambda: late in slots, 10, "the fifth task inside")
        under = set(await keys_under(client, name + "/"))
        assert gone not in under and others | {slots[late].key} == under
        for e in leave:
            e.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert not sem._entered, "the Semaphore still tracks entries of finished tasks"
    await assert_clean(client, ns, base)


async def test_nested_entries_in_one_task(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "nested"
    sem = client.semaphore(name, 2, timeout=5)
    async with sem as outer:
        async with sem as inner:
            assert inner is not outer and inner.key != outer.key
            assert set(await keys_under(client, ns)) == {outer.key, inner.key}
        assert not inner.held and outer.held
        assert set(await keys_under(client, ns)) == {outer.key}
    assert not outer.held
    await assert_clean(client, ns, base)


async def test_slot_is_reusable(client: Client, ns: str) -> None:
    base = await baseline(client)
    sem = client.semaphore(ns + "reuse", 2, timeout=5)
    slot = sem.slot()
    tokens: list[int] = []
    for _ in range(2):
        assert await slot.acquire()
        tokens.append(slot.token)
        await slot.release()
        assert not slot.held
    async with slot as same:
        assert same is slot
        tokens.append(slot.token)
    assert tokens == sorted(set(tokens)), f"a reused slot did not get new tokens: {tokens}"
    await assert_clean(client, ns, base)
