"""The fault schedules. Each injects its fault while the workers contend, heals it, and marks both moments;
the checker does the rest. Durations are the faults' own lengths (a pause must outlast the TTL)."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType

from etcdlock._chaos.faults import FaultContext, pause_a_holder, running_holder
from etcdlock._chaos.harness import ClusterSpec
from etcdlock._chaos.recipe_scenarios import (
    HOLDER,
    LEADER,
    member_killed,
    process_killed,
    process_partitioned,
    process_paused,
)
from etcdlock._chaos.report import Workload
from etcdlock._core.errors import EtcdError
from etcdlock.testing import EtcdMember


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    inject: Callable[[FaultContext], None]
    workload: Workload = field(default_factory=Workload)
    cluster: ClusterSpec = field(default_factory=ClusterSpec)


def _member_down(ctx: FaultContext, member: EtcdMember, *, kill: bool, down_for: float) -> None:
    """Take MEMBER down (SIGKILL, or a clean stop), leave it down for `down_for` seconds once the others
    have a leader, then start it again with its data and wait until the cluster is whole."""
    ctx.mark_fault()
    if kill:
        member.kill()
    else:
        member.stop()
    ctx.fc.cluster.wait_healthy(timeout=30, only_running=True)  # a leader among the others
    ctx.hold(down_for)
    member.start()
    ctx.fc.cluster.wait_healthy(timeout=30)
    ctx.mark_healed()


def leader_killed(ctx: FaultContext) -> None:
    _member_down(ctx, ctx.fc.cluster.leader(), kill=True, down_for=2.0)


def member_in_use_killed(ctx: FaultContext) -> None:
    _member_down(ctx, ctx.fc.member_in_use(), kill=True, down_for=3.0)


def member_restarted(ctx: FaultContext) -> None:
    _member_down(ctx, ctx.fc.member_in_use(), kill=False, down_for=0.0)


def member_paused(ctx: FaultContext) -> None:
    """SIGSTOP the member every client uses: its sockets stay open, nothing answers. Clients must leave it
    (their renewals go unanswered) and keep their locks through the other members."""
    member = ctx.fc.member_in_use()
    ctx.mark_fault()
    member.pause()
    stopped = time.monotonic()
    ctx.wait(
        lambda: all(ctx.events.acquired_since(n, stopped + 1.0) for n in ctx.names),
        30,
        "every lock to be acquired through the other members while the first is stopped",
    )
    ctx.checks.append("work went on through the other members while the first was stopped")
    ctx.hold(max(0.0, stopped + 5.0 - time.monotonic()))
    member.resume()
    ctx.fc.cluster.wait_healthy(timeout=30)
    ctx.mark_healed()


def client_cut_off(ctx: FaultContext) -> None:
    """Black-hole the proxy in front of the member every client uses: packets vanish, no error comes.
    Clients must notice the silence, move to another member, and their waiters' watches must resume
    there without missing the deletion of the key they wait on; so work goes on during the cut."""
    proxies = ctx.fc.proxies_to(ctx.fc.member_in_use())
    ctx.mark_fault()
    for p in proxies:
        p.blackhole()
    cut = time.monotonic()
    ctx.wait_each_acquired(
        3, cut, "every lock to be acquired 3 times through the other members while the first is cut off"
    )
    first = min(e["t"] for e in ctx.events.of("acquire") if e["t"] > cut)
    ctx.checks.append("work went on through the other members during the cut")
    ctx.metrics["first acquisition after the cut, s"] = round(first - cut, 2)
    ctx.metrics["3 acquisitions per lock after the cut, s"] = round(time.monotonic() - cut, 2)
    for p in proxies:
        p.pass_through()
    ctx.mark_healed()


def holder_paused(ctx: FaultContext) -> None:
    """SIGSTOP a holder past its TTL. Another process must get the lock meanwhile; on SIGCONT the holder
    must learn it lost the lock before writing again (the checker's write-after-lost/overlap rules)."""
    ctx.mark_fault()
    worker, name, _, token = pause_a_holder(ctx, mid_work=True)
    paused = time.monotonic()
    taken_by = ctx.wait_taken_over(name, token, f"the paused {worker}")
    ctx.hold(0.5)  # stay stopped a little longer, while the new holder works
    resumed = time.monotonic()
    ctx.worker(worker).resume()
    ctx.pauses.append((worker, paused, resumed))
    ctx.checks.append("another process held the lock while its holder was stopped")
    ctx.details.append(f"{taken_by['worker']} held {name} while {worker} was stopped")

    def learned() -> bool:
        return any(
            e["worker"] == worker
            and e.get("name") == name
            and e.get("token") == token
            and e["ev"] in ("lost", "stopped")
            for e in ctx.events.all()
        )

    ctx.wait(learned, 15, f"the resumed {worker} to learn it lost {name}")
    ctx.checks.append("the resumed holder learned it had lost the lock before writing again")
    ctx.mark_healed()


def holder_partitioned(ctx: FaultContext) -> None:
    """Cut one holder off from every member (a black hole: it keeps running, nothing gets through) past
    its TTL. It must tell itself the lock is lost by its local deadline, which runs out before etcd's,
    so it stops before anyone else can hold the lock; then another process gets it."""
    ctx.mark_fault()
    worker, name, _, token = pause_a_holder(ctx, mid_work=True)
    for p in ctx.fc.paths[worker]:
        p.blackhole()
    ctx.worker(worker).resume()  # running again, but alone
    ctx.wait_taken_over(name, token, f"the cut-off {worker}")
    learned = [
        e
        for e in ctx.events.all()
        if e["worker"] == worker and e.get("token") == token and e["ev"] in ("lost", "stopped")
    ]
    if learned:
        ctx.checks.append("the cut-off holder knew it lost the lock before another process took it")
        ctx.details.append(f"{worker} cut off holding {name}")
    else:
        ctx.failures.append(f"the cut-off {worker} did not know it lost {name} when another process took it")
    for p in ctx.fc.paths[worker]:
        p.pass_through()
    ctx.mark_healed()


def holder_killed(ctx: FaultContext) -> None:
    """SIGKILL a holder: nothing is given back, the lease expires after its TTL, the next waiter gets the
    lock; the leftover check waits for that expiry."""
    ctx.mark_fault()
    worker, name, _, token = pause_a_holder(ctx, kill=True)
    ctx.wait_taken_over(name, token, f"the killed {worker}")
    ctx.checks.append("another process took the lock after its holder was killed")
    ctx.details.append(f"{worker} killed holding {name}")
    ctx.mark_healed()


def compaction_while_waiting(ctx: FaultContext) -> None:
    """Compact to the current revision again and again while waiters wait, and once reset every client
    connection so watches must resume from a revision that is compacted by then."""
    ctx.mark_fault()
    end = time.monotonic() + 5.0
    compactions = 0
    reset_done = False
    compacted = 0
    while time.monotonic() < end:
        rev = ctx.observer.get("/", count_only=True).header.revision
        if rev > compacted:  # compacting the same revision twice is an error; nothing was written since
            ctx.observer.compact(rev)
            compacted = rev
            compactions += 1
        if not reset_done and time.monotonic() > end - 3.0:
            for p in ctx.fc.proxies:
                p.reset()
            for p in ctx.fc.proxies:
                p.pass_through()
            reset_done = True
        ctx.hold(0.2)
    ctx.checks.append("waiters went on through compactions and a reset of every client connection")
    ctx.metrics["compactions"] = compactions
    ctx.mark_healed()


def cluster_restarted(ctx: FaultContext) -> None:
    ctx.mark_fault()
    ctx.fc.restart_whole_cluster()
    ctx.mark_healed()


class CompactionStorm:
    """Compaction to the head every PERIOD seconds while each worker's connections are reset (RST, then
    passing again) at random intervals within RESET_EVERY: watch streams keep restarting, and their
    resumes keep asking for revisions compacted meanwhile. It runs in a thread of its own (a context
    manager) while the scenario does the rest."""

    def __init__(
        self, ctx: FaultContext, *, period: float = 0.05, reset_every: tuple[float, float] = (0.3, 1.0)
    ) -> None:
        self._ctx = ctx
        self._period = period
        self._reset_every = reset_every
        self._rng = random.Random(ctx.rng.random())
        self._held: set[str] = set()  # workers a scenario keeps in reset: the storm leaves them alone
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="etcdlock-chaos-storm", daemon=True)
        self._error: BaseException | None = None
        self.compacted = 0  # the revision compacted to last
        self.compactions = 0
        self.resets = 0

    def __enter__(self) -> CompactionStorm:
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(30)
        self._ctx.metrics["compactions"] = self.compactions
        self._ctx.metrics["connection resets"] = self.resets
        if self._error is not None and et is None:
            raise self._error

    def _run(self) -> None:
        try:
            due = {worker: self._next_reset() for worker in self._ctx.fc.paths}
            while not self._stop.wait(self._period):  # the storm's rhythm is the fault itself
                self._compact_to_head()
                now = time.monotonic()
                for worker, at in due.items():
                    if now >= at:
                        self._reset(worker)
                        due[worker] = self._next_reset()
        except BaseException as e:
            self._error = e

    def _next_reset(self) -> float:
        return time.monotonic() + self._rng.uniform(*self._reset_every)

    def _compact_to_head(self) -> None:
        rev = self._ctx.observer.get("/", count_only=True).header.revision
        if rev > self.compacted:  # compacting one revision twice is an error; nothing was written since
            self._ctx.observer.compact(rev)
            self.compacted = rev
            self.compactions += 1

    def _reset(self, worker: str) -> None:
        with self._lock:
            if worker in self._held:
                return
            proxies = self._ctx.fc.paths[worker]
            for p in proxies:
                p.reset()
            for p in proxies:
                p.pass_through()
            self.resets += 1

    @contextlib.contextmanager
    def resetting(self, worker: str) -> Iterator[None]:
        """Reset every connection of WORKER, new ones too, until the block ends."""
        with self._lock:
            self._held.add(worker)
            for p in self._ctx.fc.paths[worker]:
                p.reset()
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(worker)
                for p in self._ctx.fc.paths[worker]:
                    p.pass_through()
            self.resets += 1


def compaction_storm_resets(ctx: FaultContext) -> None:
    """Many contenders on one name; compaction to the head every 50 ms while every worker's connections
    are reset at random: each restart of a waiter's watch resumes from a compacted revision, and a wake-up
    lost there leaves the waiter (and everyone queued behind it) waiting for its acquire timeout."""
    ctx.mark_fault()
    started = time.monotonic()
    with CompactionStorm(ctx):
        ctx.hold(9.0)
    ctx.metrics["acquisitions during the storm"] = sum(
        1 for e in ctx.events.of("acquire") if e["t"] > started
    )
    ctx.checks.append("waiters went on through compactions every 50 ms and connection resets")
    ctx.mark_healed()


def _wait_learned_loss(ctx: FaultContext, worker: str, name: str, token: int, since: float) -> None:
    """Wait for WORKER to learn it lost NAME (token TOKEN) after the fault at SINCE: a failure if it does
    not within the TTL and some, a metric of how long it took if it does."""
    try:
        ctx.wait(
            lambda: ctx.learned_loss(worker, token) is not None,
            ctx.cfg.ttl + 10,
            f"{worker} to learn it lost {name}",
        )
    except AssertionError as e:
        ctx.failures.append(f"not told of the loss: {e}")
        return
    learned = ctx.learned_loss(worker, token)
    assert learned is not None
    took = round(float(learned["t"]) - since, 3)
    key = "loss learned after the fault, max s"
    ctx.metrics[key] = max(took, ctx.metrics.get(key, took))
    ctx.details.append(
        f"{worker} learned it lost {name} {took:.3f}s after the fault ({learned['ev']}: {learned['reason']})"
    )


def _delete_a_holders_key(ctx: FaultContext, storm: CompactionStorm) -> None:
    """Delete a running holder's key from outside while its connections are reset, and let them pass
    again only once the deletion is compacted: its watch must resume from a compacted revision."""
    deleted_at = None
    while deleted_at is None:  # None: it let go between our look and the delete; catch the next one
        worker, name, lease, token = running_holder(ctx)
        with storm.resetting(worker):
            deleted_at = _delete_and_compact(ctx, storm, f"{name}/{lease:x}")
    _wait_learned_loss(ctx, worker, name, token, deleted_at)
    ctx.wait_taken_over(name, token, f"{worker}, whose key was deleted")


def _delete_and_compact(ctx: FaultContext, storm: CompactionStorm, key: str) -> float | None:
    """Delete KEY; if it was there, wait for the storm to compact past the deletion. When it was deleted."""
    result = ctx.observer.delete(key)
    deleted_at = time.monotonic()
    if not result.deleted:
        return None
    ctx.wait(lambda: storm.compacted >= result.header.revision, 10, "the storm to compact the deletion")
    return deleted_at


def holder_key_deleted_during_compacted_restart(ctx: FaultContext) -> None:
    """During a compaction storm, the current holder's key is deleted from outside (not through the
    worker) while its connections are reset, three times. Its watch resumes compacted; it must still
    learn the key is gone (`lost`), and pass no ownership check once another process acquired."""
    ctx.mark_fault()
    with CompactionStorm(ctx) as storm:
        for _ in range(3):
            _delete_a_holders_key(ctx, storm)
    ctx.checks.append("another process took the lock after its holder's key was deleted from outside")
    ctx.mark_healed()


def _leader_on_member_in_use(ctx: FaultContext) -> EtcdMember:
    """Make the member every client starts on the leader: a fault on the leader must hit its clients."""
    member = ctx.fc.member_in_use()
    ctx.fc.cluster.transfer_leadership(member)
    return member


def _isolate(ctx: FaultContext, leader: EtcdMember) -> float:
    """Cut LEADER off from the other members (its clients still reach it); wait for a leader among the
    others. Returns when the cut was made."""
    ctx.mark_fault()
    ctx.fc.cluster.peer_router.isolate(leader.name)
    cut = time.monotonic()
    others = [m for m in ctx.fc.members if m is not leader]
    ctx.wait(
        lambda: any(m.is_leader(timeout=1.0) for m in others), 30, "a new leader among the other members"
    )
    ctx.metrics["new leader elected after the cut, s"] = round(time.monotonic() - cut, 2)
    return cut


def _heal_partition(ctx: FaultContext) -> None:
    ctx.fc.cluster.peer_router.heal()
    ctx.fc.cluster.wait_healthy(timeout=30)
    ctx.mark_healed()


def leader_isolated(ctx: FaultContext) -> None:
    """The leader, the member every client uses, is cut off from the other members but not from its
    clients. It steps down; the others elect a leader; clients must leave the member that no longer has
    a say and go on there, before and after their leases run out on the new leader's side."""
    leader = _leader_on_member_in_use(ctx)
    cut = _isolate(ctx, leader)
    ctx.wait_each_acquired(
        2, cut, "every lock to be acquired twice on the majority's side while the old leader is cut off"
    )
    ctx.checks.append("work went on through the other members while the leader was cut off")
    ctx.metrics["2 acquisitions per lock after the cut, s"] = round(time.monotonic() - cut, 2)
    _heal_partition(ctx)


def slow_leader_isolated(ctx: FaultContext) -> None:
    """Member 0 leads with an election timeout of 3 s (the others 0.5 s) and is cut off from the others
    while a worker on it holds the lock. The others elect a new leader within ~1 s and its clock starts
    on the holder's lease; the old leader steps down only after 3-6 s and renews the holder's lease
    until then. Bystanders on the other members take the lock when the new leader expires that lease;
    the holder must have stopped by then (no ownership check passed, no write sent)."""
    leader = _leader_on_member_in_use(ctx)
    on_leader = {w for w, path in ctx.fc.paths.items() if ctx.worker(w).cfg.endpoints[0] == path[0].endpoint}
    worker, name, _, token = running_holder(ctx, among=on_leader, early=0.25)
    cut = _isolate(ctx, leader)
    if leader.is_leader(timeout=1.0):
        ctx.checks.append("the cut-off leader still led when the others had elected a new one")
    ctx.wait(lambda: not leader.is_leader(timeout=1.0), 30, "the cut-off leader to step down")
    ctx.metrics["cut-off leader stepped down after the cut, s"] = round(time.monotonic() - cut, 2)
    taken = ctx.wait_taken_over(name, token, f"{worker} on the cut-off leader")
    ctx.metrics["another process acquired after the cut, s"] = round(float(taken["t"]) - cut, 2)
    learned = ctx.learned_loss(worker, token)
    if learned is not None:
        after = float(learned["t"]) - cut
        ctx.details.append(f"{worker} learned {after:.2f}s after the cut: {learned['reason']}")
        if learned["t"] < taken["t"]:
            ctx.checks.append("the holder on the cut-off leader knew it lost the lock before another took it")
    ctx.details.append(f"{worker} held {name} on the cut-off leader; {taken['worker']} took it")
    _heal_partition(ctx)


def lease_revoked_during_txn_loops(ctx: FaultContext) -> None:
    """Holders check ownership with a write to etcd guarded by it (`lock.txn`) before each fenced write;
    a holder's lease is revoked from outside mid-loop, three times. No txn may succeed after the revoke,
    and the first that fails must raise LockLost rather than come back unsuccessful."""
    ctx.mark_fault()
    for _ in range(3):
        worker, name, lease, token = running_holder(ctx)
        try:
            ctx.observer.revoke(lease)
        except EtcdError:
            continue  # it let go (and revoked) between our look and ours: catch the next one
        revoked = time.monotonic()
        ctx.revoked.append((lease, revoked))
        _wait_learned_loss(ctx, worker, name, token, revoked)
        ctx.wait_taken_over(name, token, f"{worker}, whose lease was revoked")
    ctx.checks.append("another process took the lock after its holder's lease was revoked")
    ctx.mark_healed()


ELECTION = Workload(recipe="election", workers=4, names=1, writes=150)
SEMAPHORE = Workload(recipe="semaphore", limit=2, workers=5, names=1, writes=150)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "leader-killed",
            "the leader is SIGKILLed, restarted 2 s after a new one is elected",
            leader_killed,
        ),
        Scenario(
            "member-in-use-killed",
            "the member clients use is SIGKILLed, restarted 3 s after the others have a leader",
            member_in_use_killed,
        ),
        Scenario(
            "member-paused",
            "the member clients use is SIGSTOPped for 5 s (past the TTL), then SIGCONTed",
            member_paused,
        ),
        Scenario(
            "member-restarted",
            "the member clients use is stopped (SIGTERM) and started again",
            member_restarted,
        ),
        Scenario(
            "client-cut-off", "the proxy black-holes clients' first member until work went on", client_cut_off
        ),
        Scenario(
            "holder-paused",
            "a holder is SIGSTOPped past its TTL, then SIGCONTed",
            holder_paused,
            workload=Workload(writes=150),
        ),
        Scenario(
            "holder-partitioned",
            "a holder is black-holed from every member past its TTL",
            holder_partitioned,
            workload=Workload(writes=150),
        ),
        Scenario("holder-killed", "a holder is SIGKILLed", holder_killed),
        Scenario(
            "compaction",
            "compaction to the head every 0.2 s for 5 s, one connection reset",
            compaction_while_waiting,
        ),
        Scenario("cluster-restarted", "all three members stopped and started again", cluster_restarted),
        Scenario(
            "compaction-storm-resets",
            "8 workers on 1 name; compaction to the head every 50 ms for 9 s while each worker's "
            "connections are reset every 0.3-1 s",
            compaction_storm_resets,
            workload=Workload(workers=8, names=1),
        ),
        Scenario(
            "holder-key-deleted-during-compacted-restart",
            "6 workers on 1 name; during a compaction storm, the holder's key is deleted from outside "
            "while its connections are reset until the deletion is compacted (3 times)",
            holder_key_deleted_during_compacted_restart,
            workload=Workload(workers=6, names=1, writes=150),
        ),
        Scenario(
            "partition-leader-isolated",
            "the leader, which clients use, is cut off from the other members until work went on there",
            leader_isolated,
            cluster=ClusterSpec(route_peers=True),
        ),
        Scenario(
            "partition-slow-leader-isolated",
            "the leader (election timeout 3 s, the others 0.5 s), which a holder uses, is cut off from "
            "the other members; 2 of 4 workers on the others; 1 name, TTL 5 s, holds of ~9 s",
            slow_leader_isolated,
            workload=Workload(workers=4, names=1, ttl=5, writes=400, bystanders=2),
            cluster=ClusterSpec(route_peers=True, member_args={0: ("--election-timeout=3000",)}),
        ),
        Scenario(
            "lease-revoked-during-txn-loops",
            "holders check ownership by a guarded txn before each write; a holder's lease is revoked "
            "from outside mid-loop (3 times)",
            lease_revoked_during_txn_loops,
            workload=Workload(txn_writes=True, writes=150),
        ),
        # Elections: 4 candidates on 1 election, terms of 150 writes (~4 s): the fault finds the leader
        # mid-term.
        Scenario(
            "election-leader-killed",
            "4 candidates, 1 election, terms of ~4 s: the leader process is SIGKILLed mid-term",
            process_killed(LEADER),
            workload=ELECTION,
        ),
        Scenario(
            "election-leader-paused",
            "4 candidates, 1 election, terms of ~4 s: the leader process is SIGSTOPped past its TTL until "
            "a new leader is in, then SIGCONTed",
            process_paused(LEADER),
            workload=ELECTION,
        ),
        Scenario(
            "election-leader-member-killed",
            "4 candidates, 1 election, terms of ~4 s: the member the leader talks to, made the raft leader, "
            "is SIGKILLed mid-term, restarted 2 s after the others have a leader",
            member_killed(LEADER),
            workload=ELECTION,
        ),
        Scenario(
            "election-leader-partitioned",
            "4 candidates, 1 election, terms of ~4 s: the leader process is black-holed from every member "
            "mid-term until a new leader is in",
            process_partitioned(LEADER),
            workload=ELECTION,
        ),
        # Semaphores: 5 workers on 1 semaphore of limit 2, holds of 150 writes.
        Scenario(
            "semaphore-holder-killed",
            "5 workers, 1 semaphore of limit 2, holds of ~4 s: a holder process is SIGKILLed mid-hold",
            process_killed(HOLDER),
            workload=SEMAPHORE,
        ),
        Scenario(
            "semaphore-holder-paused",
            "5 workers, 1 semaphore of limit 2, holds of ~4 s: a holder process is SIGSTOPped past its TTL "
            "until its place went to another, then SIGCONTed",
            process_paused(HOLDER),
            workload=SEMAPHORE,
        ),
        Scenario(
            "semaphore-holder-member-killed",
            "5 workers, 1 semaphore of limit 2, holds of ~4 s: the member a holder talks to, made the raft "
            "leader, is SIGKILLed mid-hold, restarted 2 s after the others have a leader",
            member_killed(HOLDER),
            workload=SEMAPHORE,
        ),
        Scenario(
            "semaphore-holder-partitioned",
            "5 workers, 1 semaphore of limit 2, holds of ~4 s: a holder process is black-holed from every "
            "member mid-hold until its place went to another",
            process_partitioned(HOLDER),
            workload=SEMAPHORE,
        ),
    ]
}
