"""The safety checker: K worker processes contend on M lock names under a fault schedule; afterwards
their logs, the fenced resource's log and etcd itself are checked.

Violations (each must be 0):
  * stale-accepted: the resource accepted a token lower than one it had accepted before for that name
    (recomputed from its log);
  * write-after-lost: a holder sent a write after it had been told it lost the lock;
  * overlap: a holder sent a write after a later holder of the same name had acquired it (mutual
    exclusion broken without the holder knowing);
  * acquire-timeout: an acquire waited out its timeout (longer than any fault): a missed wake-up;
  * crash: a worker died on its own, or did not shut down cleanly when asked.
Liveness: once the faults heal, every name is acquired again. Leftovers: after the clean shutdown no keys
under the run's prefix and no leases remain (a SIGKILLed worker's lease is given its TTL to expire).
Lost-signal latency: from the moment the lock was gone in etcd (its key deleted, as the checker's own
watch saw it) or, for a paused holder, from its resume if later, to the holder's `lost` signal. Negative:
the holder knew before etcd deleted the key (the local deadline runs ahead of the server's).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdlock.chaos.harness import FaultCluster, wait_for
from etcdlock.chaos.resource import FencedResource, stale_accepted
from etcdlock.chaos.worker import WorkerConfig
from etcdlock.core.errors import EtcdError
from etcdlock.core.types import EventType
from etcdlock.sync import SyncClient


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


# ---- what the workers did ----


class Events:
    """The workers' JSON-line logs, re-read on demand (they are written through as things happen)."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = paths

    def all(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for path in self._paths:
            out.extend(self._read(path))
        out.sort(key=lambda e: float(e["t"]))
        return out

    @staticmethod
    def _read(path: Path) -> Iterator[dict[str, Any]]:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a killed worker may be cut short

    def of(self, ev: str) -> list[dict[str, Any]]:
        return [e for e in self.all() if e["ev"] == ev]

    def acquired_since(self, name: str, since: float) -> bool:
        return any(e["name"] == name and e["t"] > since for e in self.of("acquire"))


class DeletionRecorder:
    """Watches the run's prefix from the checker (directly on the members) and notes when each lock key
    disappeared, on the same monotonic clock the workers use."""

    def __init__(self, client: SyncClient, prefix: str) -> None:
        self.deleted: dict[str, float] = {}
        self._client = client
        self._prefix = prefix
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="etcdlock-chaos-deletions", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> DeletionRecorder:
        self._thread.start()
        if not self._started.wait(15):
            raise RuntimeError("the deletion watch did not start")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        try:
            with self._client.watch(self._prefix, prefix=True) as watch:
                self._started.set()
                while not self._stop.is_set():
                    try:
                        ev = watch.next(timeout=0.2)
                    except TimeoutError:
                        continue
                    if ev.type is EventType.DELETE:
                        self.deleted.setdefault(ev.kv.key.decode(), time.monotonic())
        except BaseException as e:
            self._error = e
            self._started.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(15)


# ---- a run ----


class FaultContext:
    """What a scenario's fault schedule gets to work with."""

    def __init__(
        self, fc: FaultCluster, observer: SyncClient, names: list[str], events: Events, cfg: CheckerConfig
    ) -> None:
        self.fc = fc
        self.observer = observer
        self.names = names
        self.events = events
        self.cfg = cfg
        self.writes_per_hold = cfg.writes
        self.fault_at: float | None = None
        self.healed_at: float | None = None
        self.pauses: list[tuple[str, float, float]] = []  # (worker, paused at, resumed at)
        self.killed: list[str] = []
        self.checks: list[str] = []
        self.details: list[str] = []
        self.metrics: dict[str, float] = {}
        self.failures: list[str] = []

    def mark_fault(self) -> None:
        self.fault_at = time.monotonic()

    def mark_healed(self) -> None:
        self.healed_at = time.monotonic()

    def hold(self, seconds: float) -> None:
        """Let the fault last: the passage of time is the fault itself here, not a synchronisation."""
        time.sleep(seconds)

    def wait(self, cond: object, timeout: float, what: str) -> None:
        wait_for(cond, timeout, what)

    def wait_taken_over(self, name: str, token: int, from_whom: str) -> dict[str, Any]:
        """Wait until another process acquires NAME after the holder with TOKEN; its acquire event."""

        def taken() -> dict[str, Any] | None:
            return next(
                (e for e in self.events.of("acquire") if e["name"] == name and e["token"] > token), None
            )

        self.wait(
            lambda: taken() is not None, self.cfg.ttl + 20, f"another process to take {name} from {from_whom}"
        )
        found = taken()
        assert found is not None
        return found

    def holder(self, name: str) -> tuple[str, int, int] | None:
        """(worker, lease, token) of NAME's current holder per etcd, or None."""
        r = self.observer.get(name + "/", prefix=True, sort_order="ascend", sort_target="create", limit=1)
        if not r.kvs:
            return None
        kv = r.kvs[0]
        lease = kv.lease
        for e in self.events.of("acquire"):
            if e["lease"] == lease and e["name"] == name:
                return str(e["worker"]), lease, kv.create_revision
        return None

    def worker(self, name: str) -> Any:
        return next(w for w in self.fc.workers if w.cfg.worker == name)


def run_scenario(scenario: Any, *, run: int = 0, cfg: CheckerConfig | None = None) -> RunReport:
    cfg = cfg or CheckerConfig()
    report = RunReport(scenario=scenario.name, run=run)
    started = time.monotonic()
    prefix = f"/chaos/{scenario.name}/{run}/"
    names = [f"{prefix}lock{i}" for i in range(cfg.names)]
    with (
        FaultCluster() as fc,
        FencedResource(enforce=cfg.fence) as resource,
        SyncClient(fc.direct_endpoints) as observer,
    ):
        recorder = DeletionRecorder(observer, prefix).start()
        try:
            logs = []
            for i in range(cfg.workers):
                log_path = fc.dir / f"worker{i}.jsonl"
                logs.append(log_path)
                fc.start_worker(
                    WorkerConfig(
                        worker=f"w{i}",
                        endpoints=fc.client_path(f"w{i}"),
                        names=names,
                        resource=resource.address,
                        log_path=str(log_path),
                        ttl=cfg.ttl,
                        acquire_timeout=cfg.acquire_timeout,
                        writes=scenario.writes or cfg.writes,
                        seed=run * 1000 + i,
                        ignore_loss=cfg.ignore_loss,
                    )
                )
            events = Events(logs)
            ctx = FaultContext(fc, observer, names, events, cfg)
            ctx.writes_per_hold = scenario.writes or cfg.writes
            wait_for(
                lambda: len(events.of("ready")) == cfg.workers,
                cfg.liveness_timeout,
                "every worker to connect",
            )
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
        _judge(report, events, resource, recorder, ctx, exits)
    report.duration_s = round(time.monotonic() - started, 1)
    return report


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


def _judge(
    report: RunReport,
    events: Events,
    resource: FencedResource,
    recorder: DeletionRecorder,
    ctx: FaultContext,
    exits: dict[str, int],
) -> None:
    evs = events.all()
    acquires = [e for e in evs if e["ev"] == "acquire"]
    writes = [e for e in evs if e["ev"] == "write"]
    lost = [e for e in evs if e["ev"] == "lost"]
    report.acquisitions = len(acquires)
    log = resource.snapshot()
    report.writes = len(log)
    report.writes_rejected = sum(1 for w in log if not w.accepted)
    report.losses = len(lost)
    report.errors = sum(1 for e in evs if e["ev"] == "error")

    for bad in stale_accepted(log):
        report.violations.append(f"stale-accepted: {bad.name} token {bad.token} from {bad.worker}")
    lost_at = {(e["worker"], e["name"], e["token"]): float(e["t"]) for e in lost}
    for w in writes:
        t_lost = lost_at.get((w["worker"], w["name"], w["token"]))
        if t_lost is not None and w["sent"] > t_lost:
            report.violations.append(f"write-after-lost: {w['worker']} {w['name']} token {w['token']}")
    for w in writes:
        later = [
            a for a in acquires if a["name"] == w["name"] and a["token"] > w["token"] and a["t"] < w["sent"]
        ]
        if later:
            first = later[0]
            report.violations.append(
                f"overlap: {w['worker']} wrote {w['name']} with token {w['token']} after "
                f"{first['worker']} acquired it with token {first['token']}"
            )
    for e in evs:
        if e["ev"] == "timeout":
            report.violations.append(f"acquire-timeout: {e['worker']} on {e['name']} (missed wake-up?)")
        if e["ev"] == "crash":
            report.violations.append(f"crash: {e['worker']}: {e['error']}")
    for worker, code in exits.items():
        if worker not in ctx.killed and code != 0:
            report.violations.append(f"crash: {worker} exited with {code}")

    # Lost-signal latency.
    lease_of = {(a["worker"], a["name"], a["token"]): a["lease"] for a in acquires}
    for e in lost:
        lease = lease_of.get((e["worker"], e["name"], e["token"]))
        if lease is None:
            continue
        key = f"{e['name']}/{lease:x}"
        gone = recorder.deleted.get(key)
        resumed = [r for (w, p, r) in ctx.pauses if w == e["worker"]]
        ref_candidates = [t for t in [gone, *resumed] if t is not None]
        if not ref_candidates:
            continue
        report.lost_latencies_ms.append(round((float(e["t"]) - max(ref_candidates)) * 1000, 1))


def pause_a_holder(
    ctx: FaultContext, *, kill: bool = False, mid_work: bool = False
) -> tuple[str, str, int, int]:
    """Stop (or kill) a process while it holds a lock, and make sure it did hold it at that moment.
    mid_work: only in the first half of its writes, so that it still has work to do when it resumes
    (a holder caught while already releasing has nothing left to learn the loss for).

    Returns (worker, name, lease, token)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for name in ctx.names:
            found = ctx.holder(name)
            if found is None:
                continue
            worker, lease, token = found
            proc = ctx.worker(worker)
            proc.pause()
            # Did it still hold the lock when it stopped? Its key must still be there.
            again = ctx.observer.get(f"{name}/{lease:x}", keys_only=True)
            written = sum(1 for e in ctx.events.of("write") if e["worker"] == worker and e["token"] == token)
            early = written < ctx.writes_per_hold / 2
            if again.kvs and again.kvs[0].create_revision == token and (early or not mid_work):
                if kill:
                    proc.kill()
                    ctx.killed.append(worker)
                return worker, name, lease, token
            proc.resume()  # it had let go in between: try again
        time.sleep(0.01)  # poll the queue again (a condition wait with the deadline above)
    raise AssertionError("could not catch a worker while it held a lock")
