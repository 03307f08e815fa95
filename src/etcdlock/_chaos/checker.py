"""Running one scenario through the safety checker: K worker processes contend on M lock names (or
elections, or semaphores) under the scenario's fault schedule; afterwards judging.py checks their logs and
the fenced resource's log, and this module etcd itself.

Besides judging.py's violations, the run itself reports (each must be 0):
  * harness: a worker ran another copy of etcdlock than the checker's;
  * liveness: once the faults heal, every name is acquired again (and once more after that);
  * the fault schedule's own failures, e.g. slow-new-leader: no new leader within TTL + 1 s of a fault
    that took the old one's lease away (recipe_scenarios.py).
Leftovers: after the clean shutdown no keys under the run's prefix and no leases remain (a SIGKILLed
worker's lease is given its TTL to expire).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import etcdlock
from etcdlock._chaos.faults import FaultContext
from etcdlock._chaos.harness import ClusterSpec, FaultCluster, wait_for
from etcdlock._chaos.judging import judge
from etcdlock._chaos.observers import DeletionRecorder, Events
from etcdlock._chaos.report import CheckerConfig, RunReport, Workload
from etcdlock._chaos.resource import CountingResource, FencedResource
from etcdlock._chaos.worker import WorkerConfig
from etcdlock._core.errors import EtcdError
from etcdlock._sync import SyncClient


def run_scenario(scenario: Any, *, run: int = 0, cfg: CheckerConfig | None = None) -> RunReport:
    workload: Workload = scenario.workload
    cfg = workload.applied_to(cfg or CheckerConfig())
    report = RunReport(scenario=scenario.name, run=run)
    started = time.monotonic()
    prefix = f"/chaos/{scenario.name}/{run}/"
    names = [f"{prefix}{workload.recipe}{i}" for i in range(cfg.names)]  # lock0, election0, ...
    cluster: ClusterSpec = scenario.cluster
    resource = (
        CountingResource(workload.limit, enforce=cfg.fence)
        if workload.recipe == "semaphore"
        else FencedResource(enforce=cfg.fence)
    )
    with (
        FaultCluster(cluster) as fc,
        resource,
        SyncClient(fc.direct_endpoints) as observer,
    ):
        recorder = DeletionRecorder(observer, prefix).start()
        try:
            logs = []
            for i in range(cfg.workers):
                log_path = fc.dir / f"worker{i}.jsonl"
                logs.append(log_path)
                first, writes = workload.worker_at(i, cfg, len(fc.members))
                fc.start_worker(
                    WorkerConfig(
                        worker=f"w{i}",
                        endpoints=fc.client_path(f"w{i}", first=first),
                        names=names,
                        resource=resource.address,
                        log_path=str(log_path),
                        ttl=cfg.ttl,
                        acquire_timeout=cfg.acquire_timeout,
                        writes=writes,
                        seed=run * 1000 + i,
                        ignore_loss=cfg.ignore_loss,
                        txn_writes=workload.txn_writes,
                        lease_margin=cfg.lease_margin,
                        recipe=workload.recipe,
                        limit=workload.limit,
                    )
                )
            events = Events(logs)
            ctx = FaultContext(
                fc, observer, names, events, cfg, seed=run, limit=workload.limit, deleted=recorder.deleted
            )
            wait_for(
                lambda: len(events.of("ready")) == cfg.workers,
                cfg.liveness_timeout,
                "every worker to connect",
            )
            report.violations.extend(_foreign_imports(events))
            warm = time.monotonic()
            wait_for(
                lambda: all(events.acquired_since(n, warm) for n in names),
                cfg.liveness_timeout,
                "every lock to be acquired once before the fault",
            )
            scenario.inject(ctx)
            if ctx.healed_at is None:
                ctx.mark_healed()
            healed = ctx.healed_at
            assert healed is not None
            try:
                wait_for(
                    lambda: all(events.acquired_since(n, healed) for n in names),
                    cfg.liveness_timeout,
                    "every lock to be acquired again after the faults healed",
                )
                report.liveness_s = round(
                    max(
                        min(e["t"] for e in events.of("acquire") if e["name"] == n and e["t"] > healed)
                        for n in names
                    )
                    - healed,
                    3,
                )
            except AssertionError as e:
                report.violations.append(f"liveness: {e}")
            # Some more ordinary work after the heal, then a clean shutdown.
            after = time.monotonic()
            try:
                wait_for(
                    lambda: all(events.acquired_since(n, after) for n in names),
                    cfg.liveness_timeout,
                    "more acquisitions after the heal",
                )
            except AssertionError as e:
                report.violations.append(f"liveness: {e}")
            exits = fc.stop_workers()
            for w in fc.workers:
                if w.cfg.worker not in ctx.killed and exits[w.cfg.worker] != 0:
                    report.crash_output[w.cfg.worker] = w.stderr_tail()
            report.checks.extend(ctx.checks)
            report.details.extend(ctx.details)
            report.metrics.update(ctx.metrics)
            report.violations.extend(ctx.failures)
            _leftovers(report, observer, prefix, ctx, cfg)
        finally:
            recorder.close()
        judge(report, events, resource, recorder, ctx, exits, workload)
    report.duration_s = round(time.monotonic() - started, 1)
    return report


def _foreign_imports(events: Events) -> list[str]:
    """Workers are spawned with the checker's environment, so they must import the same etcdlock (a
    stale installed copy would test other code than the one under test)."""
    return [
        f"harness: {e['worker']} imported {e['module']}, the checker {etcdlock.__file__}"
        for e in events.of("start")
        if e.get("module") != etcdlock.__file__
    ]


def _leftovers(
    report: RunReport, observer: SyncClient, prefix: str, ctx: FaultContext, cfg: CheckerConfig
) -> None:
    """What the clean shutdown left: keys under the prefix and leases, right away and after one TTL.

    Right after the shutdown, a lease may remain that a worker was granted but never heard of (the reply
    was lost in the fault) or failed to revoke (etcd unreachable past the cleanup deadline), and a killed
    worker's lease remains by definition. Such leases have no keepalive, so they must be gone one TTL
    later; anything still there then is a leak."""

    def count() -> tuple[int, int]:
        try:
            keys = observer.get(prefix, prefix=True, count_only=True).count
            leases = len(observer.leases())
        except EtcdError:
            return -1, -1
        return keys, leases

    report.left_at_shutdown = list(count())
    known = {int(e["lease"]) for e in ctx.events.of("acquire")}
    for lease in observer.leases():
        with contextlib.suppress(EtcdError):
            ttl = observer.time_to_live(lease, keys=True)
            report.leases_at_shutdown.append(
                f"{lease:x} ttl={ttl.ttl}/{ttl.granted_ttl} keys={len(ttl.keys)} "
                f"{'held by a worker' if lease in known else 'never reported to a worker'}"
            )
    if report.left_at_shutdown != [0, 0]:
        with contextlib.suppress(AssertionError):
            wait_for(lambda: count() == (0, 0), cfg.ttl + 10, "leftover leases to expire")
    report.leftover_keys, report.leftover_leases = count()
