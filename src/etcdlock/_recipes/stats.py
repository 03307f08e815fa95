"""Recipe statistics of one client, as plain numbers: the diagnostics layer renders them (recipes do not
depend on diagnostics)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Seconds; chosen around hand-off latencies (ms) up to long waits and holds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))  # last: +Inf
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds
        self.count += 1


@dataclass
class LockStats:
    acquired: int = 0
    released: int = 0
    lost: int = 0
    timeouts: int = 0
    try_lock_busy: int = 0
    held: int = 0
    # Cleanup that did not land within its deadline (a lock key not deleted, a lease not revoked): what
    # is left goes when the lease's TTL runs out.
    release_failures: int = 0
    revoke_failures: int = 0
    release_retries: int = 0  # releases that missed their deadline and went on in the background
    wait: Histogram = field(default_factory=Histogram)
    hold: Histogram = field(default_factory=Histogram)
