"""Fault schedules aimed at an election's leader and at a semaphore's holder: the leader (holder) process
SIGKILLed, SIGSTOPped past its TTL, the etcd member it talks to SIGKILLed, and the process cut off from
every member. The same four faults for both recipes; what differs is what "taken over" means:

  * election: another candidate becomes leader (it acquires with a higher token), and it must do so within
    TTL + 1 s of the moment the old leader's lease stopped being renewed (the fault), since a lease
    outlives its last renewal by at most its TTL; etcd checks for expired leases every 500 ms. When
    killing a member made etcd elect a new raft leader, that leader renewed every lease by itself (etcd's
    lessor Promote, by its election timeout): the clock starts then instead. A leader that kept its term
    through the fault needs no successor; one whose check etcd could not answer in time (an EtcdError,
    not a loss) lets go, as the worker does on any error, and the next candidate follows at once.
  * semaphore: the holder's place goes to a waiter, which shows as `limit` other processes acting at once
    (the others alone fill the semaphore); how long that took is a number, not a rule, since it also waits
    for the other holders' next writes to be seen.

The checker's rules (judging.py) do the rest: never two leaders' writes interleaved at the fenced resource,
never a write after `lost`, never more than `limit` semaphore holders acting at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from etcdlock._chaos.faults import FaultContext, pause_a_holder, running_holder
from etcdlock.testing import EtcdMember

# The members' election timeout (etcdlock.testing's cluster default): how far etcd pushes every lease's
# expiry out when a new raft leader takes over.
ELECTION_TIMEOUT = 0.5
# How long after the old lease runs out a successor must be in: etcd's expiry check runs every 500 ms,
# then the revoke, the waiter's wake-up and its confirmation.
SUCCESSION_SLACK = 1.0


@dataclass(frozen=True)
class Role:
    """How a fault schedule talks about, and checks, the process it aims at."""

    recipe: str  # "election" or "semaphore"
    holder: str  # "leader" / "holder": for the facts' wording
    held: str  # "its term" / "its slot"

    @property
    def succession(self) -> str:
        return "a new leader" if self.recipe == "election" else "its slot went to another process"


LEADER = Role("election", "leader", "its term")
HOLDER = Role("semaphore", "holder", "its slot")


def _taken_over(ctx: FaultContext, role: Role, name: str, token: int, since: float, who: str) -> float:
    """Wait until the process with TOKEN is succeeded on NAME: when that happened."""
    if role.recipe == "election":
        return float(ctx.wait_taken_over(name, token, who)["t"])
    taken: list[float] = []

    def succeeded() -> bool:
        at = ctx.slot_taken_over(name, token, since)
        if at is not None:
            taken.append(at)
        return at is not None

    ctx.wait(succeeded, ctx.cfg.ttl + 20, f"another process to take {who}'s place in {name}")
    return taken[-1]


def _succession(
    ctx: FaultContext,
    role: Role,
    name: str,
    token: int,
    lease: int,
    worker: str,
    fault: float,
    *,
    renewed: float | None = None,
) -> None:
    """Wait for the successor of WORKER (TOKEN on NAME), whose lease nobody has renewed since FAULT, or
    since RENEWED if etcd renewed every lease itself then (a new raft leader); record how long it took
    after the fault, and for an election hold it to TTL + 1 s of that clock's start."""
    at = _taken_over(ctx, role, name, token, fault, worker)
    ctx.metrics[f"{role.succession} after the fault, s"] = round(at - fault, 2)
    gone = ctx.deleted.get(f"{name}/{lease:x}")
    if gone is not None and role.recipe == "election":
        key = "new leader after the old leader's key was deleted, s"
        ctx.metrics[key] = round(at - gone, 3)
    clock = fault if renewed is None else max(fault, renewed)
    since = "the fault" if renewed is None else "etcd's renewal of every lease under its new raft leader"
    bound = ctx.cfg.ttl + SUCCESSION_SLACK
    if at - clock <= bound:
        ctx.checks.append(f"{role.succession} within TTL + 1 s of {since}")
    elif role.recipe == "election":
        ctx.failures.append(
            f"slow-new-leader: {at - clock:.2f}s after {since}, which took {worker}'s lease on {name} "
            f"(bound {bound:g}s)"
        )


def _learned(ctx: FaultContext, worker: str, token: int, timeout: float, what: str) -> dict[str, Any] | None:
    """WORKER's `lost` signal for TOKEN, waited for up to TIMEOUT; a failure if it does not come."""

    def signal() -> dict[str, Any] | None:
        return next(
            (e for e in ctx.events.of("lost") if e["worker"] == worker and e["token"] == token),
            None,
        )

    try:
        ctx.wait(lambda: signal() is not None, timeout, what)
    except AssertionError as e:
        ctx.failures.append(f"not told of the loss: {e}")
        return None
    return signal()


def _no_write_after(ctx: FaultContext, role: Role, worker: str, token: int, since: float) -> None:
    """The old holder's `lost` came, and it sent no write after SINCE (it stopped at its next check)."""
    late = [
        e
        for e in ctx.events.of("write")
        if e["worker"] == worker and e["token"] == token and e["sent"] > since
    ]
    if late:
        ctx.failures.append(
            f"the resumed {worker} wrote {len(late)} times with token {token} after its resume"
        )
    else:
        ctx.checks.append(f"the old {role.holder}'s `lost` fired before it wrote again")


def process_killed(role: Role) -> Callable[[FaultContext], None]:
    def inject(ctx: FaultContext) -> None:
        """SIGKILL the leader (holder) mid-work: nothing is given back; its lease runs out after the TTL."""
        ctx.mark_fault()
        worker, name, lease, token = pause_a_holder(ctx, kill=True, mid_work=True)
        assert ctx.caught_at is not None
        _succession(ctx, role, name, token, lease, worker, ctx.caught_at)
        ctx.details.append(f"{worker} killed holding {name}")
        ctx.mark_healed()

    return inject


def process_paused(role: Role) -> Callable[[FaultContext], None]:
    def inject(ctx: FaultContext) -> None:
        """SIGSTOP the leader (holder) mid-work until it has a successor, and a little longer; on SIGCONT
        its `lost` must fire before it writes again."""
        ctx.mark_fault()
        worker, name, lease, token = pause_a_holder(ctx, mid_work=True)
        paused = ctx.caught_at
        assert paused is not None
        _succession(ctx, role, name, token, lease, worker, paused)
        ctx.hold(0.5)  # stay stopped a little longer, while the successor works
        resumed = time.monotonic()
        ctx.worker(worker).resume()
        ctx.pauses.append((worker, paused, resumed))
        ctx.details.append(f"{worker} stopped holding {name}")
        if _learned(ctx, worker, token, 15, f"the resumed {worker}'s `lost` on {name}") is not None:
            _no_write_after(ctx, role, worker, token, resumed)
        ctx.mark_healed()

    return inject


def process_partitioned(role: Role) -> Callable[[FaultContext], None]:
    def inject(ctx: FaultContext) -> None:
        """Black-hole the leader (holder) from every member mid-work: it keeps running, alone. Its lease's
        local deadline runs out before etcd's, so its `lost` must fire before it has a successor."""
        ctx.mark_fault()
        worker, name, lease, token = pause_a_holder(ctx, mid_work=True)
        cut = ctx.caught_at
        assert cut is not None
        for p in ctx.fc.paths[worker]:
            p.blackhole()
        ctx.worker(worker).resume()  # running again, but alone
        _succession(ctx, role, name, token, lease, worker, cut)
        learned = ctx.learned_loss(worker, token)
        successor = _taken_over(ctx, role, name, token, cut, worker)
        if learned is not None and learned["ev"] == "lost" and learned["t"] < successor:
            ctx.checks.append(f"the cut-off {role.holder}'s `lost` fired before it had a successor")
        else:
            ctx.failures.append(
                f"the cut-off {worker} was not told it lost {name} before its successor came: {learned}"
            )
        ctx.details.append(f"{worker} cut off holding {name}")
        for p in ctx.fc.paths[worker]:
            p.pass_through()
        ctx.mark_healed()

    return inject


def member_killed(role: Role) -> Callable[[FaultContext], None]:
    def inject(ctx: FaultContext) -> None:
        """SIGKILL the member the leader (holder) talks to, made the raft leader first (the worst case:
        no member can renew anything until the others elect a leader, which then renews every lease
        itself). The leader fails over to another member and keeps its term, or loses it and has a
        successor. The member restarts 2 s after the others have a leader."""
        member = ctx.fc.member_in_use()
        ctx.fc.cluster.transfer_leadership(member)
        worker, name, lease, token = running_holder(ctx, among=_talking_to(ctx, member), early=0.25)
        ctx.mark_fault()
        killed = time.monotonic()
        member.kill()
        ctx.fc.cluster.wait_healthy(timeout=30, only_running=True)  # a raft leader among the others
        promoted = time.monotonic()
        ctx.metrics["new raft leader after the kill, s"] = round(promoted - killed, 2)
        ctx.hold(2.0)
        member.start()
        ctx.fc.cluster.wait_healthy(timeout=30)
        ctx.wait(
            lambda: _term_over(ctx, worker, token), ctx.cfg.ttl + 30, f"{worker}'s hold on {name} to end"
        )
        writes = [e for e in ctx.events.of("write") if e["worker"] == worker and e["token"] == token]
        if ctx.learned_loss(worker, token) is not None:
            reason = ctx.learned_loss(worker, token)
            ctx.details.append(f"{worker} lost {name} when {member.name} was killed: {reason}")
            ctx.checks.append(f"the {role.holder} was told `lost` (and had a successor)")
            _succession(ctx, role, name, token, lease, worker, killed, renewed=promoted + ELECTION_TIMEOUT)
        elif len(writes) == ctx.writes_per_hold:
            ctx.checks.append(f"the {role.holder} kept {role.held} through the loss of its member")
            kept = sum(1 for e in writes if e["sent"] > killed and e["accepted"])
            ctx.metrics[f"writes of the {role.holder} accepted after the kill"] = kept
        else:
            # An error (a check etcd could not answer in time) ended the hold: it let go, others go on.
            errors = [e["error"] for e in ctx.events.of("error") if e["worker"] == worker and e["t"] > killed]
            ctx.checks.append(
                f"the {role.holder} let go of {role.held} after an error (a check etcd did not answer)"
            )
            ctx.details.append(f"{worker} let go of {name} after {errors[:1]} when {member.name} was killed")
        ctx.details.append(f"{worker} held {name} on {member.name}")
        ctx.mark_healed()

    return inject


def _talking_to(ctx: FaultContext, member: EtcdMember) -> set[str]:
    """The workers with a connection open to MEMBER (through their proxy in front of it)."""
    i = ctx.fc.members.index(member)
    return {w for w, path in ctx.fc.paths.items() if path[i].connections_open > 0}


def _term_over(ctx: FaultContext, worker: str, token: int) -> bool:
    return any(
        e["worker"] == worker and e.get("token") == token and e["ev"] in ("release", "lost", "stopped")
        for e in ctx.events.all()
    )
