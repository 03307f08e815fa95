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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--out", type=Path, default=HERE / "results" / "lock-vs-go.md")
    args = p.parse_args()
    go = ensure_go()
    rows = []
    go_raw: list[float] = []
    py_raw: list[float] = []
    with EtcdCluster(1) as cluster:
        endpoint = cluster.endpoints[0]
        version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        for name, go_args, py_args, target in SCENARIOS:
            go_runs, py_runs = [], []
            for _ in range(args.rounds):
                g = subprocess.run(
                    [
                        str(go),
                        "-endpoint",
                        endpoint,
                        "-mode",
                        "mutex",
                        *go_args,
                        "-d",
                        f"{args.duration}s",
                        "-label",
                        "go",
                    ],
                    capture_output=True,
                    text=True,
                )
                go_runs.append(result_line(g.stdout))
                py = subprocess.run(
                    [
                        sys.executable,
                        str(HERE / "lock_bench.py"),
                        "--endpoint",
                        endpoint,
                        *py_args,
                        "-d",
                        str(args.duration),
                        "--label",
                        "py",
                    ],
                    capture_output=True,
                    text=True,
                )
                py_runs.append(result_line(py.stdout))
                print(f"{name}: go {go_runs[-1]['ops_s']}/s  py {py_runs[-1]['ops_s']}/s", flush=True)
                if name == "sequential":
                    # The transport floor, in the same round: the same two RPCs with no lock logic at all.
                    g = subprocess.run(
                        [
                            str(go),
                            "-endpoint",
                            endpoint,
                            "-mode",
                            "rawtxn",
                            "-c",
                            "1",
                            "-d",
                            f"{args.duration}s",
                            "-label",
                            "go-raw",
                        ],
                        capture_output=True,
                        text=True,
                    )
                    go_raw.append(float(result_line(g.stdout)["ops_s"]))
                    raw = subprocess.run(
                        [
                            sys.executable,
                            str(HERE / "raw_grpc.py"),
                            "--endpoint",
                            endpoint,
                            "-d",
                            str(args.duration),
                        ],
                        capture_output=True,
                        text=True,
                    )
                    py_raw.append(float(result_line(raw.stdout)["ops_s"]))
                    print(f"transport floor: go {go_raw[-1]:.0f}/s  py-raw {py_raw[-1]:.0f}/s", flush=True)
            go_ops = statistics.median(float(r["ops_s"]) for r in go_runs)
            py_ops = statistics.median(float(r["ops_s"]) for r in py_runs)

            def m(runs: list[dict[str, str]], k: str) -> float:
                return statistics.median(float(r[k]) for r in runs)

            rows.append(
                (
                    name,
                    go_ops,
                    py_ops,
                    py_ops / go_ops,
                    target,
                    m(go_runs, "p50_ms"),
                    m(go_runs, "p99_ms"),
                    m(py_runs, "p50_ms"),
                    m(py_runs, "p99_ms"),
                    sum(int(r.get("errors", "0")) for r in py_runs),
                    sum(int(r.get("leftover_keys", "0")) for r in py_runs),
                )
            )
    lines = [
        "# etcdlock vs Go `concurrency.Mutex` — lock+unlock cycles",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- etcd: {version} (Debian), one member on loopback, started fresh for the run",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}",
        f"- method: {args.rounds} rounds x {args.duration:g} s per scenario, Go then Python back to back; medians.",
        "  Each worker has its own long-lived session (lease), as in the Go harness. Go: one connection per worker.",
        "  Python: one Client (one channel, one keepalive stream, one watch stream) shared by all workers.",
        f"- command: `python bench/compare_go.py --rounds {args.rounds} --duration {args.duration:g}`",
        "",
        "| scenario | Go ops/s | etcdlock ops/s | ratio | target | Go p50 / p99 ms | etcdlock p50 / p99 ms | py errors | py keys left |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, go_med, py_ops, ratio, target, gp50, gp99, pp50, pp99, errs, left in rows:
        mark = "met" if ratio >= target else "NOT met"
        lines.append(
            f"| {name} | {go_med:.0f} | {py_ops:.0f} | {ratio:.2f}x | >= {target:g}x ({mark}) | "
            f"{gp50:.2f} / {gp99:.2f} | {pp50:.2f} / {pp99:.2f} | {errs} | {left} |"
        )
    floor = (statistics.median(go_raw), statistics.median(py_raw))
    lines += [
        "",
        "Transport floor (measured in the same rounds as `sequential`): the two RPCs of an uncontended cycle",
        "with no lock logic at all —",
        f"Go clientv3 `-mode rawtxn` {floor[0]:.0f} cycles/s, raw grpc.aio (`bench/raw_grpc.py`) {floor[1]:.0f} "
        f"cycles/s: ratio {floor[1] / floor[0]:.2f}x. The sequential target cannot be above this ratio while the",
        "transport is grpcio (which the project requires); etcdlock's own sequential cost is the rest.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
