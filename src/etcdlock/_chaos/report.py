"""The checker's report model: how a run is configured (CheckerConfig), how a scenario departs from that
workload (Workload), and what one run found (RunReport), with the percentile and millisecond formatting
its summaries (and scripts/reliability.py's tables) use."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class CheckerConfig:
    workers: int = 4
    names: int = 2
    ttl: int = 3
    writes: int = 4
    acquire_timeout: float = 30.0
    liveness_timeout: float = 60.0
    # Both off only to prove the checker can fail: holders that ignore loss, a resource that does not fence.
    ignore_loss: bool = False
    fence: bool = True
    lease_margin: float | None = None  # the workers' client lease margin; None: the library's default


@dataclass(frozen=True)
class Workload:
    """A scenario's departures from the checker's workload (None: the CheckerConfig value)."""

    workers: int | None = None
    names: int | None = None
    ttl: int | None = None
    # Writes per hold: a fault aimed at a holder must find it in the middle of its work (a hold of ~4 s
    # at 150, longer than the TTL), not already releasing.
    writes: int | None = None
    txn_writes: bool = False  # holders check ownership by a guarded write to etcd (lock.txn)
    # Bystanders: the last workers start on the other members (round robin) instead of member 0, with
    # short holds; they take over when a fault on member 0 costs its holder the lock.
    bystanders: int = 0
    bystander_writes: int = 20
    recipe: str = "lock"  # what each name is: "lock", "election" or "semaphore" (worker.RECIPES)
    limit: int = 1  # a semaphore's limit: how many hold a name at once

    def applied_to(self, cfg: CheckerConfig) -> CheckerConfig:
        return dataclasses.replace(
            cfg,
            workers=self.workers or cfg.workers,
            names=self.names or cfg.names,
            ttl=self.ttl or cfg.ttl,
            writes=self.writes or cfg.writes,
        )

    def worker_at(self, i: int, cfg: CheckerConfig, members: int) -> tuple[int, int]:
        """(first member, writes per hold) of worker I."""
        bystander = i - (cfg.workers - self.bystanders)
        if bystander < 0:
            return 0, cfg.writes
        return 1 + bystander % (members - 1), self.bystander_writes


@dataclass
class RunReport:
    scenario: str
    run: int
    acquisitions: int = 0
    writes: int = 0
    writes_rejected: int = 0  # refused by the fence: fencing doing its job, not a violation
    losses: int = 0
    errors: int = 0  # calls that failed during faults (retried by the worker)
    violations: list[str] = field(default_factory=list)
    lost_latencies_ms: list[float] = field(default_factory=list)
    liveness_s: float | None = None  # heal -> every name acquired again
    leftover_keys: int = 0
    leftover_leases: int = 0
    checks: list[str] = field(default_factory=list)  # scenario-specific facts that held (same text every run)
    details: list[str] = field(default_factory=list)  # which worker and lock they were about
    metrics: dict[str, float] = field(default_factory=dict)  # scenario-specific numbers
    crash_output: dict[str, str] = field(default_factory=dict)  # stderr tails of workers that crashed
    left_at_shutdown: list[int] = field(default_factory=lambda: [0, 0])  # keys, leases right after it
    leases_at_shutdown: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    # Where the run was made: commit, date, command, etcd, machine (set by scripts/reliability.py).
    campaign: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            not self.violations
            and self.liveness_s is not None
            and not self.leftover_keys + self.leftover_leases
        )

    def summary(self) -> str:
        lat = percentile(self.lost_latencies_ms, 50), percentile(self.lost_latencies_ms, 99)
        return (
            f"{self.scenario}#{self.run}: {'OK' if self.ok else 'FAILED'} acquisitions={self.acquisitions} "
            f"writes={self.writes} rejected={self.writes_rejected} losses={self.losses} errors={self.errors} "
            f"lost-latency p50/p99={fmt_ms(lat[0])}/{fmt_ms(lat[1])} liveness={self.liveness_s} "
            f"at shutdown keys/leases={self.left_at_shutdown} {self.leases_at_shutdown} "
            f"leftover keys/leases={self.leftover_keys}/{self.leftover_leases} violations={self.violations} "
            f"checks={self.checks} {self.details} {self.metrics}"
        )


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"
