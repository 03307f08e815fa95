"""The fault schedules. Each injects its fault while the workers contend, heals it, and marks both moments;
the checker does the rest. Durations are the faults' own lengths (a pause must outlast the TTL)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from etcdlock.chaos.checker import FaultContext, pause_a_holder
from etcdlock.testing import EtcdMember


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    inject: Callable[[FaultContext], None]
    # Writes per hold, if not the checker's default: a fault aimed at a holder must find it in the middle
    # of its work (a hold of ~4 s, longer than the TTL), not already releasing.
    writes: int | None = None


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
    ctx.wait(
        lambda: all(
            sum(1 for e in ctx.events.of("acquire") if e["name"] == n and e["t"] > cut) >= 3
            for n in ctx.names
        ),
        45,
        "every lock to be acquired 3 times through the other members while the first is cut off",
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
            "holder-paused", "a holder is SIGSTOPped past its TTL, then SIGCONTed", holder_paused, writes=150
        ),
        Scenario(
            "holder-partitioned",
            "a holder is black-holed from every member past its TTL",
            holder_partitioned,
            writes=150,
        ),
        Scenario("holder-killed", "a holder is SIGKILLed", holder_killed),
        Scenario(
            "compaction",
            "compaction to the head every 0.2 s for 5 s, one connection reset",
            compaction_while_waiting,
        ),
        Scenario("cluster-restarted", "all three members stopped and started again", cluster_restarted),
    ]
}
