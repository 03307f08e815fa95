"""Run every fault scenario N times through the safety checker and write RELIABILITY.md.

    .venv/bin/python scripts/reliability.py --runs 5            # all scenarios, ~25 min on 2 cores
    .venv/bin/python scripts/reliability.py --runs 1 --scenario holder-paused --out /tmp/r.md
    .venv/bin/python scripts/reliability.py --runs 10 --scenario election-leader-killed \
        --merge docs/reliability/runs.json    # re-run one scenario, keep the others' recorded runs

Each run starts its own 3-member etcd cluster behind fault proxies, K worker processes, a fenced
resource, and stops all of them by PID. Per-run details go to docs/reliability/runs.json, each with the
campaign it came from (commit, date, command, etcd, machine), which RELIABILITY.md lists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from etcdlock._chaos import SCENARIOS, RunReport, run_scenario
from etcdlock._chaos.report import CheckerConfig, fmt_ms, percentile
from etcdlock.testing import find_etcd_binary

ROOT = Path(__file__).resolve().parent.parent


def etcd_version() -> str:
    out = subprocess.run([find_etcd_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0].strip()


def commit() -> str:
    """HEAD's short hash, "+changes" if the code run differs from it (uncommitted changes in src/ or
    scripts/)."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", "src", "scripts"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return head + ("+changes" if changed else "")


def this_campaign(command: str) -> dict[str, str]:
    return {
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command,
        "etcd": etcd_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}",
    }


def campaign_lines(reports: list[RunReport]) -> list[str]:
    """Where the runs were made: one set of lines, or one per campaign when runs of several are kept."""
    campaigns: dict[tuple[str, ...], list[str]] = {}
    for r in reports:
        key = tuple(r.campaign.get(k, "?") for k in ("date", "commit", "command", "etcd", "machine"))
        if r.scenario not in campaigns.setdefault(key, []):
            campaigns[key].append(r.scenario)
    setup = (
        "3 members on loopback (heartbeat 50 ms, election 500 ms), each behind a fault-injecting TCP proxy "
        "per worker; in the partition scenarios the members' peer traffic goes through a router that cuts "
        "links between members"
    )
    etcds = sorted({key[3] for key in campaigns})
    machines = sorted({key[4] for key in campaigns})
    lines = [f"- etcd: {' / '.join(etcds)}, {setup}", f"- machine: {' / '.join(machines)}"]
    if len(campaigns) == 1:
        ((date, head, command, _, _),) = campaigns
        return [f"- date: {date}", f"- commit: {head}", *lines, f"- command: `{command}`"]
    lines.append("- campaigns (each scenario's runs come from one):")
    for (date, head, command, etcd, machine), names in campaigns.items():
        where = "" if len(etcds) == len(machines) == 1 else f", {etcd}, {machine}"
        lines.append(f"  - {date}, commit {head}{where}, `{command}`: {', '.join(names)}")
    return lines


def table(reports: list[RunReport], cfg: CheckerConfig, runs: int) -> str:
    lines = [
        "# Reliability under faults",
        "",
        "Produced by `scripts/reliability.py` (the safety checker in `src/etcdlock/_chaos/`); "
        "do not edit by hand.",
        "",
        *campaign_lines(reports),
        f"- workload per run, unless a scenario's description says otherwise: {cfg.workers} worker "
        f"processes contend on {cfg.names} lock names (TTL {cfg.ttl} s, acquire timeout "
        f"{cfg.acquire_timeout:g} s); each holder makes {cfg.writes} writes 20 ms apart to a fenced "
        "resource, each after `await ensure_held()` (150 writes, a hold of ~4 s, in the scenarios aimed at "
        "a holder, so the fault finds it mid-work; their liveness includes waiting out such holds); in "
        "lease-revoked-during-txn-loops the check before each write is a guarded `lock.txn` instead; in the "
        "election-* scenarios each name is an election whose leader makes the writes, fenced by its term's "
        "token; in the semaphore-* scenarios it is a semaphore whose holders register their tokens with a "
        "counting resource when they get in and leave it when they let go",
        "",
        "Violations counted (all must be 0): the resource accepting a stale token; a write sent after the "
        "holder was told `lost`; a write sent after a later holder had acquired the name (overlap); "
        "an ownership check (`ensure_held()` or a guarded txn) asked after a later holder had acquired "
        "the name, and passed (held-after-newer); a `lock.txn` that failed without raising LockLost, or "
        "succeeded though sent after its lease was revoked; a holder not told of its loss within TTL + 10 s "
        "of an outside deletion or revoke; "
        "an acquire that timed out (a missed wake-up); a worker crash; liveness failing (a name not "
        "acquired again after the "
        "heal). "
        "For elections also: two leaders' accepted writes interleaving at the resource (two-leaders); no new "
        "leader within TTL + 1 s of a fault that took the leader's lease (slow-new-leader; counted from the "
        "fault, which stops the lease's renewals, or, when the fault made etcd elect a new raft leader, "
        "which renews every lease itself, from that renewal). For semaphores, instead of the stale-token, "
        "overlap and held-after-newer rules (which assume one holder): more than `limit` holders acting at "
        "once, at the counting resource (over-limit-accepted: a holder acts from its registration to its "
        "last accepted write; the resource refuses a write that would make it more) and by the workers' own "
        "logs (over-limit-sent: from the acquire to the last write sent). "
        "Leftovers are keys under the run's prefix and leases, after a clean shutdown (a killed "
        "worker's lease is given its TTL). Lost-signal latency: from the lock being gone in etcd (its key's "
        "deletion seen by the checker's own watch), or from SIGCONT for a paused holder if later, to the "
        "holder's `lost` signal; negative means the holder knew before etcd deleted the key (its local "
        "deadline runs ahead of the server's).",
        "",
        "The bound the library gives: a lease's local deadline is min(send time of its last answered "
        "renewal, send time of the last linearizable read the same member answered) + TTL - `lease_margin`, "
        "so a renewal answered by a leader already cut off from the others (which etcd does not honour) "
        "extends nothing; `lost` fires and `ensure_held()` raises at that deadline, before etcd may give the "
        "lock to another process (partition-slow-leader-isolated: a cut-off leader with a 3 s election "
        "timeout against 0.5 s on the others). What fencing adds: a holder that passed its check and then "
        "stalled before its write lands is stopped only by the resource refusing tokens lower than the "
        "highest it accepted (here: the fenced resource; in etcd: `held.txn()`).",
        "",
        "| scenario | runs | operations (acquisitions / writes) | writes refused by the fence | violations "
        "| losses | lost-signal latency p50 / p99 ms | liveness after heal, max s | keys / leases left |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, scenario in SCENARIOS.items():
        rs = [r for r in reports if r.scenario == name]
        if not rs:
            continue
        lat = [v for r in rs for v in r.lost_latencies_ms]
        live = [r.liveness_s for r in rs if r.liveness_s is not None]
        lines.append(
            f"| {name}: {scenario.description} | {len(rs)} | {sum(r.acquisitions for r in rs)} / "
            f"{sum(r.writes for r in rs)} | {sum(r.writes_rejected for r in rs)} | "
            f"{sum(len(r.violations) for r in rs)} | {sum(r.losses for r in rs)} | "
            f"{fmt_ms(percentile(lat, 50))} / {fmt_ms(percentile(lat, 99))} | "
            f"{max(live):.2f} | {sum(r.leftover_keys for r in rs)} / {sum(r.leftover_leases for r in rs)} |"
            if live
            else f"| {name} | {len(rs)} | - | - | {sum(len(r.violations) for r in rs)} | - | - | FAILED | - |"
        )
    bad = [r for r in reports if not r.ok]
    lines += ["", f"Runs: {len(reports)} ({runs} per scenario); failed runs: {len(bad)}."]
    for r in bad:
        lines.append(f"- {r.summary()}")
    lines += ["", "Scenario facts (how many runs each held in) and numbers (min .. max over runs):", ""]
    for name in SCENARIOS:
        rs = [r for r in reports if r.scenario == name]
        facts = sorted({c for r in rs for c in r.checks})
        numbers = sorted({k for r in rs for k in r.metrics})
        parts = [f"{fact} ({sum(fact in r.checks for r in rs)}/{len(rs)})" for fact in facts]
        for k in numbers:
            values = [r.metrics[k] for r in rs if k in r.metrics]
            parts.append(f"{k}: {min(values):g} .. {max(values):g}")
        if parts:
            lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="default: all")
    ap.add_argument("--out", default=str(ROOT / "RELIABILITY.md"))
    ap.add_argument("--json", default=str(ROOT / "docs" / "reliability" / "runs.json"))
    ap.add_argument(
        "--render", metavar="RUNS_JSON", help="write --out from a recorded runs.json instead of running"
    )
    ap.add_argument(
        "--merge",
        metavar="RUNS_JSON",
        help="keep the recorded runs of the scenarios not run now (--out and --json get both)",
    )
    args = ap.parse_args()
    cfg = CheckerConfig()
    if args.render:
        recorded = load(Path(args.render))
        Path(args.out).write_text(table(recorded, cfg, per_scenario(recorded)))
        print(f"wrote {args.out}")
        return 0
    campaign = this_campaign(("python scripts/reliability.py " + " ".join(sys.argv[1:])).strip())
    reports: list[RunReport] = []
    started = time.monotonic()
    for name in args.scenario or list(SCENARIOS):
        for run in range(args.runs):
            report = run_scenario(SCENARIOS[name], run=run, cfg=cfg)
            report.campaign = campaign
            print(report.summary(), flush=True)
            reports.append(report)
    print(f"{len(reports)} runs in {time.monotonic() - started:.0f} s", flush=True)
    ran = {r.scenario for r in reports}
    kept = [r for r in load(Path(args.merge)) if r.scenario not in ran] if args.merge else []
    order = list(SCENARIOS)
    everything = sorted(kept + reports, key=lambda r: (order.index(r.scenario), r.run))
    Path(args.out).write_text(table(everything, cfg, per_scenario(everything)))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps([asdict(r) for r in everything], indent=1) + "\n")
    print(f"wrote {args.out} and {args.json}")
    return 0 if all(r.ok for r in reports) else 1


def load(path: Path) -> list[RunReport]:
    return [RunReport(**r) for r in json.loads(path.read_text())]


def per_scenario(reports: list[RunReport]) -> int:
    return max(sum(r.scenario == s for r in reports) for s in {r.scenario for r in reports})


if __name__ == "__main__":
    sys.exit(main())
