"""Run the Go reference (`concurrency.Mutex`, ../shared/anchors/go-mutex-bench) and etcdlock on the same fresh
local etcd, alternating scenario by scenario, and record the ratios.

    python bench/compare_go.py --rounds 3 --duration 5 --out bench/results/lock-vs-go.md

Scenarios (the issue's acceptance targets): sequential (1 worker), 16 contenders on one lock, 16 workers on
distinct locks. Each round runs Go then Python back to back, so both see the same machine state; medians
across rounds are reported. Requires the Go binary (built offline by the anchor's build.sh).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from etcdlock.testing import EtcdCluster

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ANCHOR = ROOT.parent / "shared" / "anchors" / "go-mutex-bench"
GO_BIN = Path(os.environ.get("ETCDLOCK_GO_BENCH", "/tmp/etcd-go-bench"))

SCENARIOS = [
    ("sequential", ["-c", "1"], ["-c", "1"], 0.95),
    ("16 contenders, one lock", ["-c", "16"], ["-c", "16"], 5.0),
    ("16 workers, distinct locks", ["-c", "16", "-distinct"], ["-c", "16", "--distinct"], 0.9),
]
# The transport floor of a scenario: the same two RPCs per cycle with no lock logic, in Go (clientv3) and
# in Python (raw grpcio), run in the same rounds. Only scenarios without contention have one.
FLOORS = {
    "sequential": (["-c", "1"], [["-c", "1"], ["-c", "1", "--api", "sync"]]),
    "16 workers, distinct locks": (["-c", "16"], [["-c", "16"]]),
}


def parse(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


def result_line(out: str) -> dict[str, str]:
    for line in out.splitlines():
        if line.startswith("RESULT"):
            return parse(line)
    raise RuntimeError(f"no RESULT line in:\n{out}")


def ensure_go() -> Path:
    if not GO_BIN.exists():
        subprocess.run(["bash", str(ANCHOR / "build.sh"), str(GO_BIN)], check=True)
    return GO_BIN


def measure(cmd: list[str]) -> dict[str, str]:
    return result_line(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def med(runs: list[dict[str, str]], k: str = "ops_s") -> float:
    return statistics.median(float(r[k]) for r in runs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--out", type=Path, default=HERE / "results" / "lock-vs-go.md")
    args = p.parse_args()
    go = ensure_go()
    rows = []
    floors = []
    with EtcdCluster(1) as cluster:
        endpoint = cluster.endpoints[0]
        version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        go_cmd = [str(go), "-endpoint", endpoint, "-d", f"{args.duration}s", "-label", "go"]
        py_cmd, raw_cmd = (
            [sys.executable, str(HERE / script), "--endpoint", endpoint, "-d", str(args.duration)]
            for script in ("lock_bench.py", "raw_grpc.py")
        )
        for name, go_args, py_args, target in SCENARIOS:
            go_runs: list[dict[str, str]] = []
            py_runs: list[dict[str, str]] = []
            floor = FLOORS.get(name)
            go_raw: list[dict[str, str]] = []
            py_raw: list[list[dict[str, str]]] = [[] for _ in (floor[1] if floor else [])]
            for _ in range(args.rounds):
                go_runs.append(measure([*go_cmd, "-mode", "mutex", *go_args]))
                py_runs.append(measure([*py_cmd, *py_args]))
                print(f"{name}: go {go_runs[-1]['ops_s']}/s  py {py_runs[-1]['ops_s']}/s", flush=True)
                if floor:
                    go_raw.append(measure([*go_cmd, "-mode", "rawtxn", *floor[0]]))
                    for runs, raw_args in zip(py_raw, floor[1], strict=True):
                        runs.append(measure([*raw_cmd, *raw_args]))
                    shown = "  ".join(f"{r[-1]['label']} {r[-1]['ops_s']}/s" for r in py_raw)
                    print(f"  transport floor: go-raw {go_raw[-1]['ops_s']}/s  {shown}", flush=True)
            go_ops, py_ops = med(go_runs), med(py_runs)
            # Each round runs Go and Python back to back on the same etcd: their ratio is what is compared.
            # etcd's write latency on a virtual disk drifts by tens of percent within minutes; it moves
            # both sides of one round alike, not the medians of separate runs.
            each = [float(r["ops_s"]) / float(g["ops_s"]) for r, g in zip(py_runs, go_runs, strict=True)]
            rows.append(
                (
                    name,
                    go_ops,
                    py_ops,
                    statistics.median(each),
                    target,
                    med(go_runs, "p50_ms"),
                    med(go_runs, "p99_ms"),
                    med(py_runs, "p50_ms"),
                    med(py_runs, "p99_ms"),
                    sum(int(r.get("errors", "0")) for r in py_runs),
                    sum(int(r.get("leftover_keys", "0")) for r in py_runs),
                    each,
                )
            )
            if floor:
                for runs in py_raw:
                    floors.append((name, runs[0]["label"], go_ops, med(go_raw), med(runs), py_ops))
    lines = [
        "# etcdlock vs Go `concurrency.Mutex` — lock+unlock cycles",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- etcd: {version} (Debian), one member on loopback, started fresh for the run",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}",
        f"- method: {args.rounds} rounds x {args.duration:g} s per scenario, Go then Python back to back; the ratio",
        "  is the median of the rounds' ratios (a round's two runs see the same etcd), ops/s and latencies are medians.",
        "  Each worker has its own long-lived session (lease), as in the Go harness. Go: one connection per worker.",
        "  Python: one Client (one channel, one keepalive stream, one watch stream) shared by all workers.",
        f"- command: `python bench/compare_go.py --rounds {args.rounds} --duration {args.duration:g}`",
        "",
        "| scenario | Go ops/s | etcdlock ops/s | ratio: median of rounds (each round) | target | Go p50 / p99 ms | etcdlock p50 / p99 ms | py errors | py keys left |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, go_med, py_ops, ratio, target, gp50, gp99, pp50, pp99, errs, left, each in rows:
        mark = "met" if ratio >= target else "NOT met"
        per_round = ", ".join(f"{x:.2f}" for x in each)
        lines.append(
            f"| {name} | {go_med:.0f} | {py_ops:.0f} | {ratio:.2f}x ({per_round}) | >= {target:g}x ({mark}) | "
            f"{gp50:.2f} / {gp99:.2f} | {pp50:.2f} / {pp99:.2f} | {errs} | {left} |"
        )
    lines += [
        "",
        "Transport floor, measured in the same rounds: the two RPCs of an uncontended cycle with no lock logic",
        "(Go clientv3 `-mode rawtxn`; Python `bench/raw_grpc.py`: raw grpc.aio on one channel, and blocking",
        "grpcio, which holds the thread for each call and so is not open to an asyncio library).",
        "",
        "| scenario | Python transport | Go mutex ops/s | Go raw ops/s | Python raw ops/s | raw Python / Go mutex | etcdlock / raw Python |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label, go_mutex, go_raw_ops, py_raw_ops, lock_ops in floors:
        lines.append(
            f"| {name} | {label} | {go_mutex:.0f} | {go_raw_ops:.0f} | {py_raw_ops:.0f} | "
            f"{py_raw_ops / go_mutex:.2f}x | {lock_ops / py_raw_ops:.2f}x |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
