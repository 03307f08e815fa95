"""Acceptance tests of the lock recipe (`client.lock`, `client.try_lock`, `client.session`) on real etcd.

Every test keeps its keys under its own `ns` and ends with `assert_clean`: no key, no lease, no keepalive,
no lock task and no asyncio task survives what the test did. Nothing here sleeps to synchronize: tests wait
on conditions with deadlines (`wait_until`), or count event-loop iterations where the point *is* to land a
cancellation at a particular await.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest

from etcdlock import (
    AlreadyHeldError,
    Client,
    ConfigError,
    LeaseNotFoundError,
    Lock,
    LockError,
    LockLost,
    LockTimeout,
    NotAcquiredError,
    Op,
)
from etcdlock._recipes.contender import Contender
from etcdlock._recipes.queue import NameWatch
from etcdlock._recipes.state import Recipes
from etcdlock.testing import EtcdCluster
from tests.waiting import wait_until

CLEAN_DEADLINE = 3.0  # seconds for asynchronous cleanup (queue watcher, watch stream, keepalive) to finish
LEASES_GRANTED = "etcd_debugging_lease_granted_total"


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """What existed before the code under test ran: leases on the server, asyncio tasks in the loop."""

    leases: frozenset[int]
    tasks: frozenset[asyncio.Task[Any]]


async def baseline(client: Client) -> Baseline:
    return Baseline(frozenset(await client.leases()), frozenset(asyncio.all_tasks()))


async def keys_under(client: Client, prefix: str) -> dict[str, int]:
    """{key: create_revision} of every key under prefix."""
    r = await client.get(prefix, prefix=True)
    return {kv.key.decode(): kv.create_revision for kv in r.kvs}


async def create_revision(client: Client, key: str) -> int:
    r = await client.get(key)
    assert len(r.kvs) == 1, f"key {key!r} does not exist"
    return r.kvs[0].create_revision


def lingering_watches(client: Client) -> dict[str, NameWatch]:
    """Shared queue watchers that no lock uses any more (kept for a short while for reuse, then closed)."""
    return {name: nw for name, nw in client._recipes.queues.names.items() if not nw.interests}


def default_session_leases(client: Client) -> set[int]:
    """The leases of the client's default sessions: they live as long as the client (or until idle, for
    the extra ones a name locked several times at once needed)."""
    return {s.lease_id for s in client._recipes.sessions.sessions() if not s.lost.is_set()}


def every_default_session_lease() -> set[int]:
    """The default sessions' leases of every client of this process that is still open (each client owns
    its recipe state; the garbage collector knows them all)."""
    pools = [o.sessions for o in gc.get_objects() if isinstance(o, Recipes)]
    return {s.lease_id for pool in pools for s in pool.sessions() if not s.lost.is_set()}


def is_grpc_internal(task: asyncio.Task[Any]) -> bool:
    coro = task.get_coro()
    code = getattr(coro, "cr_code", None)
    # gRPC's own tasks of a stream call: Cython coroutines (no Python code object; newer grpcio names their
    # type's module "...cython...", grpcio 1.49 shows a plain `coroutine`), or its Python code under grpc/.
    return code is None or "cython" in type(coro).__module__ or "/grpc/" in code.co_filename


async def server_leftovers(
    client: Client,
    ns: str,
    base: Baseline,
    *,
    keys: frozenset[str] = frozenset(),
    leases: frozenset[int] = frozenset(),
) -> list[str]:
    """Keys under ns other than `keys`; leases beyond the baseline and `leases`."""
    problems: list[str] = []
    got_keys = set(await keys_under(client, ns))
    if got_keys != set(keys):
        problems.append(f"keys under {ns}: {sorted(got_keys)} (expected {sorted(keys)})")
    extra_leases = set(await client.leases()) - base.leases - set(leases) - every_default_session_lease()
    if extra_leases:
        problems.append(f"leases left on the server: {sorted(f'{x:x}' for x in extra_leases)}")
    return problems


def local_leftovers(
    client: Client, base: Baseline, *, allow_lingering: bool = True, keepalive: int = 0
) -> list[str]:
    """Keepalives, queue watchers, lock tasks and asyncio tasks the client still has.

    allow_lingering: an idle shared queue watcher (no lock of its name left on this client) may still be
    there with its tasks; with False it must be closed too."""
    problems: list[str] = []
    res = client.resources()
    keepalive += len(default_session_leases(client))
    if res.keepalive_leases != keepalive:
        problems.append(f"client keeps {res.keepalive_leases} lease(s) alive, expected {keepalive}")
    registered = client._recipes.queues.names
    idle = lingering_watches(client) if allow_lingering else {}
    busy = sorted(n for n in registered if n not in idle)
    if busy:
        problems.append(f"queue watchers still registered for {busy}")
    for name, nw in idle.items():
        if nw._by_key or nw._own:
            problems.append(f"idle queue watcher {name!r} still tracks keys {nw._by_key} / {list(nw._own)}")
    allowed_tasks = {f"etcdlock:client:lock-queue:{n}" for n in idle}
    pooled_anywhere = bool(every_default_session_lease())  # (tasks of every client share one loop)
    if keepalive or pooled_anywhere:
        allowed_tasks |= {
            "etcdlock:client:lease-keepalive",
            "etcdlock:client:lease-keepalive-reader",
            "etcdlock:client:lease-quorum-read",
        }
    if idle:
        allowed_tasks |= {"etcdlock:client:watch-stream", "etcdlock:client:watch-reader"}
    if res.watchers > len(idle):
        problems.append(f"{res.watchers} watchers open, {len(idle)} idle queue watcher(s) allowed")
    lock_tasks = [t for t in res.tasks if ("lock-guard" in t or "lock-queue" in t) and t not in allowed_tasks]
    if lock_tasks:
        problems.append(f"lock tasks still running: {lock_tasks}")
    me = asyncio.current_task()
    tasks = [
        t
        for t in asyncio.all_tasks()
        if t is not me
        and t not in base.tasks
        and not t.done()
        and t.get_name() not in allowed_tasks
        # gRPC's own helper task of an open stream, while an allowed stream is open
        and not ((idle or keepalive or pooled_anywhere) and is_grpc_internal(t))
    ]
    if tasks:
        problems.append(f"asyncio tasks left: {sorted(f'{t.get_name()} {t.get_coro()!r}' for t in tasks)}")
    return problems


async def leftovers(
    client: Client,
    ns: str,
    base: Baseline,
    *,
    keys: frozenset[str] = frozenset(),
    leases: frozenset[int] = frozenset(),
    allow_lingering: bool = True,
    keepalive: int = 0,
) -> list[str]:
    """Everything the code under test left behind (beyond the allowed keys and leases); [] if clean."""
    return await server_leftovers(client, ns, base, keys=keys, leases=leases) + local_leftovers(
        client, base, allow_lingering=allow_lingering, keepalive=keepalive
    )


async def assert_clean(
    client: Client,
    ns: str,
    base: Baseline,
    *,
    keys: frozenset[str] = frozenset(),
    leases: frozenset[int] = frozenset(),
    allow_lingering: bool = True,
    keepalive: int = 0,
    timeout: float = CLEAN_DEADLINE,
) -> None:
    """Wait (bounded) until nothing but `keys`/`leases` is left of what the test did; fail with a list."""
    last: list[str] = []

    async def clean() -> bool:
        nonlocal last
        last = await leftovers(
            client, ns, base, keys=keys, leases=leases, allow_lingering=allow_lingering, keepalive=keepalive
        )
        return not last

    try:
        await wait_until(clean, timeout, "no leftovers")
    except AssertionError:
        raise AssertionError(f"left behind after {timeout}s: {last}") from None


@contextlib.asynccontextmanager
async def second_client(endpoints: list[str]) -> AsyncIterator[Client]:
    """Another client ("another process"): revokes, deletes, or holds the lock from outside."""
    c = Client(endpoints)
    async with c:
        yield c
    assert c.resources().total() == 0, f"second client holds resources after close: {c.resources()}"


async def acquired(lock: Lock) -> Lock:
    """`lock`, acquired (for tests where it must be): fails the test if its timeout passed first."""
    if not await lock.acquire():
        raise AssertionError(f"lock {lock.name!r} not acquired within its timeout")
    return lock


def mutex_of(lock: Lock) -> Contender:
    m = lock._last
    assert m is not None, "the lock has no mutex yet"
    return m


def is_waiting(lock: Lock) -> bool:
    """The acquire is parked on the queue: its own key exists and it waits for the keys below it."""
    m = lock._last
    return m is not None and m._interest is not None and bool(m._interest.waiting_on)


def count_reaches(items: list[Any], n: int) -> Callable[[], bool]:
    return lambda: len(items) >= n


async def spin(iterations: int) -> None:
    for _ in range(iterations):
        await asyncio.sleep(0)


@dataclass
class Outcome:
    done_before_cancel: bool  # the coroutine had finished before cancel() was called
    cancelled: bool  # the task ended cancelled
    error: BaseException | None
    reached: bool  # the probe given to cancel_at was true just before cancel()


async def cancel_at(coro: Coroutine[Any, Any, Any], step: int | float, probe: Any = None) -> Outcome:
    """Run coro in a task; after `step` loop iterations (int) or seconds (float) cancel it; report."""
    task: asyncio.Task[Any] = asyncio.create_task(coro, name="test:cancel-target")
    if isinstance(step, int):
        await spin(step)
    else:
        await asyncio.sleep(step)
    done_before = task.done()
    reached = bool(probe()) if probe is not None else False
    requested = task.cancel()
    error: BaseException | None = None
    try:
        await task
    except asyncio.CancelledError:
        pass
    except BaseException as e:
        error = e
    if requested:
        # A cancellation that was requested must not be swallowed: that would leave a caller that believes
        # it was cancelled holding a lock it never sees.
        assert task.cancelled() or error is not None, (
            f"cancel requested at step {step!r}, but the task completed normally (cancellation swallowed)"
        )
    return Outcome(done_before, task.cancelled(), error, reached)


def grants_metric(etcd: EtcdCluster) -> float:
    return etcd.members[0].metric(LEASES_GRANTED)


# ---------------------------------------------------------------------------------------------------------
# Basic acquire / release
# ---------------------------------------------------------------------------------------------------------


async def test_acquire_release_key_token_and_increasing_tokens(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "basic"
    tokens: list[int] = []
    for _ in range(3):
        async with client.lock(name, timeout=2) as held:
            assert held.held
            assert held.key == f"{name}/{held.lease:x}"
            assert held.token == await create_revision(client, held.key)
            assert held.lease in set(await client.leases())
            kvs = (await client.get(held.key)).kvs
            assert kvs[0].lease == held.lease and kvs[0].value == b""
            assert await keys_under(client, ns) == {held.key: held.token}
            assert not held.lost.is_set() and held.lost_reason is None
            # The fencing compare works in the holder's own transactions.
            r = await held.txn([], [Op.put(ns + "fenced", str(held.token))])
            assert r.succeeded
            tokens.append(held.token)
            await client.delete(ns + "fenced")
        assert not held.held
        assert await keys_under(client, ns) == {}
        with pytest.raises(NotAcquiredError):
            held.is_owner()  # a released lock no longer hands out its fencing compare
    assert tokens == sorted(tokens) and len(set(tokens)) == 3, f"tokens not strictly increasing: {tokens}"
    await assert_clean(client, ns, base, allow_lingering=False)


async def test_body_exception_propagates_and_releases(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "boom"

    class Boom(Exception):
        pass

    seen: dict[str, Any] = {}
    with pytest.raises(Boom):
        async with client.lock(name, timeout=2) as held:
            seen["key"], seen["lease"] = held.key, held.lease
            assert await keys_under(client, ns) == {held.key: held.token}
            raise Boom
    assert seen["key"] == f"{name}/{seen['lease']:x}"
    assert await keys_under(client, ns) == {}, "the key outlived the body's exception"
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# try_lock
# ---------------------------------------------------------------------------------------------------------


async def test_try_lock_free_and_held(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "try"
    held = await client.try_lock(name)
    assert held is not None and held.held
    try:
        assert held.key == f"{name}/{held.lease:x}"
        assert held.token == await create_revision(client, held.key)

        # The name is held: a second try_lock answers None at once and leaves neither key nor lease.
        t0 = time.monotonic()
        second = await client.try_lock(name)
        assert second is None
        assert time.monotonic() - t0 < 1.0

        # try_lock awaited its own cleanup: what it created is gone by the time it returns. The second
        # try needed a second default session (one key per name and lease), which stays until idle.
        assert await keys_under(client, ns) == {held.key: held.token}
        assert held.lease in default_session_leases(client)
        assert set(await client.leases()) - base.leases == default_session_leases(client)
        assert client.resources().keepalive_leases == len(default_session_leases(client))
        assert not held.lost.is_set()
    finally:
        await held.release()
    assert not held.held
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# Timeout
# ---------------------------------------------------------------------------------------------------------


async def test_timeout_while_held_raises_and_leaves_nothing(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "timeout"
    async with client.lock(name, timeout=2) as holder:
        body_ran = False
        t0 = time.monotonic()
        with pytest.raises(LockTimeout) as ei:
            async with client.lock(name, timeout=0.3):
                body_ran = True
        elapsed = time.monotonic() - t0
        assert not body_ran, "the body ran without the lock"
        assert isinstance(ei.value, TimeoutError) and isinstance(ei.value, LockError)
        assert name in str(ei.value)
        assert 0.3 <= elapsed < 1.3, f"LockTimeout after {elapsed:.3f}s for timeout=0.3"

        # The timed-out acquire awaited its own cleanup: only the holder's key is there, and the client's
        # default sessions (the second one was needed for a second lock of the name at once).
        assert await keys_under(client, ns) == {holder.key: holder.token}
        assert set(await client.leases()) - base.leases == default_session_leases(client)
        assert client.resources().keepalive_leases == len(default_session_leases(client))
        assert holder.held and not holder.lost.is_set()
        assert (await client.txn([holder.is_owner()], [])).succeeded, "the holder no longer owns the lock"
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# Reentrancy and shared sessions
# ---------------------------------------------------------------------------------------------------------


async def test_not_reentrant_on_one_session(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "reentrant"
    async with client.session(10) as s:
        async with client.lock(name, session=s, timeout=2) as first:
            assert first.lease == s.lease_id
            token = first.token
            with pytest.raises(AlreadyHeldError) as ei:
                async with client.lock(name, session=s, timeout=2):
                    pytest.fail("the body ran on a reentrant acquire")
            msg = str(ei.value)
            assert name in msg and "reentrant" in msg, f"unclear message: {msg!r}"
            assert isinstance(ei.value, ConfigError)
            # The first holder is undisturbed: still held, its key is still there with the same revision.
            assert first.held and not first.lost.is_set(), f"first holder disturbed: {first.lost_reason}"
            assert await keys_under(client, ns) == {first.key: token}, "the first holder's key was touched"
            assert (await client.txn([first.is_owner()], [])).succeeded
        assert await keys_under(client, ns) == {}
        assert s.lease_id in set(await client.leases()), "releasing a lock ended the shared session"
    await assert_clean(client, ns, base)


async def test_different_names_share_the_session_lease(client: Client, ns: str) -> None:
    base = await baseline(client)
    async with client.session(10) as s:
        async with (
            client.lock(ns + "a", session=s, timeout=2) as a,
            client.lock(ns + "b", session=s, timeout=2) as b,
        ):
            assert a.lease == b.lease == s.lease_id
            assert a.key == f"{ns}a/{s.lease_id:x}" and b.key == f"{ns}b/{s.lease_id:x}"
            assert await keys_under(client, ns) == {a.key: a.token, b.key: b.token}
            assert a.token < b.token
            assert set(await client.leases()) - base.leases == {s.lease_id}
            assert client.resources().keepalive_leases == 1
        assert await keys_under(client, ns) == {}
        # Locking the same name again on the same session works once the first lock was released.
        async with client.lock(ns + "a", session=s, timeout=2) as again:
            assert again.lease == s.lease_id
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# FIFO, one wake-up per release
# ---------------------------------------------------------------------------------------------------------


async def test_fifo_and_exactly_one_waiter_woken_per_release(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "fifo"
    n = 8
    holder = await acquired(client.lock(name, timeout=2))
    locks = [client.lock(name, timeout=20) for _ in range(n)]
    release = [asyncio.Event() for _ in range(n)]
    grants: list[tuple[int, int]] = []  # (waiter, token) in grant order
    active = 0
    max_active = 0

    async def waiter(i: int) -> None:
        nonlocal active, max_active
        async with locks[i] as held:
            active += 1
            max_active = max(max_active, active)
            grants.append((i, held.token))
            await release[i].wait()
            active -= 1

    tasks = [asyncio.create_task(waiter(i), name=f"test:waiter-{i}") for i in range(n)]
    try:
        await wait_until(lambda: all(is_waiting(lk) for lk in locks), 5, "all 8 waiters parked")

        async def nine_keys() -> bool:
            return len(await keys_under(client, name + "/")) == n + 1

        await wait_until(nine_keys, 5, "holder + 8 queued keys")
        queued = await keys_under(client, name + "/")
        for lk in locks:
            m = mutex_of(lk)
            assert queued[m.key.decode()] == m.token, "a waiter's token is not its key's create_revision"
            assert m.token > holder.token and m.wakeups == 0
        expected_order = sorted(range(n), key=lambda i: mutex_of(locks[i]).token)
        nw: NameWatch = client._recipes.queues.names[name]
        events0 = nw.events

        await holder.release()
        for turn in range(n):
            await wait_until(count_reaches(grants, turn + 1), 5, f"grant #{turn + 1}")
            i, token = grants[turn]
            assert i == expected_order[turn], f"grant #{turn + 1} went to {i}, not {expected_order[turn]}"
            assert token == mutex_of(locks[i]).token
            assert mutex_of(locks[i]).wakeups == 1, f"waiter {i} woken {mutex_of(locks[i]).wakeups}x"
            for j in expected_order[turn + 1 :]:
                assert mutex_of(locks[j]).wakeups == 0, f"waiter {j} woken by release #{turn + 1}"
            assert client._recipes.queues.names.get(name) is nw, "the shared queue watcher was replaced"
            assert nw.events == events0 + turn + 1, f"{nw.events - events0} deletions for {turn + 1} releases"
            assert len(grants) == turn + 1 and max_active == 1
            release[i].set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await holder.release()

    assert [t for _, t in grants] == sorted(t for _, t in grants)
    wakeups = [mutex_of(lk).wakeups for lk in locks]
    assert wakeups == [1] * n, f"wake-ups per waiter: {wakeups}"
    assert max_active == 1
    await assert_clean(client, ns, base, allow_lingering=False)


# ---------------------------------------------------------------------------------------------------------
# Nested names
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [("x", "x/y"), ("x/y", "x")])
async def test_nested_names_do_not_block_each_other(client: Client, ns: str, first: str, second: str) -> None:
    base = await baseline(client)
    async with client.lock(ns + first, timeout=2) as a:
        t0 = time.monotonic()
        async with client.lock(ns + second, timeout=2) as b:
            assert time.monotonic() - t0 < 1.0, f"{second!r} waited for {first!r}"
            assert a.held and b.held and not a.lost.is_set()
            assert a.key == f"{ns}{first}/{a.lease:x}" and b.key == f"{ns}{second}/{b.lease:x}"
        assert await keys_under(client, ns) == {a.key: a.token}
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# Cancellation at every await point
# ---------------------------------------------------------------------------------------------------------

MAX_ITERATIONS = 3000
DELAYS = [0.0005 * i for i in range(1, 13)]  # 0.5 ms .. 6 ms
TRIAL_DEADLINE = 1.0  # per cancelled trial: cleanup is awaited inside the cancelled task, so this is ample


async def settle(
    client: Client,
    ns: str,
    base: Baseline,
    *,
    keys: frozenset[str] = frozenset(),
    leases: frozenset[int] = frozenset(),
    keepalive: int = 0,
    repair: Callable[[], Awaitable[None]] | None = None,
) -> list[str]:
    """After one cancelled trial: [] if it left nothing, else what it left (then removed: keys deleted,
    leases revoked, so that the next trial starts clean).

    The cancelled task awaits its own (shielded) cleanup before it ends, so keys and leases are final by
    now and are checked once; only the client's background work (tasks ending, keepalive leaving) is
    waited for. (A lease whose grant etcd applies only after the cancelled call gave up shows up late:
    it is then reported under a later step.)"""
    local: list[str] = []

    def settled() -> bool:
        nonlocal local
        local = local_leftovers(client, base, keepalive=keepalive)
        return not local

    with contextlib.suppress(AssertionError):
        await wait_until(settled, TRIAL_DEADLINE, "background work settled")
    problems = await server_leftovers(client, ns, base, keys=keys, leases=leases) + local
    if problems:
        if repair is not None:
            await repair()
        for key in set(await keys_under(client, ns)) - keys:
            await client.delete(key)
        for lease in set(await client.leases()) - base.leases - leases - every_default_session_lease():
            with contextlib.suppress(LeaseNotFoundError):
                await client.revoke(lease)
        await wait_until(
            lambda: client.resources().keepalive_leases == keepalive + len(default_session_leases(client)),
            5,
            "keepalive tidied",
        )
    return problems


def report(failures: dict[str, list[str]], trials: int) -> str:
    lines = [f"{len(failures)} of {trials} cancelled trials left something behind:"]
    shown = list(failures.items())[:12]
    lines += [f"  step {step}: {problems}" for step, problems in shown]
    if len(failures) > len(shown):
        lines.append(f"  ... and {len(failures) - len(shown)} more")
    return "\n".join(lines)


async def test_cancel_uncontended_acquire_at_every_point(client: Client, ns: str) -> None:
    base = await baseline(client)
    failures: dict[str, list[str]] = {}
    trials = 0

    async def trial(step: int | float, fresh: bool) -> bool:
        """One cancelled acquire; True once the acquire completed before the cancel."""
        name = f"{ns}free-{step}" if fresh else f"{ns}free"
        nonlocal trials
        trials += 1
        lock = client.lock(name, timeout=None)
        out = await cancel_at(lock.acquire(), step)
        if out.done_before_cancel:
            assert out.error is None, f"step {step!r}: acquire failed: {out.error!r}"
            assert lock.held
            await lock.release()
        else:
            assert out.cancelled, f"step {step!r}: acquire ended by {out.error!r}, not by the cancel"
            assert not lock.held
        problems = await settle(client, ns, base)
        if problems:
            failures[f"{step!r} ({'fresh' if fresh else 'same'} name)"] = problems
        return out.done_before_cancel

    # Each step twice: on a name whose idle queue watcher is still around (locked again and again), and on
    # a name this client never locked (the watcher is created by this very acquire).
    for fresh in (False, True):
        completed_at: int | None = None
        for k in range(MAX_ITERATIONS):
            if await trial(k, fresh):
                completed_at = k
                break
        assert completed_at is not None, f"the acquire never completed within {MAX_ITERATIONS} iterations"
        assert completed_at > 2, "the acquire completed without awaiting anything"
        for d in DELAYS:
            if await trial(d, fresh):
                break
    assert not failures, report(failures, trials)
    await assert_clean(client, ns, base, allow_lingering=False)


async def test_cancel_contended_acquire_at_every_point(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    name = ns + "cancel-held"
    failures: dict[str, list[str]] = {}
    trials = 0
    async with second_client(etcd_endpoints) as other:
        other_base = await baseline(other)
        holder = await acquired(other.lock(name, timeout=2))
        try:
            # The holder's client settles (its queue watcher is created) before the baseline is taken.
            await wait_until(
                lambda: other._recipes.queues.names[name].watcher.created.is_set(), 2, "holder's watcher"
            )
            base = await baseline(client)
            holder_key = frozenset({holder.key})
            holder_lease = frozenset({holder.lease})

            async def trial(step: int | float) -> bool:
                """One cancelled acquire; True if it had parked on the queue when cancelled."""
                nonlocal trials
                trials += 1
                lock = client.lock(name, timeout=None)
                out = await cancel_at(lock.acquire(), step, probe=lambda: is_waiting(lock))
                assert not out.done_before_cancel, f"step {step!r}: acquired a held lock: {out.error!r}"
                assert out.cancelled, f"step {step!r}: acquire ended by {out.error!r}, not by the cancel"
                assert not lock.held
                problems = await settle(client, ns, base, keys=holder_key, leases=holder_lease)
                if problems:
                    failures[repr(step)] = problems
                assert holder.held and not holder.lost.is_set(), f"holder disturbed: {holder.lost_reason}"
                return out.reached

            parked_at: int | None = None
            for k in range(MAX_ITERATIONS):
                if await trial(k) and parked_at is None:
                    parked_at = k
                if parked_at is not None and k >= parked_at + 3:
                    break
            assert parked_at is not None, f"the acquire never parked within {MAX_ITERATIONS} iterations"
            assert parked_at > 2
            for d in DELAYS:
                if await trial(d):
                    break
            assert (await other.txn([holder.is_owner()], [])).succeeded
        finally:
            await holder.release()
        await assert_clean(other, ns, other_base, allow_lingering=False)
    assert not failures, report(failures, trials)
    await assert_clean(client, ns, base, allow_lingering=False)


@pytest.mark.parametrize("shared_session", [False, True], ids=["own-session", "shared-session"])
async def test_cancel_release_at_every_point(client: Client, ns: str, shared_session: bool) -> None:
    name = ns + "cancel-release"
    failures: dict[str, list[str]] = {}
    trials = 0
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(client.session(10)) if shared_session else None
        if session is not None:
            await wait_until(lambda: session.keeper.renewals > 0, 5, "the session's first renewal")
        base = await baseline(client)
        keepalive = 1 if shared_session else 0

        async def trial(step: int | float) -> bool:
            nonlocal trials
            trials += 1
            held = await acquired(client.lock(name, timeout=2, session=session))
            out = await cancel_at(held.release(), step)
            assert out.error is None, f"step {step!r}: release raised {out.error!r}"
            assert not held.held
            problems = await settle(client, ns, base, keepalive=keepalive, repair=held.release)
            if problems:
                failures[repr(step)] = problems
            return out.done_before_cancel

        # Step 0 would cancel the task before release() runs a single line; start at 1.
        completed = False
        for k in range(1, MAX_ITERATIONS):
            if await trial(k):
                completed = True
                break
        assert completed
        for d in DELAYS:
            if await trial(d):
                break
    assert not failures, report(failures, trials)
    await assert_clean(client, ns, base, allow_lingering=False)


# ---------------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------------


def record_loss(held: Lock) -> list[float]:
    """The monotonic times at which held's lost-callback ran."""
    fired: list[float] = []
    held.add_lost_callback(lambda _reason: fired.append(time.monotonic()))
    return fired


async def revoke_and_time_loss(client: Client, other: Client, held: Lock) -> tuple[float, str]:
    """Revoke held's lease from `other`; (seconds from the revoke call's return until lost fired, a note
    saying why it fired and whether the lock's queue watcher was live on the server at the revoke)."""
    fired = record_loss(held)
    live = client._recipes.queues.names[held.name].watcher.created.is_set()
    await other.revoke(held.lease)
    returned = time.monotonic()
    await asyncio.wait_for(held.lost.wait(), 5)
    reason = held.lost_reason
    assert reason, "lost fired without a reason"
    assert held.key in reason or f"{held.lease:x}" in reason, reason
    return max(0.0, fired[0] - returned), f"{reason} (watcher live at revoke: {live})"


async def test_revoked_lease_fires_lost_within_100ms(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    results: list[tuple[float, str]] = []
    async with second_client(etcd_endpoints) as other:
        for i in range(5):
            # A name of its own each time: the revoke races the creation of the lock's queue watcher.
            async with client.lock(f"{ns}revoked-{i}", timeout=2) as held:
                results.append(await revoke_and_time_loss(client, other, held))
            assert await keys_under(client, ns) == {}
    assert max(lat for lat, _ in results) < 0.1, f"lost fired late after the revoke: {results}"
    await assert_clean(client, ns, base)


async def test_revoke_after_holder_settled_fires_lost_within_100ms(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    """Same as above, but the revoke comes only once the holder's queue watcher is live on the server."""
    base = await baseline(client)
    name = ns + "revoked-settled"
    results: list[tuple[float, str]] = []
    async with second_client(etcd_endpoints) as other:
        for _ in range(5):
            async with client.lock(name, timeout=2) as held:
                await wait_until(
                    lambda: client._recipes.queues.names[name].watcher.created.is_set(), 2, "queue watcher"
                )
                results.append(await revoke_and_time_loss(client, other, held))
    assert max(lat for lat, _ in results) < 0.1, f"lost fired late after the revoke: {results}"
    await assert_clean(client, ns, base)


async def test_key_deleted_from_outside_fires_lost(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "deleted"
    async with second_client(etcd_endpoints) as other, client.lock(name, timeout=2) as held:
        await wait_until(
            lambda: client._recipes.queues.names[name].watcher.created.is_set(), 2, "queue watcher"
        )
        fired = record_loss(held)
        r = await other.delete(held.key)
        returned = time.monotonic()
        assert r.deleted == 1
        await asyncio.wait_for(held.lost.wait(), 2)
        assert fired[0] - returned < 0.1
        assert held.lost_reason is not None and "deleted" in held.lost_reason, held.lost_reason
        assert held.key in held.lost_reason
        # The fencing compare no longer holds.
        assert not (await client.txn([held.is_owner()], [])).succeeded
    await assert_clean(client, ns, base)


@pytest.mark.parametrize("how", ["delete", "revoke"])
@pytest.mark.parametrize("take", ["lock", "try_lock"])
async def test_loss_right_after_acquire_is_seen_while_the_queue_watcher_is_still_being_created(
    client: Client, ns: str, etcd_endpoints: list[str], how: str, take: str
) -> None:
    """The loss comes before the lock's queue watcher is live on the server.

    The client's watch stream creates watchers one at a time, so unrelated watchers opened just before the
    acquire (an application watching other keys) delay the lock's own watcher. A deletion of the lock key
    in that window must still end the lock: otherwise it stays "held" with no key, and another client
    takes the lock meanwhile."""
    base = await baseline(client)
    name = ns + "early-loss"
    noise = [client.watch(f"{ns}noise/{i}") for i in range(300)]
    async with second_client(etcd_endpoints) as other:
        try:
            for w in noise:
                w.start()
            if take == "lock":
                held: Lock | None = await acquired(client.lock(name, timeout=2))
            else:
                held = await client.try_lock(name)
            assert held is not None
            try:
                if how == "delete":
                    assert (await other.delete(held.key)).deleted == 1
                else:
                    await other.revoke(held.lease)
                returned = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(held.lost.wait(), 1.0)
                if not held.lost.is_set():
                    # Show the consequence: the lock is free on the server while this holder still holds it.
                    async with other.lock(name, timeout=1) as second:
                        two_holders = held.held and not held.lost.is_set() and second.held
                    pytest.fail(
                        f"lock key {held.key} gone ({how}) but lost not fired within 1 s; held.held="
                        f"{held.held}; another client acquired the lock meanwhile: {two_holders}"
                    )
                assert time.monotonic() - returned < 0.1, "lost fired late"
            finally:
                await held.release()
        finally:
            for w in noise:
                w.cancel()
    await assert_clean(client, ns, base)


async def test_cancel_on_loss_cancels_body_and_raises_lock_lost(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "cancel-on-loss"
    never = asyncio.Event()
    body_cancelled = False
    async with second_client(etcd_endpoints) as other:
        revoker: asyncio.Task[Any] | None = None
        t0 = time.monotonic()
        with pytest.raises(LockLost) as ei:
            async with client.lock(name, timeout=2, cancel_on_loss=True) as held:
                revoker = asyncio.create_task(other.revoke(held.lease))
                try:
                    await never.wait()
                except asyncio.CancelledError:
                    body_cancelled = True
                    raise
        elapsed = time.monotonic() - t0
        assert revoker is not None
        await revoker
    assert body_cancelled, "the body was not cancelled"
    assert elapsed < 2.0, f"the body ran {elapsed:.2f}s after the loss"
    assert name in str(ei.value) and "lost" in str(ei.value)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0, "the loss cancellation leaked into the caller"
    await assert_clean(client, ns, base)


async def test_cancel_on_loss_does_not_turn_outside_cancel_into_lock_lost(client: Client, ns: str) -> None:
    """An ordinary cancellation of the body's task stays a CancelledError (and the lock is released)."""
    base = await baseline(client)
    name = ns + "cancel-outside"
    entered = asyncio.Event()

    async def body() -> None:
        async with client.lock(name, timeout=2, cancel_on_loss=True):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(body())
    await asyncio.wait_for(entered.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_clean(client, ns, base)


async def test_stopped_keepalive_fires_lost_at_local_deadline(etcd_fresh: EtcdCluster, ns: str) -> None:
    ttl = 3
    member = etcd_fresh.members[0]
    name = ns + "keepalive"
    async with Client(etcd_fresh.endpoints) as c:
        base = await baseline(c)
        async with c.lock(name, ttl=ttl, timeout=2) as held:
            assert (await c.time_to_live(held.lease)).granted_ttl == ttl
            assert held.contender.session.keeper.ttl == ttl
            fired = record_loss(held)
            pausing_at = time.monotonic()
            try:
                await asyncio.to_thread(member.pause)
                paused_at = time.monotonic()  # the member is stopped (SIGSTOP, seen in /proc) by now
                await asyncio.wait_for(held.lost.wait(), ttl + 2)
            finally:
                await asyncio.to_thread(member.resume)
            # Every renewal that succeeded was sent before paused_at, so the local deadline (send time of the
            # last successful renewal + TTL) is before paused_at + TTL; 20 ms for the timer's wake-up.
            since_pause = fired[0] - paused_at
            assert since_pause < ttl + 0.02, f"lost fired {since_pause:.3f}s after the pause (TTL {ttl}s)"
            # Renewals go every TTL/3, so the last successful one was sent at most ~TTL/3 before the pause:
            # the lease may not be given up much earlier than 2/3 TTL into the pause.
            assert fired[0] - pausing_at > ttl / 2, f"lost fired {fired[0] - pausing_at:.3f}s into the pause"
            assert held.lost_reason is not None and "keepalive" in held.lost_reason, held.lost_reason
            assert c.resources().keepalive_leases == 0
        await assert_clean(c, ns, base, timeout=10)
    assert c.resources().total() == 0


async def test_own_key_deleted_while_waiting_fails_at_once(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "waiting-deleted"
    async with second_client(etcd_endpoints) as other, client.lock(name, timeout=2) as holder:
        lock = client.lock(name, timeout=20)
        task = asyncio.create_task(lock.acquire())
        try:
            await wait_until(lambda: is_waiting(lock), 5, "the waiter parked")
            waiter_key = mutex_of(lock).key.decode()
            waiter_lease = mutex_of(lock).lease
            assert set(await keys_under(client, ns)) == {holder.key, waiter_key}
            await other.delete(waiter_key)
            t0 = time.monotonic()
            with pytest.raises(LockLost) as ei:
                await asyncio.wait_for(task, 2)
            assert time.monotonic() - t0 < 0.5, "acquire did not fail at once"
            assert "deleted" in str(ei.value) or "vanished" in str(ei.value), str(ei.value)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert not lock.held
        assert holder.held and not holder.lost.is_set()
        assert await keys_under(client, ns) == {holder.key: holder.token}

        async def waiter_lease_gone() -> bool:
            return waiter_lease not in set(await client.leases())

        await wait_until(waiter_lease_gone, 2, "the waiter's lease revoked")
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------

BAD_INPUTS: list[tuple[str, dict[str, Any]]] = [
    ("empty name", {"name": ""}),
    ("blank name", {"name": "   "}),
    ("non-str name", {"name": 42}),
    ("bytes name", {"name": b"jobs"}),
    ("trailing slash", {"name": "{ns}jobs/"}),
    ("negative timeout", {"timeout": -1}),
    ("nan timeout", {"timeout": float("nan")}),
    ("bool timeout", {"timeout": True}),
    ("ttl 0", {"ttl": 0}),
    ("negative ttl", {"ttl": -5}),
    ("float ttl", {"ttl": 2.5}),
]


@pytest.mark.parametrize(("what", "kwargs"), BAD_INPUTS, ids=[w for w, _ in BAD_INPUTS])
async def test_bad_input_raises_config_error_and_creates_nothing(
    client: Client, ns: str, etcd: EtcdCluster, what: str, kwargs: dict[str, Any]
) -> None:
    base = await baseline(client)
    granted = grants_metric(etcd)
    args: dict[str, Any] = {"name": ns + "bad", "timeout": 1, **kwargs}
    if isinstance(args["name"], str):
        args["name"] = args["name"].format(ns=ns)
    name = args.pop("name")
    body_ran = False
    with pytest.raises(ConfigError) as ei:
        async with client.lock(name, **args):
            body_ran = True
    assert not body_ran
    assert not isinstance(ei.value, AlreadyHeldError)
    assert str(ei.value), "empty error message"
    assert grants_metric(etcd) == granted, f"{what}: a lease was granted before the input was rejected"
    await assert_clean(client, ns, base)


@pytest.mark.parametrize(
    ("what", "kwargs"),
    [b for b in BAD_INPUTS if "timeout" not in b[1]],
    ids=[w for w, k in BAD_INPUTS if "timeout" not in k],
)
async def test_try_lock_bad_input_raises_config_error(
    client: Client, ns: str, etcd: EtcdCluster, what: str, kwargs: dict[str, Any]
) -> None:
    base = await baseline(client)
    granted = grants_metric(etcd)
    args: dict[str, Any] = {"name": ns + "bad", **kwargs}
    if isinstance(args["name"], str):
        args["name"] = args["name"].format(ns=ns)
    name = args.pop("name")
    with pytest.raises(ConfigError):
        await client.try_lock(name, **args)
    assert grants_metric(etcd) == granted, f"{what}: a lease was granted before the input was rejected"
    await assert_clean(client, ns, base)


async def test_session_of_another_client_is_refused(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    async with second_client(etcd_endpoints) as other, other.session(10) as s:
        with pytest.raises(ConfigError, match="another client"):
            client.lock(ns + "x", session=s)
    await assert_clean(client, ns, base)


async def test_lock_object_is_reusable(client: Client, ns: str) -> None:
    base = await baseline(client)
    lock = client.lock(ns + "again", timeout=2)
    tokens: list[int] = []
    for _ in range(2):
        async with lock as held:
            assert held is lock and lock.held
            tokens.append(lock.token)
        assert not lock.held
    assert tokens[0] < tokens[1], f"the second acquisition did not get a new token: {tokens}"
    await assert_clean(client, ns, base)
