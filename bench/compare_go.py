"""etcdlock against Go's `concurrency.Mutex` (../shared/anchors/go-mutex-bench), the Python peer libraries
(../shared/anchors/python-peers) and the raw gRPC transport floors, all on one fresh local etcd, in the
same alternating rounds; writes the table and the issue's targets to bench/results/lock-vs-go.md.

    python bench/compare_go.py --rounds 5 --duration 5            # everything
    python bench/compare_go.py --rounds 1 --duration 1 --no-peers # a smoke run

Every implementation runs as its own process printing one RESULT line (`k=v` fields, or a peer's JSON).
Scenarios: sequential (1 worker), 16 contenders on one lock, 16 workers on distinct locks. For each
scenario, each round runs every implementation once, back to back, in an order reversed every other round;
etcd is compacted and defragmented before each run (not timed). This machine's speed drifts by tens of
percent within minutes: a ratio is taken within a round (both runs saw the same machine state) and the
median of the rounds' ratios is reported, with every round's ratio. Runs are killed at duration + 40 s;
a failed run is left out of its round and named in the output.

Requires the Go binary (built offline by the anchor's build.sh, on first use). The peers' venvs are made by
the anchor's make_venvs.sh in --peer-venvs if missing; a peer whose venv cannot be made is skipped with a
note.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from etcdlock.testing import EtcdCluster

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ANCHORS = ROOT.parent / "shared" / "anchors"
GO_ANCHOR = ANCHORS / "go-mutex-bench"
PEERS_ANCHOR = ANCHORS / "python-peers"
GO_BIN = Path(os.environ.get("ETCDLOCK_GO_BENCH", "/tmp/etcd-go-bench"))
PEER_VENVS = Path(os.environ.get("ETCDLOCK_PEER_VENVS", "/root/peer-venvs"))
# A stuck run must not stall the round (the peers' README: duration + 40 s).
RUN_GRACE_S = 40.0
MAKE_VENVS_TIMEOUT_S = 900.0
# Compare a target against the best peer of each round.
BEST_PEER = "best-peer"
PEER_PREFIX = "peer-"  # the peers' implementation keys


@dataclasses.dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    workers: int
    distinct: bool  # each worker its own lock name (else all contend on one)


SCENARIOS = [
    Scenario("seq", "sequential", 1, False),
    Scenario("onelock", "16 contenders, one lock", 16, False),
    Scenario("distinct", "16 workers, distinct locks", 16, True),
]

# How one implementation runs a scenario: the command, or None where it has no such scenario.
CommandFor = Callable[[Scenario], list[str] | None]


@dataclasses.dataclass(frozen=True)
class Impl:
    key: str
    title: str
    kind: str  # "go", "etcdlock", "floor" (transport, no lock logic) or "peer"
    command: CommandFor
    env: dict[str, str] | None = None  # None: this process's environment


@dataclasses.dataclass(frozen=True)
class Target:
    scenario: str
    impl: str
    versus: str  # an Impl key, or BEST_PEER
    at_least: float
    why: str


TARGETS = [
    Target("seq", "py-default", "py-session", 0.95, "the default API costs nothing over explicit sessions"),
    Target("seq", "py-default", BEST_PEER, 1.3, "the default API beats the best Python peer"),
    Target("seq", "py-session", "py-raw-aio", 0.9, "lock logic on top of the grpc.aio floor is cheap"),
    Target("distinct", "py-default", "go-mutex", 0.9, "default API vs Go with a session per worker"),
    Target("onelock", "py-default", "go-mutex", 5.0, "hand-off without etcd's 100 ms watch-sync tick"),
    Target("onelock", "py-session", "go-mutex", 5.0, "the same with explicit sessions"),
]

# A run's RESULT fields (numbers as given; peers print JSON, the others k=v).
Result = dict[str, object]


@dataclasses.dataclass
class Runs:
    """One implementation's runs of one scenario: a result per round, None where the run failed."""

    per_round: list[Result | None] = dataclasses.field(default_factory=list)

    def ok(self) -> list[Result]:
        return [r for r in self.per_round if r is not None]

    def median(self, field: str) -> float | None:
        values = [float(str(r[field])) for r in self.ok() if field in r]
        return statistics.median(values) if values else None

    def total(self, field: str) -> int:
        return sum(int(str(r.get(field, 0))) for r in self.ok())


def ops(result: Result | None) -> float | None:
    return None if result is None else float(str(result["ops_s"]))


# ---- running one implementation ----


def parse_result(out: str) -> Result:
    for line in out.splitlines():
        if line.startswith("RESULT "):
            body = line.removeprefix("RESULT ").strip()
            if body.startswith("{"):
                parsed: Result = json.loads(body)
                return parsed
            return dict(re.findall(r"(\w+)=(\S*)", body))
    raise RuntimeError("no RESULT line")


def result_line(out: str) -> dict[str, str]:
    """The k=v RESULT line of lock_bench/raw_grpc/the Go tool (kept for bench/ab_compare.py)."""
    return {k: str(v) for k, v in parse_result(out).items()}


def run_once(impl: Impl, scenario: Scenario, duration: float) -> tuple[Result | None, str]:
    """The run's result, or None and why it failed."""
    cmd = impl.command(scenario)
    assert cmd is not None
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration + RUN_GRACE_S, env=impl.env, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return None, f"killed after {duration + RUN_GRACE_S:g} s"
    try:
        return parse_result(done.stdout), ""
    except (RuntimeError, ValueError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"exit {done.returncode}: {tail[:200]}"


def etcdctl(endpoint: str, *args: str) -> str:
    env = {**os.environ, "ETCDCTL_API": "3"}
    cmd = ["etcdctl", f"--endpoints={endpoint}", "--command-timeout=300s", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env).stdout


def compact(endpoint: str) -> None:
    """What the peers' compact.sh does (compact all history, defragment), without its 1 s sleep: every
    run starts on a small database whatever the runs before it wrote."""
    status = json.loads(etcdctl(endpoint, "endpoint", "status", "-w", "json") or "[]")
    if status:
        revision = status[0]["Status"]["header"]["revision"]
        etcdctl(endpoint, "compact", str(revision), "--physical")  # fails harmlessly if nothing is new
    etcdctl(endpoint, "defrag")


# ---- the implementations ----


def ensure_go() -> Path:
    if not GO_BIN.exists():
        subprocess.run(["bash", str(GO_ANCHOR / "build.sh"), str(GO_BIN)], check=True)
    return GO_BIN


def go_impls(endpoint: str, duration: float) -> list[Impl]:
    go = [str(ensure_go()), "-endpoint", endpoint, "-d", f"{duration}s"]

    def mode(name: str, *, uncontended_only: bool = False) -> CommandFor:
        def command(s: Scenario) -> list[str] | None:
            if uncontended_only and not (s.distinct or s.workers == 1):
                return None
            spread = ["-distinct"] if s.distinct else []
            return [*go, "-mode", name, "-c", str(s.workers), *spread]

        return command

    return [
        Impl("go-mutex", "Go Mutex, a session per worker", "go", mode("mutex")),
        Impl("go-mutexsess", "Go Mutex, a new session per cycle", "go", mode("mutexsess")),
        # rawtxn gives each worker its own key: the floor of uncontended scenarios only.
        Impl("go-raw", "Go clientv3, the cycle's 2 RPCs", "floor", mode("rawtxn", uncontended_only=True)),
    ]


def etcdlock_impls(endpoint: str, duration: float) -> list[Impl]:
    py = [sys.executable]
    common = ["--endpoint", endpoint, "-d", str(duration)]

    def lock_bench(api: str) -> CommandFor:
        def command(s: Scenario) -> list[str]:
            spread = ["--distinct"] if s.distinct else []
            return [*py, str(HERE / "lock_bench.py"), *common, "--api", api, "-c", str(s.workers), *spread]

        return command

    def raw(sync: bool) -> CommandFor:
        def command(s: Scenario) -> list[str] | None:
            # Each raw worker has its own key; blocking grpcio runs one worker only.
            if not (s.distinct or s.workers == 1) or (sync and s.workers != 1):
                return None
            api = ["--api", "sync"] if sync else []
            return [*py, str(HERE / "raw_grpc.py"), *common, "-c", str(s.workers), *api]

        return command

    return [
        Impl("py-default", "etcdlock, default API (no session argument)", "etcdlock", lock_bench("default")),
        Impl("py-session", "etcdlock, an explicit session per worker", "etcdlock", lock_bench("session")),
        Impl("py-raw-aio", "grpc.aio, the cycle's 2 RPCs", "floor", raw(sync=False)),
        Impl("py-raw-sync", "blocking grpcio, the cycle's 2 RPCs", "floor", raw(sync=True)),
    ]


@dataclasses.dataclass(frozen=True)
class Peer:
    key: str
    title: str
    module: str  # imported to check the venv
    harness: str
    extra: tuple[str, ...] = ()


PEERS = [
    Peer("etcd3", "python-etcd3 0.12 (threads)", "etcd3", "bench_etcd3.py"),
    Peer("aetcd", "aetcd 1.0", "aetcd", "bench_aetcd.py"),
    Peer("etcetra", "etcetra 0.1.19, with_lock", "etcetra", "bench_etcetra.py", ("--api", "withlock")),
    Peer(
        "etcdrs", "etcd-client-py 0.5.1, with_lock", "etcd_client", "bench_etcdrs.py", ("--api", "withlock")
    ),
    Peer("etcd3aio", "etcd3aio 0.3", "etcd3aio", "bench_etcd3aio.py"),
]


def peer_python(venvs: Path, peer: Peer) -> Path:
    return venvs / f"venv-{peer.key}" / "bin" / "python"


def peer_usable(venvs: Path, peer: Peer) -> bool:
    python = peer_python(venvs, peer)
    if not python.exists():
        return False
    check = subprocess.run([str(python), "-W", "ignore", "-c", f"import {peer.module}"], capture_output=True)
    return check.returncode == 0


def usable_peers(venvs: Path, notes: list[str]) -> list[Peer]:
    """The peers whose venv works, making the venvs first (the anchor's make_venvs.sh) if one is missing."""
    if not all(peer_usable(venvs, p) for p in PEERS):
        print(f"making the peers' venvs in {venvs} (make_venvs.sh)...", flush=True)
        try:
            made = subprocess.run(
                ["bash", str(PEERS_ANCHOR / "make_venvs.sh"), str(venvs)],
                capture_output=True,
                text=True,
                timeout=MAKE_VENVS_TIMEOUT_S,
            )
            notes += [
                f"make_venvs.sh: {line}" for line in made.stdout.splitlines() if line.startswith("FAIL")
            ]
        except subprocess.TimeoutExpired:
            notes.append(f"make_venvs.sh did not finish within {MAKE_VENVS_TIMEOUT_S:g} s")
    usable = []
    for peer in PEERS:
        if peer_usable(venvs, peer):
            usable.append(peer)
        else:
            notes.append(f"peer {peer.key} skipped: its venv in {venvs} cannot import `{peer.module}`")
    return usable


def peer_impls(endpoint: str, duration: float, venvs: Path, peers: Sequence[Peer]) -> list[Impl]:
    # The peers' venvs have their own packages: our PYTHONPATH (etcdlock's src) is no business of theirs.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def harness(peer: Peer) -> CommandFor:
        def command(s: Scenario) -> list[str]:
            scenario = "seq" if s.workers == 1 else ("distinct" if s.distinct else "onelock")
            python = [str(peer_python(venvs, peer)), "-W", "ignore", str(PEERS_ANCHOR / peer.harness)]
            flags = ["--scenario", scenario, "--workers", str(s.workers), "--duration", str(duration)]
            return [*python, "bench", *peer.extra, "--endpoint", endpoint, *flags]

        return command

    return [Impl(PEER_PREFIX + p.key, p.title, "peer", harness(p), env) for p in peers]


# ---- the rounds ----

Table = dict[str, dict[str, Runs]]  # scenario key -> impl key -> runs


def run_rounds(impls: list[Impl], endpoint: str, rounds: int, duration: float, notes: list[str]) -> Table:
    table: Table = {}
    for scenario in SCENARIOS:
        present = [i for i in impls if i.command(scenario) is not None]
        table[scenario.key] = {i.key: Runs() for i in present}
        for r in range(rounds):
            order = present if r % 2 == 0 else present[::-1]
            shown = []
            for impl in order:
                compact(endpoint)
                result, why = run_once(impl, scenario, duration)
                table[scenario.key][impl.key].per_round.append(result)
                if result is None:
                    notes.append(f"failed run: {scenario.title}, round {r + 1}, {impl.key}: {why}")
                shown.append(f"{impl.key} {ops(result) if result else 'FAILED'}")
            print(f"{scenario.title}, round {r + 1}: " + "  ".join(shown), flush=True)
    return table


def best_peer_round(runs: dict[str, Runs], r: int) -> tuple[str, float] | None:
    candidates = [(k, ops(v.per_round[r])) for k, v in runs.items() if k.startswith(PEER_PREFIX)]
    present = [(k, x) for k, x in candidates if x is not None]
    return max(present, key=lambda kx: kx[1]) if present else None


def round_ratios(runs: dict[str, Runs], impl: str, versus: str, rounds: int) -> list[tuple[float, str]]:
    """Per round where both ran: impl's ops/s over versus's (and, for the best peer, which one it was)."""
    out = []
    for r in range(rounds):
        mine = ops(runs[impl].per_round[r]) if impl in runs else None
        if versus == BEST_PEER:
            best = best_peer_round(runs, r)
            theirs, who = (best[1], best[0].removeprefix(PEER_PREFIX)) if best else (None, "")
        else:
            theirs, who = (ops(runs[versus].per_round[r]) if versus in runs else None), ""
        if mine is not None and theirs:
            out.append((mine / theirs, who))
    return out


def ratio_cell(ratios: list[tuple[float, str]]) -> str:
    if ratios and all(x == 1.0 for x, _ in ratios):
        return "1 (reference)"
    if not ratios:
        return "n/a"
    each = ", ".join(f"{x:.2f}" + (f" {who}" if who else "") for x, who in ratios)
    return f"{statistics.median(x for x, _ in ratios):.2f}x ({each})"


# ---- the report ----


def fmt(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def scenario_table(scenario: Scenario, impls: list[Impl], runs: dict[str, Runs], rounds: int) -> list[str]:
    lines = [
        f"### {scenario.title}",
        "",
        "| implementation | ops/s | p50 / p99 ms | vs Go Mutex: median of rounds (each round) | errors | keys left | failed runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for impl in impls:
        if impl.key not in runs:
            continue
        r = runs[impl.key]
        vs_go = ratio_cell(round_ratios(runs, impl.key, "go-mutex", rounds))
        failed = sum(1 for x in r.per_round if x is None)
        lines.append(
            f"| {impl.title} (`{impl.key}`) | {fmt(r.median('ops_s'))} | "
            f"{fmt(r.median('p50_ms'), '.2f')} / {fmt(r.median('p99_ms'), '.2f')} | {vs_go} | "
            f"{r.total('errors')} | {r.total('leftover_keys') if impl.kind == 'etcdlock' else '-'} | {failed} |"
        )
    return [*lines, ""]


def targets_table(table: Table, rounds: int) -> list[str]:
    titles = {s.key: s.title for s in SCENARIOS}
    lines = [
        "| scenario | ratio | median of rounds (each round) | target | why |",
        "|---|---|---|---|---|",
    ]
    for t in TARGETS:
        ratios = round_ratios(table.get(t.scenario, {}), t.impl, t.versus, rounds)
        if not ratios:
            verdict = "not measured"
        else:
            verdict = "met" if statistics.median(x for x, _ in ratios) >= t.at_least else "NOT met"
        lines.append(
            f"| {titles[t.scenario]} | `{t.impl}` / `{t.versus}` | {ratio_cell(ratios)} | "
            f">= {t.at_least:g}x ({verdict}) | {t.why} |"
        )
    return lines


def report(args: argparse.Namespace, impls: list[Impl], table: Table, version: str, notes: list[str]) -> str:
    command = f"python bench/compare_go.py --rounds {args.rounds} --duration {args.duration:g}"
    if args.no_peers:
        command += " --no-peers"
    lines = [
        "# etcdlock vs Go `concurrency.Mutex` and the Python peers — lock+unlock cycles",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- etcd: {version} (Debian), one member on loopback, started fresh for the run",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}",
        f"- method: {args.rounds} rounds x {args.duration:g} s per implementation and scenario; in each round every",
        "  implementation runs once, back to back (order reversed every other round), etcd compacted and",
        "  defragmented before each run. A ratio is the median of the rounds' ratios (the runs of one round see",
        "  the same machine state); ops/s and latencies are medians.",
        "- etcdlock: one Client (one channel, one keepalive stream, one watch stream) shared by all workers;",
        "  `py-default` is `async with client.lock(name, ttl=10):` with no session, `py-session` gives each worker",
        "  its own long-lived session. Go: one connection per worker. Peers: each library's documented lock",
        "  call (../shared/anchors/python-peers), each in its own venv.",
        f"- command: `{command}`",
        "",
        "## The issue's targets",
        "",
        *targets_table(table, args.rounds),
        "",
        "## Every implementation",
        "",
    ]
    for scenario in SCENARIOS:
        lines += scenario_table(scenario, impls, table.get(scenario.key, {}), args.rounds)
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--no-peers", action="store_true", help="skip the Python peer libraries")
    p.add_argument("--peer-venvs", type=Path, default=PEER_VENVS, help="make_venvs.sh's directory")
    p.add_argument("--out", type=Path, default=HERE / "results" / "lock-vs-go.md")
    args = p.parse_args()
    notes: list[str] = []
    peers = [] if args.no_peers else usable_peers(args.peer_venvs, notes)
    version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    with EtcdCluster(1) as cluster:
        endpoint = cluster.endpoints[0]
        impls = [
            *go_impls(endpoint, args.duration),
            *etcdlock_impls(endpoint, args.duration),
            *peer_impls(endpoint, args.duration, args.peer_venvs, peers),
        ]
        table = run_rounds(impls, endpoint, args.rounds, args.duration, notes)
    text = report(args, impls, table, version, notes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
