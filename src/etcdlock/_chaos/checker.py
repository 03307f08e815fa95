"""The safety checker: K worker processes contend on M lock names (or elections, or semaphores) under a
fault schedule; afterwards their logs, the fenced resource's log and etcd itself are checked.

Violations (each must be 0):
  * stale-accepted: the resource accepted a token lower than one it had accepted before for that name
    (recomputed from its log);
  * write-after-lost: a holder sent a write after it had been told it lost the lock;
  * overlap: a holder sent a write after a later holder of the same name had acquired it (mutual
    exclusion broken without the holder knowing);
  * acquire-timeout: an acquire waited out its timeout (longer than any fault): a missed wake-up;
  * held-after-newer: an ownership check (`ensure_held()`, or a guarded `lock.txn`) asked after a later
    holder of the same name had acquired it, and passed;
  * txn-failed-silently: `lock.txn` came back without success and without raising LockLost;
  * txn-after-revoke: a guarded txn succeeded though it was sent after its lease was revoked from outside;
  * crash: a worker died on its own, or did not shut down cleanly when asked;
  * harness: a worker ran another copy of etcdlock than the checker's.
Elections, besides the lock's: two-leaders: two leaders' accepted writes interleave at the resource (a
token accepted again after a later token's); slow-new-leader: no new leader within TTL + 1 s of a fault
that took the old one's lease away (failures the fault schedule reports). Semaphores, instead of
stale-accepted, overlap and held-after-newer (which assume one holder): over-limit-accepted: the counting
resource let more than `limit` holders act at once (recomputed from its log: a holder acts from its entry
to its last accepted write); over-limit-sent: more than `limit` holders acted at once by their own logs
(from the acquire to the last write sent).
Liveness: once the faults heal, every name is acquired again. Leftovers: after the clean shutdown no keys
under the run's prefix and no leases remain (a SIGKILLed worker's lease is given its TTL to expire).
Lost-signal latency: from the moment the lock was gone in etcd (its key deleted, as the checker's own
watch saw it) or, for a paused holder, from its resume if later, to the holder's `lost` signal. Negative:
the holder knew before etcd deleted the key (the local deadline runs ahead of the server's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import etcdlock
from etcdlock._chaos.harness import ClusterSpec, FaultCluster, wait_for
from etcdlock._chaos.resource import (
    CountingResource,
    FencedResource,
    Write,
    crowds,
    interleaved,
    over_limit,
    stale_accepted,
)
from etcdlock._chaos.worker import WorkerConfig
from etcdlock._core.errors import EtcdError
from etcdlock._core.types import EventType
from etcdlock._sync import SyncClient


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


# ---- what the workers did ----


class Events:
    """The workers' JSON-line logs, read on demand as they grow (they are written through as things
    happen); only what was appended since the last read is parsed."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = paths
        self._read_to = dict.fromkeys(paths, 0)  # bytes of complete lines parsed so far
        self._parsed: dict[Path, list[dict[str, Any]]] = {path: [] for path in paths}
        self._lock = threading.Lock()  # the checker's threads (a fault schedule's helpers) read too

    def all(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self._lock:
            for path in self._paths:
                out.extend(self._read(path))
        out.sort(key=lambda e: float(e["t"]))
        return out

    def _read(self, path: Path) -> list[dict[str, Any]]:
        try:
            with open(path, "rb") as f:
                f.seek(self._read_to[path])
                fresh = f.read()
        except FileNotFoundError:
            return []
        complete = fresh[: fresh.rfind(b"\n") + 1]  # a line still being written waits for the next read
        self._read_to[path] += len(complete)
        for line in complete.splitlines():
            try:
                self._parsed[path].append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the last line of a killed worker may be cut short
        return self._parsed[path]

    def of(self, ev: str) -> list[dict[str, Any]]:
        return [e for e in self.all() if e["ev"] == ev]

    def acquired_since(self, name: str, since: float) -> bool:
        return self.acquisitions_since(name, since) > 0

    def acquisitions_since(self, name: str, since: float) -> int:
        return sum(1 for e in self.of("acquire") if e["name"] == name and e["t"] > since)


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
        self,
        fc: FaultCluster,
        observer: SyncClient,
        names: list[str],
        events: Events,
        cfg: CheckerConfig,
        *,
        seed: int = 0,
        limit: int = 1,
        deleted: dict[str, float] | None = None,
    ) -> None:
        self.fc = fc
        self.observer = observer
        self.names = names
        self.events = events
        self.cfg = cfg
        self.writes_per_hold = cfg.writes
        self.limit = limit  # holders of a name at once: the lowest LIMIT keys
        self.deleted = {} if deleted is None else deleted  # key -> when the checker's watch saw it go
        self.caught_at: float | None = None  # when pause_a_holder stopped (or killed) the holder it caught
        self.fault_at: float | None = None
        self.healed_at: float | None = None
        self.pauses: list[tuple[str, float, float]] = []  # (worker, paused at, resumed at)
        self.revoked: list[tuple[int, float]] = []  # (lease, revoked from outside by) for txn-after-revoke
        self.rng = random.Random(seed)  # a scenario's random choices: the same for the same run number
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

    def wait_each_acquired(self, times: int, since: float, what: str, timeout: float = 45) -> None:
        """Wait until every lock name was acquired `times` times after `since` (work went on)."""
        self.wait(
            lambda: all(self.events.acquisitions_since(n, since) >= times for n in self.names), timeout, what
        )

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

    def holders(self) -> Iterator[tuple[str, str, int, int]]:
        """(name, worker, lease, token) of each holder of each name per etcd right now."""
        for name in self.names:
            for found in self.holders_of(name):
                yield (name, *found)

    def holders_of(self, name: str) -> list[tuple[str, int, int]]:
        """(worker, lease, token) of NAME's current holders per etcd: the keys of the `limit` lowest
        create revisions (one for a lock or an election), those a worker has reported acquiring."""
        r = self.observer.get(
            name + "/", prefix=True, sort_order="ascend", sort_target="create", limit=self.limit
        )
        acquired = {(e["name"], e["lease"]): str(e["worker"]) for e in self.events.of("acquire")}
        return [
            (acquired[(name, kv.lease)], kv.lease, kv.create_revision)
            for kv in r.kvs
            if (name, kv.lease) in acquired
        ]

    def worker(self, name: str) -> Any:
        return next(w for w in self.fc.workers if w.cfg.worker == name)

    def slot_taken_over(self, name: str, token: int, since: float) -> float | None:
        """When `limit` processes other than the holder with TOKEN first acted on NAME at once, one of
        them having acquired after SINCE: the moment TOKEN's place went to another (the others alone
        fill the semaphore); None if that has not happened yet. Each acts from its acquire to its last
        write sent, within the time etcd counted it among the holders."""
        spans: dict[int, list[float]] = {}
        for e in self.events.all():
            if e.get("name") != name or e.get("token") in (None, token):
                continue
            if e["ev"] == "acquire":
                spans[e["token"]] = [float(e["t"]), float(e["t"])]
            elif e["ev"] == "write" and e["token"] in spans:
                spans[e["token"]][1] = float(e["sent"])
        full = [
            max(spans[t][0] for t in crowd)
            for crowd in crowds(spans, self.limit - 1)
            if max(spans[t][0] for t in crowd) > since
        ]
        return min(full, default=None)

    def writes_done(self, worker: str, token: int) -> int:
        return sum(1 for e in self.events.of("write") if e["worker"] == worker and e["token"] == token)

    def learned_loss(self, worker: str, token: int) -> dict[str, Any] | None:
        """WORKER's first sign that it lost the lock it got with TOKEN: its `lost` signal, or a check
        that raised LockLost ("stopped"); None if it has not learned yet."""
        return next(
            (
                e
                for e in self.events.all()
                if e["worker"] == worker and e.get("token") == token and e["ev"] in ("lost", "stopped")
            ),
            None,
        )


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
        _judge(report, events, resource, recorder, ctx, exits, workload)
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


def _judge(
    report: RunReport,
    events: Events,
    resource: FencedResource,
    recorder: DeletionRecorder,
    ctx: FaultContext,
    exits: dict[str, int],
    workload: Workload,
) -> None:
    evs = events.all()
    acquires = [e for e in evs if e["ev"] == "acquire"]
    writes = [e for e in evs if e["ev"] == "write"]
    lost = [e for e in evs if e["ev"] == "lost"]
    report.acquisitions = len(acquires)
    log = resource.snapshot()
    report.writes = sum(1 for w in log if w.op == "W")
    report.writes_rejected = sum(1 for w in log if w.op == "W" and not w.accepted)
    report.losses = len(lost)
    report.errors = sum(1 for e in evs if e["ev"] == "error")

    lost_at = {(e["worker"], e["name"], e["token"]): float(e["t"]) for e in lost}
    for w in writes:
        t_lost = lost_at.get((w["worker"], w["name"], w["token"]))
        if t_lost is not None and w["sent"] > t_lost:
            report.violations.append(f"write-after-lost: {w['worker']} {w['name']} token {w['token']}")
    if workload.recipe == "semaphore":
        report.violations.extend(_over_limit(log, acquires, writes, workload.limit))
    else:
        report.violations.extend(_one_holder_violations(log, acquires, writes, evs, workload.recipe))
    report.violations.extend(_txn_violations(evs, ctx.revoked))
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


def _one_holder_violations(
    log: list[Write],
    acquires: list[dict[str, Any]],
    writes: list[dict[str, Any]],
    evs: list[dict[str, Any]],
    recipe: str,
) -> list[str]:
    """A lock's (and an election's) rules: tokens only go up at the resource, and nobody acts (writes,
    passes a check) once a later holder acquired the name."""
    out = [f"stale-accepted: {bad.name} token {bad.token} from {bad.worker}" for bad in stale_accepted(log)]
    if recipe == "election":
        out += [
            f"two-leaders: {name} accepted token {token} again after token {between}"
            for name, token, between in interleaved(log)
        ]
    for w in writes:
        later = [
            a for a in acquires if a["name"] == w["name"] and a["token"] > w["token"] and a["t"] < w["sent"]
        ]
        if later:
            first = later[0]
            out.append(
                f"overlap: {w['worker']} wrote {w['name']} with token {w['token']} after "
                f"{first['worker']} acquired it with token {first['token']}"
            )
    return out + _checks_after_newer(evs, acquires)


def _over_limit(
    log: list[Write], acquires: list[dict[str, Any]], writes: list[dict[str, Any]], limit: int
) -> list[str]:
    """A semaphore's rule: no more than LIMIT holders act at once, at the resource and by their own logs."""
    out = [
        f"over-limit-accepted: {name}: tokens {tokens} acted at once at the resource (limit {limit})"
        for name, tokens in over_limit(log, limit)
    ]
    spans: dict[tuple[str, int], list[float]] = {(a["name"], a["token"]): [a["t"], a["t"]] for a in acquires}
    worker_of = {(a["name"], a["token"]): a["worker"] for a in acquires}
    for w in writes:
        spans[(w["name"], w["token"])][1] = float(w["sent"])
    for name in sorted({n for n, _ in spans}):
        for tokens in crowds({t: span for (n, t), span in spans.items() if n == name}, limit):
            who = [worker_of[(name, t)] for t in tokens]
            out.append(f"over-limit-sent: {name}: tokens {tokens} of {who} acted at once (limit {limit})")
    return out


def _checks_after_newer(evs: list[dict[str, Any]], acquires: list[dict[str, Any]]) -> list[str]:
    """Ownership checks that passed though they were asked after a later holder had acquired the name.
    Asked, not answered: a check that started before the other acquire may rightly pass."""
    out = []
    for c in (e for e in evs if e["ev"] == "checked"):
        later = next(
            (
                a
                for a in acquires
                if a["name"] == c["name"] and a["token"] > c["token"] and a["t"] < c["asked"]
            ),
            None,
        )
        if later is not None:
            late = c["asked"] - later["t"]
            out.append(
                f"held-after-newer: {c['worker']} passed {c['via']} on {c['name']} with token {c['token']} "
                f"{late:.3f}s after {later['worker']} acquired it with token {later['token']}"
            )
    return out


def _txn_violations(evs: list[dict[str, Any]], revoked: list[tuple[int, float]]) -> list[str]:
    out = []
    lease_of = {(a["worker"], a["token"]): a["lease"] for a in evs if a["ev"] == "acquire"}
    revoked_at = dict(revoked)
    for e in (e for e in evs if e["ev"] == "txn"):
        if not e["ok"]:
            out.append(f"txn-failed-silently: {e['worker']} on {e['name']} with token {e['token']}")
            continue
        t_revoked = revoked_at.get(lease_of.get((e["worker"], e["token"]), -1))
        if t_revoked is not None and e["sent"] > t_revoked:
            out.append(f"txn-after-revoke: {e['worker']} on {e['name']} with token {e['token']}")
    return out


def running_holder(
    ctx: FaultContext, *, among: Collection[str] | None = None, early: float = 0.5, timeout: float = 30
) -> tuple[str, str, int, int]:
    """A worker (one of AMONG, if given) that holds a lock per etcd and has made fewer than EARLY of its
    writes, so a fault now finds it with work still to do. Returns (worker, name, lease, token)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, worker, lease, token in ctx.holders():
            early_enough = ctx.writes_done(worker, token) < ctx.writes_per_hold * early
            if (among is None or worker in among) and early_enough:
                return worker, name, lease, token
        time.sleep(0.01)  # poll the queue again (a condition wait with the deadline above)
    raise AssertionError(f"no worker{' of ' + str(sorted(among)) if among else ''} caught early in a hold")


def pause_a_holder(
    ctx: FaultContext, *, kill: bool = False, mid_work: bool = False
) -> tuple[str, str, int, int]:
    """Stop (or kill) a process while it holds a lock, and make sure it did hold it at that moment.
    mid_work: only in the first half of its writes, so that it still has work to do when it resumes
    (a holder caught while already releasing has nothing left to learn the loss for).

    Returns (worker, name, lease, token)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for name, worker, lease, token in ctx.holders():
            proc = ctx.worker(worker)
            caught = time.monotonic()
            proc.pause()
            # Did it still hold the lock when it stopped? Its key must still be there.
            again = ctx.observer.get(f"{name}/{lease:x}", keys_only=True)
            early = ctx.writes_done(worker, token) < ctx.writes_per_hold / 2
            if again.kvs and again.kvs[0].create_revision == token and (early or not mid_work):
                if kill:
                    proc.kill()
                    ctx.killed.append(worker)
                ctx.caught_at = caught  # its lease has not been renewed since
                return worker, name, lease, token
            proc.resume()  # it had let go in between: try again
        time.sleep(0.01)  # poll the queue again (a condition wait with the deadline above)
    raise AssertionError("could not catch a worker while it held a lock")
