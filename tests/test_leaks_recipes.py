"""Leak tests for the recipes on the shared queue: election campaigns, observations, semaphore and
read/write-lock waits.

Each test churns one recipe through the ways an acquisition or an observation ends (held, then released
or resigned; timed out; refused at once; cancelled early, while queued or while holding; on the default
session and on an explicit one), then checks that what it used comes back to the baseline taken after a
warm-up, within a deadline (a name's queue watcher and extra default sessions linger a second after their
last use):

  * asyncio tasks;
  * watchers in the client (resources().watchers) and in etcd (etcd_debugging_mvcc_watcher_total);
  * leases: none beyond the baseline but the client's default sessions, as many of them as before;
  * keys under the test's namespace: none;
  * objects: the handles (Term, Slot, ReadLock, WriteLock), their Contenders, the observations and the
    tasks that used them are freed by reference counting alone, and nothing is left in reference cycles.

The module runs its own etcd, so etcd's watcher gauge and lease list count only what these tests do.
scripts/check_leak_tests.py puts leaks back into the recipes on purpose (cases L-P) and checks that these
tests then fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from etcdlock import Client, Election, Leader, LockTimeout, Semaphore, Term
from etcdlock._recipes.holdable import Holdable
from etcdlock.testing import EtcdCluster
from tests.waiting import wait_until

T = TypeVar("T")

ROUNDS = 4
DEADLINE = 15.0  # for everything to come back: lingering watchers and sessions go after about a second
WAIT = 30.0  # for a churn's tasks to end (generous: two cores, shared with other test runs)
SHORT = 0.2  # the timeout of the acquisitions meant to time out (the queue is held meanwhile)


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    """This module's own etcd (it overrides the session's for `etcd_endpoints` and `client`): its
    watcher gauge and lease list see only these tests."""
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture
def save_all_garbage() -> Iterator[list[object]]:
    """gc.garbage, keeping whatever the cyclic GC frees from here on: it must stay empty."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


# ---- baseline ----


def _server_watchers(etcd: EtcdCluster) -> float:
    return etcd.members[0].metric("etcd_debugging_mvcc_watcher_total")


def _default_leases(client: Client) -> set[int]:
    return {s.lease_id for s in client._recipes.sessions.sessions()}


def _describe(task: asyncio.Task[Any]) -> str:
    return f"{task.get_name()} ({task.get_coro().__qualname__})"  # type: ignore[union-attr]


@dataclass(frozen=True)
class Baseline:
    tasks: weakref.WeakSet[asyncio.Task[Any]]
    client_watchers: int
    server_watchers: float
    leases: frozenset[int]
    default_sessions: int


async def _settle(what: str, now: Callable[[], Awaitable[object]], want: object) -> None:
    """Wait until now() == want (DEADLINE), else fail saying what it still is."""
    last: list[object] = []

    async def reached() -> bool:
        last[:] = [await now()]
        return last[0] == want

    with contextlib.suppress(AssertionError):
        await wait_until(reached, timeout=DEADLINE, what=what)
    assert last[0] == want, f"{what}: {last[0]!r} after {DEADLINE:g}s, want {want!r}"


async def baseline(client: Client, etcd: EtcdCluster, *, watchers: int) -> Baseline:
    """The state after a warm-up, once it is quiet: `watchers` in the client (names still in use), the
    same in etcd, and no lease but the default sessions'."""

    async def client_watchers() -> int:
        return client.resources().watchers

    async def server_watchers() -> float:
        return _server_watchers(etcd)

    async def other_leases() -> set[int]:
        return set(await client.leases()) - _default_leases(client)

    await _settle("client watchers after the warm-up", client_watchers, watchers)
    await _settle("etcd watchers after the warm-up", server_watchers, watchers)
    await _settle("leases beyond the default sessions after the warm-up", other_leases, set())
    gc.collect()
    return Baseline(
        weakref.WeakSet(asyncio.all_tasks()),
        watchers,
        _server_watchers(etcd),
        frozenset(await client.leases()),
        len(client._recipes.sessions.sessions()),
    )


async def assert_back_to_baseline(client: Client, etcd: EtcdCluster, ns: str, base: Baseline) -> None:
    """Everything back to `base` within DEADLINE, and no key left under ns."""

    async def client_watchers() -> int:
        return client.resources().watchers

    async def server_watchers() -> float:
        return _server_watchers(etcd)

    async def new_leases() -> set[int]:
        # Leases granted since the baseline that are not the client's default sessions.
        return set(await client.leases()) - base.leases - _default_leases(client)

    async def default_sessions() -> int:
        return len(client._recipes.sessions.sessions())

    async def keys() -> list[str]:
        return [kv.key.decode() for kv in (await client.get(ns, prefix=True, keys_only=True)).kvs]

    async def new_tasks() -> list[str]:
        return sorted(_describe(t) for t in asyncio.all_tasks() if t not in base.tasks)

    await _settle("client watchers", client_watchers, base.client_watchers)
    await _settle("etcd watchers (etcd_debugging_mvcc_watcher_total)", server_watchers, base.server_watchers)
    await _settle("leases beyond the baseline and the default sessions", new_leases, set())
    await _settle("the client's default sessions", default_sessions, base.default_sessions)
    await _settle(f"keys under {ns}", keys, [])
    await _settle("asyncio tasks beyond the baseline", new_tasks, [])


# ---- objects ----


class Refs:
    """Weak references to what a test used: none may outlive it."""

    def __init__(self) -> None:
        self._refs: list[weakref.ref[Any]] = []

    def add(self, *objects: object) -> None:
        self._refs += [weakref.ref(o) for o in objects if o is not None]

    def handle(self, h: Holdable) -> None:
        """A handle and its latest acquisition (its Contender), held or not."""
        self.add(h, h._last)

    def alive(self) -> list[str]:
        return sorted(type(o).__name__ for r in self._refs if (o := r()) is not None)


def assert_freed(refs: Refs, garbage: list[object]) -> None:
    alive = refs.alive()
    assert not alive, f"{len(alive)} objects outlive the churn without a gc pass: {alive[:12]}"
    gc.collect()
    kinds = sorted({type(o).__name__ for o in garbage})
    assert not garbage, f"the churn left {len(garbage)} objects in reference cycles: {kinds[:12]}"


# ---- the churn's parts ----


class Round:
    """The tasks of one churn round. Outcomes come back as plain values (a cancelled task's exception and
    its traceback's frames would keep the handles alive)."""

    def __init__(self, refs: Refs) -> None:
        self.refs = refs

    def start(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro)
        self.refs.add(task)
        return task

    @staticmethod
    async def outcomes(tasks: list[asyncio.Task[T]]) -> list[T | str]:
        _, pending = await asyncio.wait(tasks, timeout=WAIT)
        assert not pending, f"{len(pending)} of {len(tasks)} tasks still running after {WAIT:g}s"
        out: list[T | str] = []
        for t in tasks:
            if t.cancelled():
                # Taken as an awaiter would: a cancelled task keeps its CancelledError until then, and
                # the frames of its traceback (an asyncio.timeout() in one of them points back at the
                # task) would make a cycle that no recipe is to blame for.
                with contextlib.suppress(asyncio.CancelledError):
                    t.result()
                out.append("cancelled")
            else:
                out.append(t.result())  # raises what the task raised: that fails the test
        return out

    async def cancel(self, tasks: list[asyncio.Task[T]]) -> None:
        for t in tasks:
            t.cancel()
        assert await self.outcomes(tasks) == ["cancelled"] * len(tasks)

    async def cancel_early(self, make: Callable[[int], Coroutine[Any, Any, Any]], n: int) -> None:
        """n acquisitions cancelled one after the other, a few more turns of the loop apart each: while a
        session starts, while the acquire Txn is on its way, ..."""
        tasks = [self.start(make(i)) for i in range(n)]
        for turns, task in enumerate(tasks):
            for _ in range(turns):
                await asyncio.sleep(0)  # a cancellation point, not a synchronization
            task.cancel()
        assert await self.outcomes(tasks) == ["cancelled"] * n


async def hold_in_turn(
    cm: AbstractAsyncContextManager[Holdable], refs: Refs, inside: Callable[[Holdable], Awaitable[None]]
) -> int:
    """Wait for the turn, check it, run `inside`, leave (release / resign). Returns the fencing token."""
    async with cm as h:
        await h.ensure_held()
        token = h.token
        await inside(h)
        refs.handle(h)
    return token


async def hold_until(
    cm: AbstractAsyncContextManager[Holdable], refs: Refs, holding: asyncio.Event, release: asyncio.Event
) -> str:
    """Hold until `release` is set (or the task is cancelled)."""
    async with cm as h:
        refs.handle(h)
        holding.set()
        await release.wait()
    return "done"


async def never_in(cm: AbstractAsyncContextManager[Holdable]) -> str:
    """Queue and be cancelled (or time out) before the turn comes."""
    async with cm as h:
        raise AssertionError(f"{h!r} got in while it should still be queued")
    return "done"  # (unreachable: for the type)


async def times_out(h: Holdable, refs: Refs, *, by_acquire: bool) -> str:
    """Give up after the handle's timeout: acquire() returns False, `async with` raises LockTimeout."""
    refs.add(h)
    try:
        if by_acquire:
            got = await h.acquire(SHORT)
            assert not got, f"{h!r} was acquired while the queue was held"
        else:
            try:
                async with h:
                    raise AssertionError(f"{h!r} was acquired while the queue was held")
            except LockTimeout:
                pass
    finally:
        refs.handle(h)
    return "timed out"


async def refused(h: Holdable, refs: Refs) -> None:
    """One attempt (timeout=0) while the queue is held: refused, nothing left behind."""
    assert not await h.acquire(timeout=0), f"{h!r} was acquired while the queue was held"
    refs.handle(h)


async def queued(client: Client, prefix: str, n: int) -> None:
    """Wait until n keys are in the queue under prefix."""

    async def count() -> bool:
        return (await client.get(prefix, prefix=True, count_only=True)).count == n

    await wait_until(count, timeout=WAIT, what=f"{n} keys queued under {prefix}")


# ---- election: campaigns ----


async def _campaign_round(client: Client, election: Election, leader: Term, refs: Refs, r: int) -> None:
    churn = Round(refs)
    tokens: list[int] = []

    async def lead(h: Holdable) -> None:
        now = await election.leader()
        assert now is not None and now.key == h.key, f"{h!r} led while etcd says {now}"
        tokens.append(h.token)
        if len(tokens) % 2:
            assert isinstance(h, Term)
            await h.resign()  # inside the block: leaving it then has nothing left to do

    async def on_own_session(i: int) -> int:
        async with client.session(10) as session:
            term = election.campaign(f"own-{r}-{i}", session=session)
            refs.add(term, session)
            return await hold_in_turn(term, refs, lead)

    assert await leader.acquire(timeout=WAIT)
    await leader.proclaim(f"leader, round {r}")
    await refused(election.campaign("refused"), refs)

    in_turn = [churn.start(hold_in_turn(election.campaign(f"wait-{r}-{i}"), refs, lead)) for i in range(3)]
    in_turn.append(churn.start(on_own_session(0)))
    waiting = [churn.start(never_in(election.campaign(f"cancel-{r}-{i}"))) for i in range(3)]
    leading, forever = asyncio.Event(), asyncio.Event()
    cancelled_leading = churn.start(hold_until(election.campaign(f"lead-{r}"), refs, leading, forever))
    await queued(client, election.name + "/", 1 + len(in_turn) + len(waiting) + 1)

    await churn.cancel_early(lambda i: never_in(election.campaign(f"early-{r}-{i}")), 3)
    timed = [
        churn.start(times_out(election.campaign(f"timeout-{r}-{i}", timeout=SHORT), refs, by_acquire=i == 0))
        for i in range(3)
    ]
    assert await churn.outcomes(timed) == ["timed out"] * 3
    await churn.cancel(waiting)

    await leader.resign()
    await asyncio.wait_for(leading.wait(), WAIT)  # its turn came (somewhere among the others')
    await churn.cancel([cancelled_leading])  # cancelled while leading: resigns on the way out
    got = await churn.outcomes(in_turn)
    assert sorted(got) == tokens == sorted(tokens), (got, tokens)  # led one by one, in queue order
    assert await election.leader() is None


async def test_campaign_churn_leaves_nothing(
    client: Client, etcd: EtcdCluster, ns: str, save_all_garbage: list[object]
) -> None:
    election = client.election(ns + "e")
    leader = election.campaign("leader")  # one Term, campaigning again every round
    async with leader:  # warm-up: the default session, the watch stream
        pass
    base = await baseline(client, etcd, watchers=0)
    save_all_garbage.clear()
    refs = Refs()
    for r in range(ROUNDS):
        await _campaign_round(client, election, leader, refs, r)
        refs.handle(leader)
    await assert_back_to_baseline(client, etcd, ns, base)
    del leader  # (it keeps its latest acquisition, for diagnosis)
    assert_freed(refs, save_all_garbage)


# ---- election: observations ----

OBSERVE_MODES = ("break-first", "break", "raise", "timeout", "cancel", "aclose")


class _Left(Exception):
    """An observer's way out by an exception in its loop."""


async def _observer(
    client: Client, election: Election, mode: str, first: asyncio.Event, second: asyncio.Event, refs: Refs
) -> list[Leader]:
    """Observe until the second leader (a new leader, or a new value) is seen, then leave by `mode`; the
    'cancel' and 'timeout' ones leave while waiting for a third that never comes."""
    seen: list[Leader] = []
    observation = election.observe()
    refs.add(observation)
    if mode == "aclose":
        async with contextlib.aclosing(observation) as leaders:
            async for leader in leaders:
                seen.append(leader)
                if len(seen) == 1:
                    first.set()
                    continue
                before = client.resources().watchers
                await leaders.aclose()
                # Ended by aclose() itself, not later when the loop finalizes the generators it used:
                # aclose() does not suspend, so no other watcher came or went meanwhile.
                after = client.resources().watchers
                assert after == before - 1, f"aclose() left the observation's watcher: {before} -> {after}"
                second.set()
                break
        return seen
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(None) as deadline:
            async for leader in observation:
                seen.append(leader)
                if len(seen) == 1:
                    first.set()
                    if mode == "break-first":
                        break  # before its watch exists
                    continue
                assert len(seen) == 2, f"a third leader came: {seen}"
                second.set()
                if mode == "break":
                    break
                if mode == "raise":
                    raise _Left
                if mode == "timeout":
                    deadline.reschedule(loop.time() + 0.05)
    except _Left:
        pass
    except TimeoutError:
        assert mode == "timeout" and len(seen) == 2, (mode, seen)
    return seen


async def _observe_round(
    client: Client, election: Election, now: Term, then: Term, refs: Refs, r: int
) -> tuple[Term, Term]:
    """Observers of every mode see the leader, then a change: a new value (even rounds) or a hand-over
    to the other candidate (odd rounds). Returns the candidates, the leader first."""
    churn = Round(refs)
    firsts = {m: [asyncio.Event() for _ in range(3)] for m in OBSERVE_MODES}
    seconds = {m: [asyncio.Event() for _ in range(3)] for m in OBSERVE_MODES}
    tasks = {
        m: [
            churn.start(_observer(client, election, m, f, s, refs))
            for f, s in zip(firsts[m], seconds[m], strict=True)
        ]
        for m in OBSERVE_MODES
    }
    await asyncio.wait_for(asyncio.gather(*(e.wait() for es in firsts.values() for e in es)), WAIT)
    first = await election.leader()
    if r % 2:
        acquiring = churn.start(then.acquire(timeout=WAIT))
        await queued(client, election.name + "/", 2)
        await now.resign()
        assert await acquiring
        now, then = then, now
    else:
        await now.proclaim(f"value {r}")
    second = await election.leader()
    assert first is not None and second is not None
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in seconds["cancel"])), WAIT)
    await churn.cancel(tasks.pop("cancel"))
    for mode, ts in tasks.items():
        want = [first] if mode == "break-first" else [first, second]
        for seen in await churn.outcomes(ts):
            assert isinstance(seen, list)
            assert [(s.key, s.value) for s in seen] == [(w.key, w.value) for w in want], (mode, seen)
    refs.handle(now)
    return now, then


async def test_observe_churn_leaves_nothing(
    client: Client, etcd: EtcdCluster, ns: str, save_all_garbage: list[object]
) -> None:
    election = client.election(ns + "o")
    # Two candidates take turns: every other round the leader hands over, in the others it proclaims.
    now, then = election.campaign("a"), election.campaign("b")
    async with now:  # warm-up
        async for _ in election.observe():
            break
    base = await baseline(client, etcd, watchers=0)
    save_all_garbage.clear()
    refs = Refs()
    assert await now.acquire(timeout=WAIT)
    for r in range(ROUNDS):
        now, then = await _observe_round(client, election, now, then, refs, r)
    await now.resign()
    assert await election.leader() is None
    await assert_back_to_baseline(client, etcd, ns, base)
    del now, then  # (they keep their latest acquisitions, for diagnosis)
    assert_freed(refs, save_all_garbage)


# ---- semaphore ----


async def _semaphore_round(client: Client, sem: Semaphore, sem_short: Semaphore, refs: Refs, r: int) -> None:
    churn = Round(refs)
    inside = most = 0

    async def count(h: Holdable) -> None:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await asyncio.sleep(0)  # let the others run while in
        inside -= 1

    async def nested(holding: asyncio.Event, release: asyncio.Event) -> str:
        async with sem as one, sem as two:  # one task in both places: two entries of one task
            refs.handle(one)
            refs.handle(two)
            holding.set()
            await release.wait()
        return "done"

    async def on_own_session() -> int:
        async with client.session(10) as session:
            refs.add(session)
            return await hold_in_turn(client.semaphore(sem.name, 2, session=session), refs, count)

    release = asyncio.Event()
    if r % 2:
        holding = [asyncio.Event()]
        holders = [churn.start(nested(holding[0], release))]
    else:
        holding = [asyncio.Event(), asyncio.Event()]
        holders = [churn.start(hold_until(sem, refs, h, release)) for h in holding]
    for h in holding:
        await asyncio.wait_for(h.wait(), WAIT)
    await refused(sem.slot(), refs)

    in_turn = [churn.start(hold_in_turn(sem, refs, count)) for _ in range(3)]
    in_turn.append(churn.start(on_own_session()))
    reusable = sem.slot()  # one Slot acquired again and again, shared by tasks (one queues at a time)
    in_turn += [churn.start(hold_in_turn(reusable, refs, count)) for _ in range(2)]
    waiting = [churn.start(never_in(sem)) for _ in range(3)]
    await queued(client, sem.name + "/", 2 + 4 + 1 + len(waiting))

    await churn.cancel_early(lambda i: never_in(sem), 3)
    timed = [churn.start(times_out(sem_short.slot(), refs, by_acquire=i == 0)) for i in range(2)]
    timed.append(churn.start(_enter_times_out(sem_short)))
    assert await churn.outcomes(timed) == ["timed out"] * 3
    await churn.cancel(waiting)

    release.set()
    assert await churn.outcomes(holders) == ["done"] * len(holders)
    tokens = await churn.outcomes(in_turn)
    assert len(set(tokens)) == len(tokens) and 1 <= most <= 2, (tokens, most)
    refs.handle(reusable)


async def _enter_times_out(sem: Semaphore) -> str:
    try:
        async with sem:
            raise AssertionError("a place in the semaphore was taken while both were held")
    except LockTimeout:
        return "timed out"


async def test_semaphore_churn_leaves_nothing(
    client: Client, etcd: EtcdCluster, ns: str, save_all_garbage: list[object]
) -> None:
    # Long-lived, like an application's: what they keep per entering task must not pile up.
    sem = client.semaphore(ns + "s", 2)
    sem_short = client.semaphore(ns + "s", 2, timeout=SHORT)
    async with sem:  # warm-up
        pass
    base = await baseline(client, etcd, watchers=0)
    save_all_garbage.clear()
    refs = Refs()
    for r in range(ROUNDS):
        await _semaphore_round(client, sem, sem_short, refs, r)
    await assert_back_to_baseline(client, etcd, ns, base)
    assert_freed(refs, save_all_garbage)


# ---- read/write lock ----


async def _rw_round(client: Client, name: str, refs: Refs, r: int) -> None:
    rw = client.rwlock(name)
    churn = Round(refs)
    readers = writers = 0

    async def read(h: Holdable) -> None:
        nonlocal readers
        assert writers == 0, "a reader got in while a writer held"
        readers += 1
        await asyncio.sleep(0)  # let the others run while in
        readers -= 1

    async def write(h: Holdable) -> None:
        nonlocal writers
        assert readers == 0 and writers == 0, f"a writer got in with {readers} readers, {writers} writers"
        writers += 1
        await asyncio.sleep(0)
        writers -= 1

    async def read_on_own_session() -> int:
        async with client.session(10) as session:
            refs.add(session)
            return await hold_in_turn(client.rwlock(name, session=session).read(), refs, read)

    # Held by a writer (even rounds) or by two readers (odd rounds) while the others queue behind a
    # writer, queued first so that no reader gets in beside the holding readers.
    holding = [asyncio.Event()] if r % 2 == 0 else [asyncio.Event(), asyncio.Event()]
    release = asyncio.Event()
    side: Callable[[], Holdable] = rw.write if r % 2 == 0 else rw.read
    holders = [churn.start(hold_until(side(), refs, h, release)) for h in holding]
    for h in holding:
        await asyncio.wait_for(h.wait(), WAIT)
    in_turn = [churn.start(hold_in_turn(rw.write(), refs, write))]
    await queued(client, name + "/", len(holders) + 1)
    in_turn += [
        churn.start(hold_in_turn(rw.read(), refs, read)),
        churn.start(hold_in_turn(rw.read(), refs, read)),
        churn.start(read_on_own_session()),
        churn.start(hold_in_turn(rw.write(), refs, write)),
    ]
    waiting = [churn.start(never_in(rw.write())), churn.start(never_in(rw.read()))]
    await queued(client, name + "/", len(holders) + len(in_turn) + len(waiting))
    await refused(rw.write(), refs)
    await refused(rw.read(), refs)

    await churn.cancel_early(lambda i: never_in(rw.read() if i % 2 else rw.write()), 4)
    timed = [
        churn.start(times_out(rw.write(timeout=SHORT), refs, by_acquire=True)),
        churn.start(times_out(rw.write(timeout=SHORT), refs, by_acquire=False)),
        churn.start(times_out(rw.read(timeout=SHORT), refs, by_acquire=False)),
        churn.start(times_out(rw.read(timeout=SHORT), refs, by_acquire=True)),
    ]
    assert await churn.outcomes(timed) == ["timed out"] * len(timed)
    await churn.cancel(waiting)

    release.set()
    assert await churn.outcomes(holders) == ["done"] * len(holders)
    tokens = await churn.outcomes(in_turn)
    assert len(set(tokens)) == len(tokens), tokens
    refs.add(rw)


async def test_rwlock_churn_leaves_nothing(
    client: Client, etcd: EtcdCluster, ns: str, save_all_garbage: list[object]
) -> None:
    rw = client.rwlock(ns + "rw")
    async with rw.read():  # warm-up
        pass
    async with rw.write():
        pass
    base = await baseline(client, etcd, watchers=0)
    save_all_garbage.clear()
    refs = Refs()
    for r in range(ROUNDS):
        await _rw_round(client, ns + "rw", refs, r)
    await assert_back_to_baseline(client, etcd, ns, base)
    assert_freed(refs, save_all_garbage)
