"""Judging a finished run: from the workers' logs, the fenced resource's log, the checker's deletion watch
and what the fault schedule noted, the violations and the lost-signal latencies that go into its report.

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
  * crash: a worker died on its own, or did not shut down cleanly when asked.
Elections, besides the lock's: two-leaders: two leaders' accepted writes interleave at the resource (a
token accepted again after a later token's). Semaphores, instead of stale-accepted, overlap and
held-after-newer (which assume one holder): over-limit-accepted: the counting resource let more than
`limit` holders act at once (recomputed from its log: a holder acts from its entry to its last accepted
write); over-limit-sent: more than `limit` holders acted at once by their own logs (from the acquire to
the last write sent).
Lost-signal latency: from the moment the lock was gone in etcd (its key deleted, as the checker's own
watch saw it) or, for a paused holder, from its resume if later, to the holder's `lost` signal. Negative:
the holder knew before etcd deleted the key (the local deadline runs ahead of the server's).
"""

from __future__ import annotations

from typing import Any

from etcdlock._chaos.faults import FaultContext
from etcdlock._chaos.observers import DeletionRecorder, Events
from etcdlock._chaos.report import RunReport, Workload
from etcdlock._chaos.resource import FencedResource, Write, crowds, interleaved, over_limit, stale_accepted


def judge(
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
