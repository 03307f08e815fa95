"""fork(): a client never hangs in a forked child. Each scenario runs in a fresh interpreter
(tests/fork_child.py), which forks children and reports what each saw, or that it hung."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIO_DEADLINE = 120.0  # seconds for a whole scenario (children have their own deadline inside)
PROMPT = 1.0  # seconds: a refused client says so at once, not after a timeout


def run_scenario(name: str, endpoint: str) -> dict[str, dict[str, object]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fork_child", name, endpoint],
        capture_output=True,
        text=True,
        timeout=SCENARIO_DEADLINE,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"scenario {name} failed: {proc.stderr[-2000:]}"
    report: dict[str, dict[str, object]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def assert_refused(child: dict[str, object], what: str) -> None:
    result = str(child["result"])
    assert result.startswith("ForkError:"), f"{what}: expected a ForkError, got {result}"
    assert float(str(child["seconds"])) < PROMPT, f"{what}: the error took {child['seconds']} s"
    assert "fork" in result and ("spawn" in result or "after the fork" in result), result


@pytest.mark.parametrize("scenario", ["sync-open", "async-open"])
def test_child_of_a_connected_parent_gets_a_clear_error_at_once(
    scenario: str, etcd_endpoints: list[str]
) -> None:
    report = run_scenario(scenario, etcd_endpoints[0])
    assert_refused(report["inherited"], "the inherited client")
    assert_refused(report["new_async"], "a new Client in the child")
    if scenario == "sync-open":
        assert_refused(report["new_sync"], "a new SyncClient in the child")
        # Closing the inherited client in the child is quiet and quick: nothing of it can run there.
        assert report["inherited_close"]["result"] == "ok", report["inherited_close"]


def test_child_of_a_parent_that_connected_before_gets_the_error_even_after_close(
    etcd_endpoints: list[str],
) -> None:
    # gRPC's engine keeps running in the parent after its clients closed; a child hung now and then.
    report = run_scenario("closed-before-fork", etcd_endpoints[0])
    assert_refused(report["new_async"], "a new Client in the child")
    assert_refused(report["new_sync"], "a new SyncClient in the child")


def test_children_of_a_parent_that_never_connected_work(etcd_endpoints: list[str]) -> None:
    report = run_scenario("never-connected", etcd_endpoints[0])
    assert report["new_async"]["result"] == "ok", report
    assert report["new_sync"]["result"] == "ok", report
    # Made before the fork, even unused: it belongs to the parent, and says so at once.
    assert_refused(report["unused"], "the parent's client, never connected")


def test_multiprocessing_fork_pool_errors_and_spawn_pool_works(etcd_endpoints: list[str]) -> None:
    report = run_scenario("pool", etcd_endpoints[0])
    assert_refused(report["pool"], "a client in a fork pool's worker")
    assert report["spawn_pool"]["result"] == "ok", report
