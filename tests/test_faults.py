"""Fault scenarios under the safety checker (src/etcdlock/_chaos): each its own test, one run each here.

By default one scenario of each kind of fault runs (QUICK: a holder killed, paused, cut off; the member in
use killed; compaction; an election's leader paused; a semaphore's holder cut off), so the test command stays
within its time; `--slow` runs every scenario, three times each. `scripts/reliability.py --runs 10` runs
them all repeatedly and writes RELIABILITY.md.
"""

from __future__ import annotations

import pytest

from etcdlock._chaos import SCENARIOS, run_scenario
from etcdlock._chaos.report import CheckerConfig, RunReport


def runs(request: pytest.FixtureRequest) -> int:
    return 3 if request.config.getoption("--slow") else 1


def check(report: RunReport) -> None:
    print(report.summary())
    assert not report.violations, report.summary()
    assert report.liveness_s is not None, report.summary()
    assert (report.leftover_keys, report.leftover_leases) == (0, 0), report.summary()
    assert report.acquisitions > 0 and report.writes > 0, report.summary()


QUICK = {
    "holder-killed",
    "holder-paused",
    "holder-partitioned",
    "member-in-use-killed",
    "compaction",
    "election-leader-paused",
    "semaphore-holder-partitioned",
}


@pytest.mark.parametrize(
    "name", [name if name in QUICK else pytest.param(name, marks=pytest.mark.slow) for name in SCENARIOS]
)
def test_scenario(name: str, request: pytest.FixtureRequest) -> None:
    for run in range(runs(request)):
        report = run_scenario(SCENARIOS[name], run=run)
        check(report)
        if name == "holder-paused":
            assert report.losses >= 1 and report.lost_latencies_ms, report.summary()
            assert "the resumed holder learned it had lost the lock before writing again" in report.checks
            assert "another process held the lock while its holder was stopped" in report.checks
        if name == "client-cut-off":
            assert "work went on through the other members during the cut" in report.checks, report.summary()
        if name == "holder-partitioned":
            assert report.losses >= 1 and report.lost_latencies_ms, report.summary()
            assert "the cut-off holder knew it lost the lock before another process took it" in report.checks
        if name == "holder-killed":
            assert "another process took the lock after its holder was killed" in report.checks
        assert set(FACTS.get(name, ())) <= set(report.checks), report.summary()


# What must have happened for a scenario's fault to have bitten, besides no violations.
FACTS = {
    "compaction-storm-resets": ["waiters went on through compactions every 50 ms and connection resets"],
    "holder-key-deleted-during-compacted-restart": [
        "another process took the lock after its holder's key was deleted from outside"
    ],
    "partition-leader-isolated": ["work went on through the other members while the leader was cut off"],
    "partition-slow-leader-isolated": ["the cut-off leader still led when the others had elected a new one"],
    "lease-revoked-during-txn-loops": ["another process took the lock after its holder's lease was revoked"],
    "election-leader-killed": ["a new leader within TTL + 1 s of the fault"],
    "election-leader-paused": [
        "a new leader within TTL + 1 s of the fault",
        "the old leader's `lost` fired before it wrote again",
    ],
    "election-leader-partitioned": [
        "a new leader within TTL + 1 s of the fault",
        "the cut-off leader's `lost` fired before it had a successor",
    ],
    "semaphore-holder-paused": ["the old holder's `lost` fired before it wrote again"],
    "semaphore-holder-partitioned": ["the cut-off holder's `lost` fired before it had a successor"],
}


def test_the_checker_catches_holders_that_ignore_loss() -> None:
    """The same pause, with holders that never call ensure_held() and a resource that does not fence:
    the paused holder writes on after it lost the lock, and the checker must say so."""
    cfg = CheckerConfig(ignore_loss=True, fence=False, writes=100)  # a long hold: paused mid-writes
    report = run_scenario(SCENARIOS["holder-paused"], cfg=cfg)
    print(report.summary())
    kinds = {v.split(":")[0] for v in report.violations}
    assert "overlap" in kinds, report.summary()
    assert "stale-accepted" in kinds, report.summary()


def kinds(report: RunReport) -> set[str]:
    return {v.split(":")[0] for v in report.violations}


@pytest.mark.slow
def test_the_checker_catches_leaders_that_ignore_loss() -> None:
    """The paused leader, never checking, writes on after a new leader is in; with fencing off the
    resource takes both, and the checker must see the two leaders' writes interleave."""
    cfg = CheckerConfig(ignore_loss=True, fence=False)
    report = run_scenario(SCENARIOS["election-leader-paused"], cfg=cfg)
    print(report.summary())
    assert {"two-leaders", "overlap", "stale-accepted", "write-after-lost"} <= kinds(report), report.summary()


@pytest.mark.slow
@pytest.mark.parametrize("fence", [False, True])
def test_the_checker_catches_semaphore_holders_that_ignore_loss(fence: bool) -> None:
    """The paused holder, never checking, writes on after its place was filled (limit 2: three act at
    once). The workers' own logs say so either way; the counting resource refuses those writes, and
    with its enforcement off its log shows the crowd."""
    cfg = CheckerConfig(ignore_loss=True, fence=fence)
    report = run_scenario(SCENARIOS["semaphore-holder-paused"], cfg=cfg)
    print(report.summary())
    assert {"over-limit-sent", "write-after-lost"} <= kinds(report), report.summary()
    if fence:
        assert "over-limit-accepted" not in kinds(report) and report.writes_rejected > 0, report.summary()
    else:
        assert "over-limit-accepted" in kinds(report) and report.writes_rejected == 0, report.summary()
