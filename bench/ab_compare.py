"""Same-run A/B of two etcdlock source trees: does a change make the lock cycle slower or faster?

    git worktree add /tmp/etcdlock-base HEAD~3
    python bench/ab_compare.py --base /tmp/etcdlock-base/src --rounds 5 --duration 4 [--api session]

Runs bench/lock_bench.py from this checkout under each tree's `src` (PYTHONPATH), on one fresh local etcd,
alternating base and head round by round (which goes first alternates too), for the lock-vs-Go scenarios.
This machine's speed drifts by tens of percent within minutes, so only the median of the rounds' own
ratios (head / base) is reported, with every round's ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from compare_go import result_line

from etcdlock.testing import EtcdCluster

HERE = Path(__file__).resolve().parent
SCENARIOS = [
    ("sequential", ["-c", "1"]),
    ("16 contenders, one lock", ["-c", "16"]),
    ("16 workers, distinct locks", ["-c", "16", "--distinct"]),
]


def run_tree(src: Path, endpoint: str, args: list[str], duration: float, api: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    bench = [sys.executable, str(HERE / "lock_bench.py")]
    cmd = [*bench, "--endpoint", endpoint, "-d", str(duration), "--api", api, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return float(result_line(out)["ops_s"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base", type=Path, required=True, help="the base tree's src directory")
    p.add_argument("--head", type=Path, default=HERE.parent / "src", help="the head tree's src directory")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--api", choices=["default", "session"], default="default", help="lock_bench.py's --api")
    p.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    a = p.parse_args()
    lines = [
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}",
        f"- base: {a.base}; head: {a.head}; {a.rounds} rounds x {a.duration:g} s, alternating; --api {a.api}",
        "",
        "| scenario | base ops/s | head ops/s | head / base: median of rounds (each round) |",
        "|---|---|---|---|",
    ]
    with EtcdCluster(1) as cluster:
        endpoint = cluster.endpoints[0]
        for name, args in SCENARIOS:
            base_runs: list[float] = []
            head_runs: list[float] = []
            for r in range(a.rounds):
                order = [(a.base, base_runs), (a.head, head_runs)]
                for src, runs in order if r % 2 == 0 else reversed(order):
                    runs.append(run_tree(src, endpoint, args, a.duration, a.api))
            ratios = [h / b for h, b in zip(head_runs, base_runs, strict=True)]
            each = ", ".join(f"{x:.2f}" for x in ratios)
            lines.append(
                f"| {name} | {statistics.median(base_runs):.0f} | {statistics.median(head_runs):.0f} | "
                f"{statistics.median(ratios):.2f}x ({each}) |"
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if a.out is not None:
        a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
