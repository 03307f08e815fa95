"""The sync twins of the recipes (SyncElection/SyncTerm, SyncSemaphore/SyncSlot, SyncRWLock) on real etcd.

Each test makes its SyncClients through `clients`, which closes them at the end and checks that nothing
is left in etcd: no key under the test's namespace, no lease beyond those that existed before. Threads
synchronize on events and conditions with deadlines, never on sleeps; a negative check ("still waiting")
looks at a short window only.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from etcdlock import (
    ConfigError,
    LimitMismatchError,
    LockLost,
    LockTimeout,
    Op,
    SyncClient,
    SyncLock,
    SyncObservation,
    SyncSlot,
    SyncTerm,
)
from tests.waiting import wait_until_sync

# Generous: the machine is small and shared; these bound waits that end as soon as their condition holds.
DEADLINE = 30.0
SHORT = 0.3  # a window for "it is still waiting": a timeout that must run out


@dataclass
class Clients:
    """SyncClients of one test: all closed at its end."""

    endpoints: list[str]
    made: list[SyncClient] = field(default_factory=list)

    def new(self) -> SyncClient:
        client = SyncClient(self.endpoints)
        self.made.append(client)
        return client


@pytest.fixture
def clients(etcd_endpoints: list[str], ns: str) -> Iterator[Clients]:
    with SyncClient(etcd_endpoints) as checker:
        leases_before = set(checker.leases())
        made = Clients(etcd_endpoints)
        try:
            yield made
        finally:
            for client in made.made:
                client.close()
        assert checker.get(ns, prefix=True).count == 0, "keys left under the test's namespace"
        assert set(checker.leases()) == leases_before, "leases left behind"


def run_threads(targets: list[Callable[[], None]]) -> None:
    """Run each target on a thread of its own; re-raise the first error any of them raised."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE * 2)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    if errors:
        raise errors[0]


def started(target: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            target()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=guarded)
    thread.start()
    return thread, errors


def finish(thread: threading.Thread, errors: list[BaseException]) -> None:
    thread.join(DEADLINE)
    assert not thread.is_alive(), "the thread did not finish"
    if errors:
        raise errors[0]


# ---- election ----


def _lead(term: SyncTerm) -> None:
    assert term.acquire()


def test_campaign_resign_and_handover_between_two_clients(clients: Clients, ns: str) -> None:
    a, b = clients.new(), clients.new()
    name = ns + "leader"
    election_a, election_b = a.election(name), b.election(name)
    assert election_a.name == name and election_a.leader() is None

    with election_a.campaign("node-a", timeout=DEADLINE) as term_a:
        assert isinstance(term_a, SyncTerm) and term_a.held and term_a.value == b"node-a"
        leader = election_b.leader()
        assert leader is not None
        assert (leader.key, leader.value, leader.token) == (term_a.key, b"node-a", term_a.token)
        assert a.get(term_a.key).kvs[0].value == b"node-a"

        # b campaigns on its thread and waits: a leads until it resigns.
        term_b = election_b.campaign("node-b", timeout=DEADLINE)
        b_leads = threading.Event()

        def campaign_b() -> None:
            assert term_b.acquire()
            b_leads.set()

        thread, errors = started(campaign_b)
        wait_until_sync(lambda: a.get(name + "/", prefix=True).count == 2, DEADLINE, "b's candidacy")
        assert not b_leads.wait(SHORT), "b leads while a does"
        term_a.proclaim("node-a v2")
        leader = election_b.leader()
        assert leader is not None and (leader.value, leader.token) == (b"node-a v2", term_a.token)
        assert term_a.value == b"node-a v2"

        first_token = term_a.token
        term_a.resign()
        assert not term_a.held
        finish(thread, errors)
        assert b_leads.is_set() and term_b.held and term_b.token > first_token
        leader = election_a.leader()
        assert leader is not None and (leader.key, leader.value) == (term_b.key, b"node-b")
        with pytest.raises(LockLost):
            term_a.proclaim("not leading")  # resigned: nothing is written
    # The `with` after resign() has nothing left to release.
    term_b.resign()
    term_b.resign()  # idempotent
    assert election_a.leader() is None

    # A term campaigns again with the value it proclaimed last.
    with election_a.campaign("first", timeout=DEADLINE) as term:
        term.proclaim("second")
    with term:
        leader = election_b.leader()
        assert leader is not None and leader.value == b"second"


def test_campaign_timeouts_return_false_or_raise_and_leave_nothing(clients: Clients, ns: str) -> None:
    a, b = clients.new(), clients.new()
    name = ns + "leader"
    with a.election(name).campaign("a") as term_a:
        other = b.election(name).campaign("b", timeout=SHORT)
        assert other.acquire() is False
        assert other.acquire(timeout=0) is False
        with pytest.raises(LockTimeout), other:
            pytest.fail("the body ran without leading")
        with pytest.raises(LockLost):
            other.proclaim("x")  # no term held
        assert a.get(name + "/", prefix=True).count == 1, "a candidacy that gave up left its key"
        assert term_a.held
    with pytest.raises(ConfigError):
        a.election(name).campaign(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        a.election(name + "/")


def test_observe_sees_a_proclaim_and_a_new_leader_then_closes_clean(clients: Clients, ns: str) -> None:
    watcher_client, a, b = clients.new(), clients.new(), clients.new()
    name = ns + "leader"
    base = watcher_client.resources()
    with watcher_client.election(name).observe() as leaders:
        assert isinstance(leaders, SyncObservation)
        with pytest.raises(TimeoutError):
            leaders.next(SHORT)  # nobody leads yet: it waits (and stays usable)
        with a.election(name).campaign("node-a", timeout=DEADLINE) as term_a:
            seen = leaders.next(DEADLINE)
            assert (seen.value, seen.token) == (b"node-a", term_a.token)
            term_a.proclaim("node-a v2")
            seen = leaders.next(DEADLINE)
            assert (seen.value, seen.token) == (b"node-a v2", term_a.token)
            term_b = b.election(name).campaign("node-b", timeout=DEADLINE)
            thread, errors = started(lambda: _lead(term_b))
            wait_until_sync(lambda: a.get(name + "/", prefix=True).count == 2, DEADLINE, "b's candidacy")
        finish(thread, errors)  # a resigned at the end of its block: b leads
        seen = next(leaders)
        assert (seen.key, seen.value, seen.token) == (term_b.key, b"node-b", term_b.token)
        term_b.resign()
        with pytest.raises(TimeoutError):
            leaders.next(SHORT)  # no leader: nothing to say
    assert leaders.closed
    with pytest.raises(StopIteration):
        next(leaders)
    wait_until_sync(
        lambda: watcher_client.resources() == base, DEADLINE, f"the observer's resources back to {base}"
    )


def test_observe_closed_from_another_thread_ends_a_blocked_next(clients: Clients, ns: str) -> None:
    client = clients.new()
    base = client.resources()
    leaders = client.election(ns + "leader").observe()
    blocked = threading.Event()
    got: list[object] = []

    def iterate() -> None:
        blocked.set()
        got.extend(leaders)  # blocks: nobody leads; ends with StopIteration once closed

    thread, errors = started(iterate)
    assert blocked.wait(DEADLINE)
    wait_until_sync(lambda: client.resources().tasks != base.tasks, DEADLINE, "the observer's step to run")
    leaders.close()
    finish(thread, errors)
    assert got == []
    wait_until_sync(lambda: client.resources() == base, DEADLINE, f"resources back to {base}")


def _reaches(items: list[bytes], n: int) -> bool:
    return len(items) >= n


def test_observe_shared_by_two_threads_gives_each_leader_to_one_of_them(clients: Clients, ns: str) -> None:
    client, a = clients.new(), clients.new()
    name = ns + "leader"
    values = [f"v{i}".encode() for i in range(5)]
    seen: list[bytes] = []
    lock = threading.Lock()
    with client.election(name).observe() as leaders:

        def take() -> None:
            for leader in leaders:  # ends with StopIteration once closed
                with lock:
                    seen.append(leader.value)

        threads = [started(take), started(take)]
        with a.election(name).campaign(values[0], timeout=DEADLINE) as term:
            wait_until_sync(lambda: len(seen) == 1, DEADLINE, "the first leader seen")
            for i, value in enumerate(values[1:], start=2):
                term.proclaim(value)
                wait_until_sync(functools.partial(_reaches, seen, i), DEADLINE, f"{i} values seen")
    for thread, errors in threads:
        finish(thread, errors)
    assert sorted(seen) == values, "a leader given to both threads, or to none"


def test_observe_dropped_without_close_ends_its_watch(clients: Clients, ns: str) -> None:
    client, a = clients.new(), clients.new()
    name = ns + "leader"
    base = client.resources()
    with a.election(name).campaign("node-a") as term:
        leaders = client.election(name).observe()
        assert next(leaders).value == b"node-a"
        term.proclaim("node-a v2")
        assert next(leaders).value == b"node-a v2"  # seen on the watch: the observation is watching
        with pytest.raises(TimeoutError):
            leaders.next(SHORT)  # leaves a step waiting on the loop for the next change
        assert client.resources().watchers > base.watchers
        del leaders  # garbage now: its finalizer ends the step and the watch
        wait_until_sync(lambda: client.resources() == base, DEADLINE, f"resources back to {base}")


# ---- semaphore ----


class Occupancy:
    """Who is inside a semaphore now, the most ever inside at once, and every holder's token."""

    def __init__(self) -> None:
        self.inside: set[str] = set()
        self.most = 0
        self.tokens: list[int] = []
        self._changed = threading.Condition()

    def enter(self, tag: str, token: int) -> None:
        with self._changed:
            self.inside.add(tag)
            self.most = max(self.most, len(self.inside))
            self.tokens.append(token)
            self._changed.notify_all()

    def leave(self, tag: str) -> None:
        with self._changed:
            self.inside.discard(tag)

    def wait_for(self, count: int) -> None:
        """Until `count` were inside at once at some point (or the deadline)."""
        with self._changed:
            self._changed.wait_for(lambda: self.most >= count, DEADLINE)


def test_semaphore_of_two_shared_by_six_threads(clients: Clients, ns: str) -> None:
    client, other = clients.new(), clients.new()
    name, limit, rounds = ns + "pool", 2, 3
    sem = client.semaphore(name, limit, ttl=10, timeout=DEADLINE)
    assert (sem.name, sem.limit) == (name, limit)
    occupancy = Occupancy()

    def worker(tag: str) -> None:
        for i in range(rounds):
            with sem as slot:
                assert isinstance(slot, SyncSlot) and slot.held and slot.limit == limit
                occupancy.enter(tag, slot.token)
                if i == 0:
                    occupancy.wait_for(limit)  # so that the limit is reached at least once (bounded)
                # Work on etcd while holding: a third holder would come in meanwhile, if it could.
                assert slot.txn([], [Op.put(ns + f"data/{tag}", str(i))]).succeeded
                slot.ensure_held()
                occupancy.leave(tag)

    run_threads([functools.partial(worker, f"t{n}") for n in range(6)])
    assert occupancy.most == limit, f"{occupancy.most} holders at once with limit {limit}"
    tokens = occupancy.tokens
    assert len(tokens) == 6 * rounds and len(set(tokens)) == len(tokens), "two holds with one token"
    assert client.get(name + "/", prefix=True).count == 0
    # Another client giving another limit is refused, with nothing left behind.
    with pytest.raises(LimitMismatchError), sem, other.semaphore(name, 3, timeout=DEADLINE):
        pytest.fail("entered with two limits on one name")
    assert client.get(name + "/", prefix=True).count == 0
    client.delete(ns + "data/", prefix=True)


def test_semaphore_timeouts_return_false_or_raise_and_leave_nothing(clients: Clients, ns: str) -> None:
    client, other = clients.new(), clients.new()
    name = ns + "pool"
    held = [other.semaphore(name, 2).slot() for _ in range(2)]
    for slot in held:
        assert slot.acquire(timeout=DEADLINE)
    assert held[0].token != held[1].token and held[0].key != held[1].key
    sem = client.semaphore(name, 2, timeout=SHORT)
    assert sem.slot().acquire() is False
    assert sem.slot().acquire(timeout=0) is False
    with pytest.raises(LockTimeout), sem:
        pytest.fail("entered a full semaphore")
    assert client.get(name + "/", prefix=True).count == 2, "a waiter that gave up left its key"
    held[0].release()
    with sem as slot:
        assert slot.held
    held[1].release()
    with pytest.raises(ConfigError):
        client.semaphore(name, 0)


# ---- read/write lock ----


def test_rwlock_readers_overlap_and_a_writer_is_excluded(clients: Clients, ns: str) -> None:
    client, other = clients.new(), clients.new()
    name = ns + "rw"
    rw = client.rwlock(name, timeout=DEADLINE)
    assert rw.name == name
    readers_in = threading.Barrier(2, timeout=DEADLINE)
    release_readers = threading.Event()

    def reader() -> None:
        with rw.read() as held:
            assert isinstance(held, SyncLock) and held.key.startswith(name + "/read/")
            readers_in.wait()  # both readers hold at once: it returns only then
            assert release_readers.wait(DEADLINE)

    threads = [started(reader), started(reader)]
    wait_until_sync(lambda: client.get(name + "/read/", prefix=True).count == 2, DEADLINE, "two readers")
    writer = other.rwlock(name).write(timeout=SHORT)
    assert writer.acquire() is False, "a writer got in while two readers held"
    with pytest.raises(LockTimeout), other.rwlock(name, timeout=SHORT).write():
        pytest.fail("wrote while readers held")

    # A writer that waits gets in once the readers are gone; then readers wait for it.
    waiting_writer = other.rwlock(name).write(timeout=DEADLINE)
    got_in = threading.Event()

    def write() -> None:
        with waiting_writer as held:
            assert held.key.startswith(name + "/write/")
            got_in.set()
            assert rw.read(timeout=SHORT).acquire() is False, "read while a writer held"
            with pytest.raises(LockTimeout), rw.write(timeout=SHORT):
                pytest.fail("two writers")

    writer_thread = started(write)
    wait_until_sync(lambda: client.get(name + "/write/", prefix=True).count == 1, DEADLINE, "the writer")
    assert not got_in.wait(SHORT), "the writer got in while readers held"
    release_readers.set()
    for thread, errors in threads:
        finish(thread, errors)
    finish(*writer_thread)
    assert got_in.is_set()
    with pytest.raises(ConfigError):
        rw.read(timeout=-1)
    assert client.get(name + "/", prefix=True).count == 0
