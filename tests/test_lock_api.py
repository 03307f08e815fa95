"""The Lock object's API on real etcd: reusable and shareable like asyncio.Lock, acquire(timeout) -> bool,
timeout=0 as one attempt, try_lock's result in `async with`, "not acquired" errors, and lock inspection
(`client.lock_status`, `etcdlock status`).

Every test keeps its keys under its own `ns` and ends with `assert_clean` (see tests/test_lock.py).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import pytest

from etcdlock import (
    AlreadyHeldError,
    Client,
    ConfigError,
    LockError,
    LockHolder,
    LockLost,
    LockStatus,
    LockTimeout,
    NotAcquiredError,
    Op,
)
from tests.test_cli import run_cli
from tests.test_lock import (
    acquired,
    assert_clean,
    baseline,
    create_revision,
    is_waiting,
    keys_under,
    mutex_of,
    second_client,
)
from tests.waiting import wait_until

EXIT_USAGE = 2


def holders_reach(entered: list[int], n: int) -> bool:
    return len(entered) >= n


async def revision(client: Client) -> int:
    return (await client.get("\x00")).header.revision


# ---------------------------------------------------------------------------------------------------------
# One object, many acquisitions
# ---------------------------------------------------------------------------------------------------------


async def test_one_object_acquired_in_turn_with_async_with_and_acquire(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "reuse"
    lock = client.lock(name, timeout=2)
    tokens: list[int] = []
    for _ in range(3):
        async with lock as held:
            assert held is lock and lock.held
            assert await keys_under(client, ns) == {lock.key: lock.token}
            assert (await lock.txn([], [Op.put(ns + "fenced", "x")])).succeeded
            tokens.append(lock.token)
        assert not lock.held
        assert await keys_under(client, ns) == {ns + "fenced": await create_revision(client, ns + "fenced")}
        await client.delete(ns + "fenced")
    for _ in range(2):
        assert await lock.acquire() is True
        assert lock.held and lock.token == await create_revision(client, lock.key)
        tokens.append(lock.token)
        await lock.release()
        assert not lock.held and await keys_under(client, ns) == {}
    assert tokens == sorted(tokens) and len(set(tokens)) == 5, f"tokens not strictly increasing: {tokens}"
    await assert_clean(client, ns, base, allow_lingering=False)


async def test_one_object_shared_by_tasks_excludes_and_every_task_finishes(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "shared"
    lock = client.lock(name, timeout=10)
    n = 4
    go = [asyncio.Event() for _ in range(n)]
    entered: list[int] = []
    tokens: list[int] = []
    active = 0
    max_active = 0

    async def worker(i: int) -> None:
        nonlocal active, max_active
        async with lock as held:
            active += 1
            max_active = max(max_active, active)
            entered.append(i)
            tokens.append(held.token)
            await go[i].wait()
            active -= 1

    tasks = [asyncio.create_task(worker(i), name=f"test:shared-{i}") for i in range(n)]
    try:
        for turn in range(n):
            await wait_until(functools.partial(holders_reach, entered, turn + 1), 5, f"holder #{turn + 1}")
            # A round trip to etcd gives every waiting task the chance to barge in if it could.
            status = await client.lock_status(name)
            assert len(entered) == turn + 1 and active == 1, f"{active} tasks in the body at once"
            assert status.holder is not None and status.holder.key == lock.key
            assert status.holder.token == lock.token == tokens[-1]
            go[entered[-1]].set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(entered) == list(range(n)), f"not every task held the lock: {entered}"
    assert max_active == 1
    assert tokens == sorted(tokens) and len(set(tokens)) == n, f"tokens: {tokens}"
    assert not lock.held
    await assert_clean(client, ns, base, allow_lingering=False)


async def test_a_block_whose_body_released_does_not_release_the_next_holder(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "handed-on"
    lock = client.lock(name, timeout=5)
    second_in = asyncio.Event()
    second_token = 0

    async def second() -> None:
        nonlocal second_token
        async with lock:
            second_token = lock.token
            second_in.set()
            await asyncio.Event().wait()

    task: asyncio.Task[Any] | None = None
    try:
        async with lock:
            first_token = lock.token
            task = asyncio.create_task(second(), name="test:second")
            await lock.release()  # explicitly, in the body: the next task's turn
            await asyncio.wait_for(second_in.wait(), 5)
        # Leaving the first block left the second task's acquisition alone.
        assert lock.held and lock.token == second_token > first_token
        assert await keys_under(client, ns) == {lock.key: second_token}
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert not lock.held
    await assert_clean(client, ns, base)


async def test_explicit_session_tasks_of_one_object_take_turns_others_get_already_held(
    client: Client, ns: str
) -> None:
    base = await baseline(client)
    name = ns + "session"
    async with client.session(10) as s:
        lock = client.lock(name, session=s, timeout=5)
        async with lock:
            first_token = lock.token
            # Another Lock object on the same session would be the same key: refused, as before.
            with pytest.raises(AlreadyHeldError):
                await client.lock(name, session=s, timeout=1).acquire()
            # A second task on the same object waits for its turn instead.
            waiting = asyncio.create_task(acquired(lock))
            done, _ = await asyncio.wait({waiting}, timeout=0.3)
            assert not done, "a second acquire of the same object did not wait for the first"
            assert lock.token == first_token
        assert await asyncio.wait_for(waiting, 5) is lock
        assert lock.held and lock.lease == s.lease_id and lock.token > first_token
        await lock.release()
        assert await keys_under(client, ns) == {}
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# acquire(timeout) -> bool
# ---------------------------------------------------------------------------------------------------------


async def test_acquire_timeout_returns_false_and_leaves_nothing(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "busy"
    async with second_client(etcd_endpoints) as other, other.lock(name, timeout=2) as holder:
        for lock, timeout in [(client.lock(name), 0.3), (client.lock(name, timeout=0.3), None)]:
            t0 = time.monotonic()
            assert await lock.acquire(timeout) is False
            elapsed = time.monotonic() - t0
            assert 0.3 <= elapsed < 1.3, f"acquire gave up after {elapsed:.3f}s for a 0.3 s timeout"
            assert not lock.held
            with pytest.raises(NotAcquiredError):
                _ = lock.token
            assert await keys_under(client, ns) == {holder.key: holder.token}
        # `async with` keeps raising LockTimeout.
        with pytest.raises(LockTimeout):
            async with client.lock(name, timeout=0.1):
                pytest.fail("the body ran without the lock")
        assert holder.held
        await assert_clean(client, ns, base, keys=frozenset({holder.key}))
    await assert_clean(client, ns, base)


async def test_acquire_rejects_a_bad_timeout(client: Client, ns: str) -> None:
    base = await baseline(client)
    lock = client.lock(ns + "bad-timeout")
    for bad in (-1, float("nan"), float("inf"), True):
        with pytest.raises(ConfigError):
            await lock.acquire(bad)
    await assert_clean(client, ns, base)


async def test_timeout_zero_is_one_attempt_when_free_and_when_held(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "zero"
    lock = client.lock(name)
    async with client.lock(ns + "warm", timeout=2):  # the default session exists: no grant below
        pass

    # Free: acquired at once, with one write (the key).
    before = await revision(client)
    assert await lock.acquire(timeout=0) is True
    assert lock.held and lock.token == before + 1 == await revision(client)
    await lock.release()

    async with second_client(etcd_endpoints) as other, other.lock(name, timeout=2) as holder:
        # Held: one attempt (its key put and deleted again: exactly two revisions), no waiting.
        before = await revision(client)
        t0 = time.monotonic()
        assert await lock.acquire(timeout=0) is False
        assert time.monotonic() - t0 < 0.5
        assert await revision(client) == before + 2, "not exactly one attempt"
        assert not lock.held
        assert await keys_under(client, ns) == {holder.key: holder.token}
        with pytest.raises(LockTimeout):
            async with client.lock(name, timeout=0):
                pytest.fail("the body ran without the lock")
        assert await keys_under(client, ns) == {holder.key: holder.token}

    # Held through the same object by another task: no attempt at all, no waiting.
    async with lock:
        before = await revision(client)
        assert await asyncio.create_task(lock.acquire(timeout=0)) is False
        assert await revision(client) == before
        assert lock.held
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# try_lock's result
# ---------------------------------------------------------------------------------------------------------


async def test_try_lock_result_in_async_with_is_released_on_exit(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "try"
    held = await client.try_lock(name)
    if not held:
        pytest.fail("try_lock of a free name gave None")
    token, key = held.token, held.key
    async with asyncio.timeout(5), held as h:
        # The same acquisition, taken over: not a second acquire (that would wait for the first).
        assert h is held and held.held
        assert held.token == token and await keys_under(client, ns) == {key: token}
    assert not held.held
    assert await keys_under(client, ns) == {}
    # Then it is an ordinary Lock object: a block acquires it again.
    async with held:
        assert held.token > token
    assert await keys_under(client, ns) == {}
    await assert_clean(client, ns, base)


async def test_try_lock_result_lost_before_its_block_raises_lock_lost(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "try-lost"
    held = await client.try_lock(name)
    assert held is not None
    async with second_client(etcd_endpoints) as other:
        await other.delete(held.key)
        await asyncio.wait_for(held.lost.wait(), 5)
    with pytest.raises(LockLost):
        async with held:
            pytest.fail("the body ran on a lost lock")
    assert not held.held
    with pytest.raises(NotAcquiredError):
        _ = held.key  # released on the way out
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# Not acquired
# ---------------------------------------------------------------------------------------------------------


async def test_a_lock_not_acquired_says_so(client: Client, ns: str) -> None:
    base = await baseline(client)
    lock = client.lock(ns + "idle", timeout=2)

    def check_not_acquired() -> None:
        assert not lock.held and lock.lost_reason is None
        accessors: list[tuple[str, Callable[[], object]]] = [
            ("token", lambda: lock.token),
            ("key", lambda: lock.key),
            ("lease", lambda: lock.lease),
            ("lost", lambda: lock.lost),
            ("is_owner", lock.is_owner),
        ]
        for what, get in accessors:
            with pytest.raises(NotAcquiredError) as ei:
                get()
            assert not isinstance(ei.value, LockLost), what
            assert isinstance(ei.value, LockError), what
            assert "not acquired" in str(ei.value) and lock.name in str(ei.value), str(ei.value)

    check_not_acquired()
    with pytest.raises(NotAcquiredError):
        await lock.ensure_held()
    with pytest.raises(NotAcquiredError):
        await lock.txn([], [])
    await lock.release()  # nothing held: nothing to do
    async with lock:
        pass
    check_not_acquired()
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# lock_status
# ---------------------------------------------------------------------------------------------------------


async def test_lock_status_holder_and_two_waiters_in_queue_order(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "inspect"
    free = await client.lock_status(name)
    assert free == LockStatus(name, None, (), free.revision) and free.revision > 0
    async with second_client(etcd_endpoints) as other:
        holder = await acquired(client.lock(name, ttl=10, timeout=2))
        nested = await acquired(client.lock(name + "/nested", timeout=2))  # another name: not in the queue
        waiters = [other.lock(name, ttl=20, timeout=20), client.lock(name, ttl=30, timeout=20)]
        tasks: list[asyncio.Task[Any]] = []
        try:
            for w in waiters:  # one after the other: their order in the queue is known
                tasks.append(asyncio.create_task(w.acquire()))
                await wait_until(functools.partial(is_waiting, w), 5, "the waiter queued")
            status = await client.lock_status(name)
            assert status.name == name
            assert status.holder is not None
            assert (status.holder.key, status.holder.lease, status.holder.token) == (
                holder.key,
                holder.lease,
                holder.token,
            )
            assert 0 < status.holder.ttl_left <= 10
            expected = [(mutex_of(w).key.decode(), mutex_of(w).lease, mutex_of(w).token) for w in waiters]
            assert [(e.key, e.lease, e.token) for e in status.waiters] == expected
            for entry, ttl in zip(status.waiters, [20, 30], strict=True):
                assert isinstance(entry, LockHolder) and 0 < entry.ttl_left <= ttl, status.waiters
            assert status.revision >= max(t for _, _, t in expected)
            await nested.release()
            await holder.release()
            await asyncio.wait_for(tasks[0], 5)
            after = await client.lock_status(name)
            assert after.holder is not None and after.holder.key == expected[0][0]
            assert [e.key for e in after.waiters] == [expected[1][0]]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for lk in [holder, nested, *waiters]:
                await lk.release()
    assert (await client.lock_status(name)).holder is None
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# etcdlock status
# ---------------------------------------------------------------------------------------------------------


async def test_status_cli_refuses_a_keyspace_scan_without_a_limit(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    async with client.lock(ns + "a", timeout=2), client.lock(ns + "b", timeout=2) as b:
        r = await asyncio.to_thread(run_cli, "status", endpoints=etcd_endpoints)
        assert r.returncode == EXIT_USAGE, r
        assert "whole keyspace" in r.stderr and "--limit" in r.stderr, r.stderr
        assert r.stdout == ""

        # With --limit it reads that many keys at most, and says it stopped (there are two under ns).
        r = await asyncio.to_thread(run_cli, "status", "--limit", "1", endpoints=etcd_endpoints)
        assert r.returncode == 0, r.stderr
        assert "stopped after 1 keys" in r.stderr, r.stderr
        r = await asyncio.to_thread(run_cli, "status", ns, "--limit", "1", endpoints=etcd_endpoints)
        assert r.returncode == 0, r.stderr
        assert "stopped after 1 keys" in r.stderr and ns + "a" in r.stdout and b.key not in r.stdout

        # A prefix alone reads everything under it.
        r = await asyncio.to_thread(run_cli, "status", ns, endpoints=etcd_endpoints)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert ns + "a  (0 waiting)" in r.stdout and b.key in r.stdout

        r = await asyncio.to_thread(run_cli, "status", "--help", endpoints=etcd_endpoints)
        assert "--limit" in r.stdout and "refuses" in r.stdout
    await assert_clean(client, ns, base)
