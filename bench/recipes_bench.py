"""The recipes of issue 13 through the default API, against their references, in alternating rounds on one
fresh local etcd; writes bench/results/recipes.md and bench/results/recipes.json.

    python bench/recipes_bench.py --rounds 5 --duration 5        # the recorded run
    python bench/recipes_bench.py --rounds 1 --duration 1        # a smoke run
    python bench/recipes_bench.py --only election --also-candidates   # one scenario

Every worker uses the API as a user writes it, with no session argument (the client's default session):

- election hand-over: --candidates (4) processes, each its own Client, loop
  ``async with election.campaign(proposal):`` (``election = client.election(NAME)``) with an empty body, so
  the leader resigns at once and the next candidate takes over. Against Go's concurrency.Election: the
  same loop in `etcdlock-go-interop electbench` (interop/go/main.go, built by tests/go_interop.py), one
  process with a client and a session per worker. And against a floor with no etcdlock code: the same
  RPCs and watch events per hand-over on raw grpc.aio (`ring-member`). Hand-overs/s; campaign wait (call
  -> leading); for the Python ones the hand-over latency proper, from the leader leaving its block
  (resign starts) to the next leader's campaign returning, timed across the processes on CLOCK_MONOTONIC
  (one clock for the machine) and split where the deletion reached the next leader's process.
  --also-candidates (2 and 8) repeats it with other numbers of candidates (no target): Go's rate grows
  with them (its waiters' watches catch up on etcd's 100 ms tick in parallel), a serial hand-over's not.
- one name, 16 contenders, empty body: ``async with client.semaphore(NAME, 1):`` against the mutex,
  ``async with client.lock(NAME):`` (one Client, 16 tasks, like bench/lock_bench.py's onelock).
- limit 4 vs limit 1: 16 tasks on one Client, ``async with client.semaphore(NAME, LIMIT):`` holding
  --hold-ms (5 ms) inside, so up to LIMIT bodies run at once.

Each run is a process of its own (this script with a subcommand) printing one RESULT line; the election's
candidates are processes of their own too. In each round every implementation of a scenario runs once, back
to back, the order reversed every other round; etcd is compacted and defragmented before each run. This
machine's speed drifts by tens of percent within seconds, so a ratio is taken within a round and the median
of the rounds' ratios is reported, with each round's. After each run the keys under bench/ and etcd's
leases are counted (every run must leave none), and each run checks its own exclusion: never two leaders at
once (by the candidates' timestamps, in token order), never more than LIMIT bodies at once. CPU time per
operation is recorded for the workers (process and main thread) and for etcd, to show what limits a rate.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PREFIX = "bench/"  # every key of every run is under it: counted after each run
# A stuck run must not stall the round (as bench/compare_go.py): duration + this, then killed.
RUN_GRACE_S = 60.0
READY_TIMEOUT_S = 60.0  # candidates starting (imports, connect, a warm-up term) on a busy 2-core machine
START_DELAY_S = 0.3  # from "go" to the measured window: every candidate has read its start time

Result = dict[str, Any]


def pct(xs: Sequence[float], p: float) -> float | None:
    """The p-quantile of sorted seconds, in ms (None if empty), as the Go tools compute it."""
    return xs[int((len(xs) - 1) * p)] * 1000 if xs else None


def child_env() -> dict[str, str]:
    # Proxies would divert gRPC on loopback through them (tests/go_interop.py does the same).
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


# ==== the runs (each in a process of its own) ====


async def pool_run(args: argparse.Namespace) -> Result:
    """--workers tasks on one Client cycle on one name: the mutex, or a semaphore of --limit."""
    from etcdlock import Client

    name = f"{PREFIX}{args.name}"
    hold = args.hold_ms / 1000
    async with Client([args.endpoint], timeout=10) as client:

        def handle() -> AbstractAsyncContextManager[object]:
            # What a user writes inline: a new handle per block, the client's default session.
            if args.impl == "mutex":
                return client.lock(name)
            return client.semaphore(name, args.limit)

        limit = 1 if args.impl == "mutex" else args.limit
        lat: list[float] = []
        handoff: list[float] = []  # exclusive only: a body's end -> the next body's start
        inside = max_inside = errors = 0
        busy = 0.0  # seconds of bodies run in the window: / window = mean bodies at once
        last_exit: float | None = None
        measuring = stop = False

        async def worker() -> None:
            nonlocal inside, max_inside, errors, busy, last_exit
            while not stop:
                t0 = time.perf_counter()
                try:
                    async with handle():
                        entered = time.perf_counter()
                        inside += 1
                        max_inside = max(max_inside, inside)
                        if measuring and limit == 1 and last_exit is not None:
                            handoff.append(entered - last_exit)
                        if hold:
                            await asyncio.sleep(hold)
                        inside -= 1
                        last_exit = time.perf_counter()
                        if measuring:
                            busy += last_exit - entered
                except Exception as e:
                    errors += 1
                    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
                    continue
                if measuring:  # every cycle ending in the window (a warm-up cycle count per worker would
                    # leave out more of the window the slower the cycles are)
                    lat.append(time.perf_counter() - t0)

        tasks = [asyncio.create_task(worker()) for _ in range(args.workers)]
        await asyncio.sleep(args.warmup)  # the default sessions start, the name's watcher too
        measuring = True
        t0 = time.perf_counter()
        cpu, main_cpu = time.process_time(), time.thread_time()
        await asyncio.sleep(args.duration)
        measuring = False
        elapsed = time.perf_counter() - t0
        cpu, main_cpu = time.process_time() - cpu, time.thread_time() - main_cpu
        stop = True
        await asyncio.gather(*tasks)
    lat.sort()
    handoff.sort()
    return {
        "ops_s": round(len(lat) / elapsed, 1),
        "cycles": len(lat),
        "secs": round(elapsed, 3),
        "p50_ms": pct(lat, 0.5),
        "p99_ms": pct(lat, 0.99),
        "handoff_p50_ms": pct(handoff, 0.5),
        "handoff_p99_ms": pct(handoff, 0.99),
        "mean_inside": round(busy / elapsed, 3),
        "errors": errors,
        "cpu_ms_per_op": round(cpu * 1000 / max(1, len(lat)), 3),
        "main_cpu_ms_per_op": round(main_cpu * 1000 / max(1, len(lat)), 3),
        "max_inside": max_inside,
        "violations": int(max_inside > limit),
    }


def trace_deletions() -> list[tuple[float, bytes]]:
    """Record when this process's name watchers receive each deletion: (CLOCK_MONOTONIC, key). A wrapper
    on the queue's event hook (internal; one clock read and one append per batch of events), for the
    hand-over's breakdown: leaving the block -> the deletion reaches the next leader's process -> its
    campaign returns."""
    from etcdlock._recipes.queue import NameWatch

    seen: list[tuple[float, bytes]] = []
    dispatch = NameWatch._on_events

    def on_events(self: NameWatch, events: list[Any]) -> None:
        now = time.monotonic()
        seen.extend((now, e.kv.key) for e in events)
        dispatch(self, events)

    NameWatch._on_events = on_events  # type: ignore[method-assign]
    return seen


async def candidate_run(args: argparse.Namespace) -> Result:
    """One election candidate: warm up, say READY, read the window (monotonic start and end) on stdin, then
    campaign -> resign until the end. Prints every term's times; the parent pairs them up."""
    from etcdlock import Client

    proposal = f"bench-{os.getpid()}"
    terms: list[list[Any]] = []  # [called, leading, leaving, resigned, token, key]
    errors = 0
    cpu = 0.0
    seen = trace_deletions()
    async with Client([args.endpoint], timeout=10) as client:
        election = client.election(f"{PREFIX}{args.name}")
        async with election.campaign(proposal):  # warm-up term: default session, the name's watcher
            pass
        print("READY", flush=True)
        line = await asyncio.to_thread(sys.stdin.readline)  # the loop keeps the session alive meanwhile
        start, end = map(float, line.split())
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        cpu, main_cpu = time.process_time(), time.thread_time()
        while time.monotonic() < end:
            called = time.monotonic()
            try:
                async with election.campaign(proposal) as term:
                    leading = time.monotonic()
                    token, key = term.token, term.key
                    leaving = time.monotonic()  # the body ends: resigning starts
                resigned = time.monotonic()
            except Exception as e:
                errors += 1
                print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            terms.append([called, leading, leaving, resigned, token, key])
        cpu, main_cpu = time.process_time() - cpu, time.thread_time() - main_cpu
    deletions = [(t, k.decode()) for t, k in seen if start <= t]
    return {"terms": terms, "errors": errors, "cpu_s": cpu, "main_cpu_s": main_cpu, "deletions": deletions}


async def ring_member_run(args: argparse.Namespace) -> Result:
    """The floor of a hand-over, with no etcdlock code: raw grpc.aio, the same RPCs and events per
    hand-over as the election (the leader deletes its key, then puts it back at the end of the queue; every
    member's watch on the prefix, deletions only, receives the deletion). Member i leads when member i-1's
    key is deleted (the queue order is the ring order: each re-put goes to the back); member 0 starts.
    After the window, each member passes its turn on once without putting its key back, and exits."""
    import grpc.aio

    from etcdlock._wire import methods
    from etcdlock._wire import rpc_pb2 as pb

    prefix = f"{PREFIX}{args.name}/".encode()
    mine = prefix + b"%04d" % args.index
    before = prefix + b"%04d" % ((args.index - 1) % args.size)
    campaign = pb.TxnRequest(  # the shape of the election's campaign Txn: put if absent, read the queue
        compare=[pb.Compare(key=mine, target=pb.Compare.CREATE, create_revision=0)],
        success=[
            pb.RequestOp(request_put=pb.PutRequest(key=mine, value=b"raw")),
            pb.RequestOp(
                request_range=pb.RangeRequest(
                    key=prefix,
                    range_end=prefix[:-1] + b"0",
                    limit=17,
                    sort_order=pb.RangeRequest.DESCEND,
                    sort_target=pb.RangeRequest.CREATE,
                    keys_only=True,
                )
            ),
        ],
        failure=[pb.RequestOp(request_range=pb.RangeRequest(key=mine, keys_only=True))],
    )
    resign = pb.TxnRequest(success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=mine))])
    terms: list[list[Any]] = []
    deletions: list[tuple[float, str]] = []
    async with grpc.aio.insecure_channel(args.endpoint) as channel:
        txn = channel.unary_unary(
            methods.TXN.path,
            request_serializer=methods.TXN.serializer(),
            response_deserializer=methods.TXN.deserializer(),
        )
        watch = channel.stream_stream(
            methods.WATCH.path,
            request_serializer=methods.WATCH.serializer(),
            response_deserializer=methods.WATCH.deserializer(),
        )()
        create = pb.WatchCreateRequest(
            key=prefix, range_end=prefix[:-1] + b"0", filters=[pb.WatchCreateRequest.NOPUT]
        )
        await watch.write(pb.WatchRequest(create_request=create))
        await watch.read()  # created: live from now
        await txn(campaign, timeout=10)
        print("READY", flush=True)
        line = await asyncio.to_thread(sys.stdin.readline)
        start, end = map(float, line.split())
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        cpu, main_cpu = time.process_time(), time.thread_time()
        turn = 0  # the revision of the deletion that gave me the turn (0: member 0's first)
        while True:
            if turn or (args.index == 0 and not terms):
                leading = time.monotonic()
                leaving = time.monotonic()
                await txn(resign, timeout=10)
                resigned = time.monotonic()
                terms.append([leading, leading, leaving, resigned, turn, mine.decode()])
                if leading >= end:
                    break  # passed on once after the window: the next member goes on, I am done
                await txn(campaign, timeout=10)
            turn = 0
            while not turn:
                reply = await asyncio.wait_for(watch.read(), READY_TIMEOUT_S)
                assert isinstance(reply, pb.WatchResponse)  # not EOF: the stream ends only when cancelled
                now = time.monotonic()
                for event in reply.events:
                    deletions.append((now, event.kv.key.decode()))
                    if event.kv.key == before:
                        turn = event.kv.mod_revision
        cpu, main_cpu = time.process_time() - cpu, time.thread_time() - main_cpu
        watch.cancel()
    deletions = [d for d in deletions if d[0] >= start]
    return {"terms": terms, "errors": 0, "cpu_s": cpu, "main_cpu_s": main_cpu, "deletions": deletions}


def election_run(args: argparse.Namespace) -> Result:
    """--candidates candidate processes on one election (or, with --raw, members of the raw ring); their
    terms merged in token order."""
    from etcdlock._procutil import die_with_parent_preexec

    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--endpoint", args.endpoint, "--name", args.name]

    def command(i: int) -> list[str]:
        if args.raw:
            return [*me, "ring-member", *common, "--index", str(i), "--size", str(args.candidates)]
        return [*me, "candidate", *common]

    procs = [
        subprocess.Popen(
            command(i),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=ROOT,
            preexec_fn=die_with_parent_preexec(),  # a killed run takes its candidates with it
        )
        for i in range(args.candidates)
    ]
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()  # READY (or "" if it died; it then prints no RESULT either)
            if line.strip() != "READY" or time.monotonic() > deadline:
                raise RuntimeError(f"candidate {p.pid} did not get ready: {line.strip()!r}")
        start = time.monotonic() + START_DELAY_S
        end = start + args.duration
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"{start} {end}\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=args.duration + RUN_GRACE_S)[0] for p in procs]
    finally:
        for p in procs:  # only on a failure are any still running
            if p.poll() is None:
                p.kill()
                p.wait()
    merged = merge_terms([parse_result(out) for out in outs], start, end)
    if args.raw:
        merged["p50_ms"] = merged["p99_ms"] = None  # a ring member does not campaign: no wait to time
    return merged


def merge_terms(results: list[Result], start: float, end: float) -> Result:
    """Hand-overs are consecutive terms in token order (the leader is the lowest create revision, so
    leadership passes in token order). A term that begins before its predecessor's body ended would be two
    leaders at once: counted as a violation. Each hand-over is split at the moment the resigned key's
    deletion reached the next leader's process (its name watcher's event)."""
    terms = sorted(((t, i) for i, r in enumerate(results) for t in r["terms"]), key=lambda ti: ti[0][4])
    handover: list[float] = []
    wait: list[float] = []
    resign: list[float] = []  # leaving -> the resign's Txn answered (the leader's side)
    delivered: list[float] = []  # leaving -> the deletion reaches the next leader's process
    woken: list[float] = []  # the deletion received -> the next leader's campaign returns
    violations = 0
    for (prev, _), (nxt, n) in itertools.pairwise(terms):
        if nxt[1] < prev[2]:
            violations += 1
        if not start <= nxt[1] < end:
            continue
        handover.append(nxt[1] - prev[2])
        wait.append(nxt[1] - nxt[0])
        resign.append(prev[3] - prev[2])
        got = next((t for t, k in results[n]["deletions"] if k == prev[5] and t >= prev[2]), None)
        if got is not None and got <= nxt[1]:
            delivered.append(got - prev[2])
            woken.append(nxt[1] - got)
    elapsed = end - start
    out: Result = {
        "ops_s": round(len(handover) / elapsed, 1),
        "handovers": len(handover),
        "secs": round(elapsed, 3),
        "errors": sum(int(r["errors"]) for r in results),
        "violations": violations,
        "cpu_ms_per_op": round(sum(r["cpu_s"] for r in results) * 1000 / max(1, len(handover)), 3),
        "main_cpu_ms_per_op": round(sum(r["main_cpu_s"] for r in results) * 1000 / max(1, len(handover)), 3),
    }
    for field, xs in [
        ("", wait),
        ("handover_", handover),
        ("resign_", resign),
        ("delivered_", delivered),
        ("woken_", woken),
    ]:
        xs.sort()
        out[f"{field}p50_ms"] = pct(xs, 0.5)
        out[f"{field}p99_ms"] = pct(xs, 0.99)
    out["handover_mean_ms"] = statistics.fmean(handover) * 1000 if handover else None
    return out


# ==== the driver ====


@dataclasses.dataclass(frozen=True)
class Impl:
    key: str
    title: str
    command: Callable[[str, float], list[str]]  # (endpoint, duration) -> argv
    go: bool = False  # the Go tool prints bare JSON with its own field names


@dataclasses.dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    reference: str  # the impl every ratio of this scenario is taken against
    impls: tuple[Impl, ...]
    latency: str  # what p50/p99 measure


@dataclasses.dataclass(frozen=True)
class Target:
    scenario: str
    impl: str
    versus: str
    at_least: float
    why: str


def py(*args: str) -> Callable[[str, float], list[str]]:
    me = [sys.executable, str(Path(__file__).resolve())]
    return lambda endpoint, duration: [*me, *args, "--endpoint", endpoint, "--duration", str(duration)]


def pool(impl: str, name: str, limit: int, workers: int, hold_ms: float) -> Callable[[str, float], list[str]]:
    flags = ["--impl", impl, "--name", name, "--limit", str(limit), "--workers", str(workers)]
    return py("pool", *flags, "--hold-ms", str(hold_ms))


def election_scenario(key: str, candidates: int, go_bin: str) -> Scenario:
    def go_election(endpoint: str, duration: float) -> list[str]:
        flags = ["--name", f"{PREFIX}{key}-go", "--workers", str(candidates)]
        return [go_bin, "electbench", "--endpoints", endpoint, *flags, "--duration-s", str(duration)]

    elect = py("election", "--name", f"{key}-py", "--candidates", str(candidates))
    ring = py("election", "--raw", "--name", f"{key}-raw", "--candidates", str(candidates))
    return Scenario(
        key,
        f"election hand-over, {candidates} candidates (a process and a client each), empty term",
        "go-election",
        (
            Impl("go-election", "Go concurrency.Election (electbench)", go_election, go=True),
            Impl("py-election", "etcdlock `election.campaign()`", elect),
            Impl("py-raw-ring", "floor: raw grpc.aio, the same RPCs and events, no etcdlock", ring),
        ),
        "campaign wait: call -> leading",
    )


def scenarios(args: argparse.Namespace, go_bin: str) -> list[Scenario]:
    w, hold, limit = args.workers, args.hold_ms, args.limit
    sem = "etcdlock `client.semaphore(name, 1)`"
    return [
        election_scenario("election", args.candidates, go_bin),
        Scenario(
            "onename",
            f"one name, {w} contenders, empty body",
            "py-mutex",
            (
                Impl("py-mutex", "etcdlock `client.lock(name)`", pool("mutex", "one-mutex", 1, w, 0)),
                Impl("py-sem1", sem, pool("semaphore", "one-sem", 1, w, 0)),
            ),
            "cycle: enter -> left the block",
        ),
        Scenario(
            "limit",
            f"semaphore, {w} workers holding {hold:g} ms",
            "py-sem1-hold",
            (
                Impl("py-sem1-hold", "limit 1", pool("semaphore", "hold-sem1", 1, w, hold)),
                Impl(f"py-sem{limit}-hold", f"limit {limit}", pool("semaphore", "hold-semN", limit, w, hold)),
            ),
            "cycle: enter -> left the block",
        ),
        # Not targets: how the comparison moves with the number of candidates.
        *(election_scenario(f"election-{n}", n, go_bin) for n in args.also_candidates),
    ]


def targets(args: argparse.Namespace) -> list[Target]:
    return [
        Target(
            "election",
            "py-election",
            "go-election",
            5.0,
            "hand-over on the live watch, not etcd's 100 ms sync tick",
        ),
        Target("onename", "py-sem1", "py-mutex", 0.9, "a semaphore of limit 1 hands off like the mutex"),
        Target(
            "limit",
            f"py-sem{args.limit}-hold",
            "py-sem1-hold",
            3.0,
            f"limit {args.limit} lets {args.limit} bodies overlap",
        ),
    ]


def parse_result(out: str) -> Result:
    for line in out.splitlines():
        if line.startswith("RESULT "):
            parsed: Result = json.loads(line.removeprefix("RESULT "))
            return parsed
    raise RuntimeError("no RESULT line")


def parse_go(out: str) -> Result:
    """electbench's one JSON line, in this script's field names."""
    for line in out.splitlines():
        if line.startswith("{"):
            go = json.loads(line)
            return {
                "ops_s": go["ops_per_s"],
                "handovers": go["handovers"],
                "secs": go["seconds"],
                "p50_ms": go["p50_ms"],
                "p99_ms": go["p99_ms"],
                "errors": go["errors"],
            }
    raise RuntimeError("no JSON line")


def etcdctl(endpoint: str, *args: str) -> str:
    env = {**child_env(), "ETCDCTL_API": "3"}
    cmd = ["etcdctl", f"--endpoints={endpoint}", "--command-timeout=300s", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env).stdout


def compact(endpoint: str) -> None:
    """Compact all history and defragment (as bench/compare_go.py): every run starts on a small database."""
    status = json.loads(etcdctl(endpoint, "endpoint", "status", "-w", "json") or "[]")
    if status:
        etcdctl(endpoint, "compact", str(status[0]["Status"]["header"]["revision"]), "--physical")
    etcdctl(endpoint, "defrag")


def left_behind(endpoint: str) -> tuple[int, int]:
    """Keys under bench/ and leases on the server."""
    keys = [k for k in etcdctl(endpoint, "get", PREFIX, "--prefix", "--keys-only").splitlines() if k]
    # `lease list` prints "found N leases" and then one id a line.
    leases = [x for x in etcdctl(endpoint, "lease", "list").splitlines()[1:] if x.strip()]
    return len(keys), len(leases)


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(impl: Impl, endpoint: str, duration: float, etcd_pid: int) -> tuple[Result | None, str]:
    """The run's result (with keys and leases left after it, and etcd's CPU time over the whole run per
    operation measured), or None and why it failed."""
    etcd_cpu = cpu_seconds(etcd_pid)
    try:
        done = subprocess.run(
            impl.command(endpoint, duration),
            capture_output=True,
            text=True,
            timeout=duration + 2 * RUN_GRACE_S,
            env=child_env(),
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return None, f"killed after {duration + 2 * RUN_GRACE_S:g} s"
    try:
        result = parse_go(done.stdout) if impl.go else parse_result(done.stdout)
    except (RuntimeError, ValueError, KeyError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"exit {done.returncode}: {tail[:200]}"
    etcd_cpu = cpu_seconds(etcd_pid) - etcd_cpu
    result["etcd_cpu_ms_per_op"] = round(etcd_cpu * 1000 / max(1.0, result["ops_s"] * result["secs"]), 3)
    result["keys_left"], result["leases_left"] = left_behind(endpoint)
    return result, ""


Table = dict[str, dict[str, list[Result | None]]]  # scenario -> impl -> result per round


def run_rounds(
    scens: list[Scenario], endpoint: str, etcd_pid: int, rounds: int, duration: float, notes: list[str]
) -> Table:
    table: Table = {}
    for s in scens:
        table[s.key] = {i.key: [] for i in s.impls}
        for r in range(rounds):
            order = s.impls if r % 2 == 0 else s.impls[::-1]
            shown = []
            for impl in order:
                compact(endpoint)
                result, why = run_once(impl, endpoint, duration, etcd_pid)
                table[s.key][impl.key].append(result)
                if result is None:
                    notes.append(f"failed run: {s.key}, round {r + 1}, {impl.key}: {why}")
                    shown.append(f"{impl.key} FAILED ({why})")
                else:
                    shown.append(
                        f"{impl.key} {result['ops_s']}/s errors={result['errors']} "
                        f"keys_left={result['keys_left']} leases_left={result['leases_left']}"
                    )
            print(f"{s.key}, round {r + 1}: " + "  ".join(shown), flush=True)
    return table


# ==== the report ====


def ratios(runs: dict[str, list[Result | None]], impl: str, versus: str) -> list[float]:
    out = []
    for mine, theirs in zip(runs.get(impl, []), runs.get(versus, []), strict=False):
        if mine is not None and theirs is not None and theirs["ops_s"]:
            out.append(float(mine["ops_s"]) / float(theirs["ops_s"]))
    return out


def ratio_cell(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    if all(x == 1.0 for x in xs):
        return "1 (reference)"
    return f"{statistics.median(xs):.2f}x ({', '.join(f'{x:.2f}' for x in xs)})"


def median_of(results: list[Result], field: str) -> float | None:
    values = [float(r[field]) for r in results if r.get(field) is not None]
    return statistics.median(values) if values else None


def fmt(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def each(results: list[Result | None], field: str) -> str:
    return ", ".join("-" if r is None else str(r.get(field, "-")) for r in results)


def scenario_lines(s: Scenario, runs: dict[str, list[Result | None]]) -> list[str]:
    lines = [
        f"### {s.title}",
        "",
        f"p50 / p99: {s.latency}, medians of the rounds.",
        "",
        f"| implementation | ops/s | p50 / p99 ms | vs `{s.reference}`: median of rounds (each round) | "
        "errors (each run) | keys left (each run) | leases left (each run) | failed runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for impl in s.impls:
        per_round = runs[impl.key]
        ok = [r for r in per_round if r is not None]
        lines.append(
            f"| {impl.title} (`{impl.key}`) | {fmt(median_of(ok, 'ops_s'))} | "
            f"{fmt(median_of(ok, 'p50_ms'), '.2f')} / {fmt(median_of(ok, 'p99_ms'), '.2f')} | "
            f"{ratio_cell(ratios(runs, impl.key, s.reference))} | {each(per_round, 'errors')} | "
            f"{each(per_round, 'keys_left')} | {each(per_round, 'leases_left')} | "
            f"{sum(r is None for r in per_round)} |"
        )
    return [*lines, "", *details(s, runs), ""]


def ms(ok: list[Result], field: str) -> str:
    return fmt(median_of(ok, field), ".2f")


def details(s: Scenario, runs: dict[str, list[Result | None]]) -> list[str]:
    """Where the time goes (medians of the rounds), and each run's exclusion check."""
    if s.key.startswith("election"):
        lines = [
            "| implementation | ms per hand-over (1000 / rate) | hand-over p50 / p99 ms | = resign's Txn answered "
            "p50 | ~ deletion reaches the next leader p50 | + deletion received -> leading p50 | CPU ms per "
            "hand-over: candidates (their main threads) / etcd | two leaders at once (each run) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for impl in s.impls:
            ok = [r for r in runs[impl.key] if r is not None]
            rate = median_of(ok, "ops_s")
            lines.append(
                f"| `{impl.key}` | {fmt(1000 / rate if rate else None, '.2f')} | "
                f"{ms(ok, 'handover_p50_ms')} / {ms(ok, 'handover_p99_ms')} | {ms(ok, 'resign_p50_ms')} | "
                f"{ms(ok, 'delivered_p50_ms')} | {ms(ok, 'woken_p50_ms')} | "
                f"{ms(ok, 'cpu_ms_per_op')} ({ms(ok, 'main_cpu_ms_per_op')}) / {ms(ok, 'etcd_cpu_ms_per_op')} | "
                f"{each(runs[impl.key], 'violations') if not impl.go else '-'} |"
            )
        return [
            *lines,
            "",
            "Hand-over: from the leader leaving its block (its resign starts) to the next leader's campaign",
            "returning, on the candidates' common monotonic clock; split where the resigned key's deletion",
            "reached the next leader's process (its name watcher's event). Go's tool times the campaign only.",
            "CPU: the candidates' processes over the measured window (in brackets their main threads: Python,",
            "etcdlock, asyncio; the rest is gRPC's C-core threads); etcd's over the whole run (start-up",
            "included); each per hand-over measured.",
            "",
            f"etcdlock's hand-over rate over the raw floor's: {ratio_cell(ratios(runs, 'py-election', 'py-raw-ring'))}",
        ]
    lines = [
        "| implementation | hand-off p50 / p99 ms (body ends -> next begins; exclusive only) | CPU ms per cycle: "
        "the process (its main thread) / etcd | bodies at once: mean / most (each run) | over the limit (each run) |",
        "|---|---|---|---|---|",
    ]
    for impl in s.impls:
        ok = [r for r in runs[impl.key] if r is not None]
        lines.append(
            f"| `{impl.key}` | {ms(ok, 'handoff_p50_ms')} / {ms(ok, 'handoff_p99_ms')} | "
            f"{ms(ok, 'cpu_ms_per_op')} ({ms(ok, 'main_cpu_ms_per_op')}) / {ms(ok, 'etcd_cpu_ms_per_op')} | "
            f"{ms(ok, 'mean_inside')} / {each(runs[impl.key], 'max_inside')} | "
            f"{each(runs[impl.key], 'violations')} |"
        )
    return lines


def targets_lines(args: argparse.Namespace, table: Table) -> tuple[list[str], bool]:
    lines = ["| scenario | ratio | median of rounds (each round) | target | why |", "|---|---|---|---|---|"]
    all_met = True
    for t in targets(args):
        xs = ratios(table.get(t.scenario, {}), t.impl, t.versus)
        met = bool(xs) and statistics.median(xs) >= t.at_least
        all_met &= met
        verdict = "not measured" if not xs else "met" if met else "NOT met"
        lines.append(
            f"| {t.scenario} | `{t.impl}` / `{t.versus}` | {ratio_cell(xs)} | >= {t.at_least:g}x ({verdict}) | "
            f"{t.why} |"
        )
    return lines, all_met


def clean(table: Table) -> bool:
    """Every run finished without errors or exclusion violations and left no key or lease."""
    return all(
        r is not None
        and not r["errors"]
        and not r.get("violations")
        and not r["keys_left"]
        and not r["leases_left"]
        for runs in table.values()
        for per_round in runs.values()
        for r in per_round
    )


def report(
    args: argparse.Namespace, scens: list[Scenario], table: Table, version: str, notes: list[str]
) -> str:
    command = f"python bench/recipes_bench.py --rounds {args.rounds} --duration {args.duration:g}"
    target_rows, _ = targets_lines(args, table)
    lines = [
        "# etcdlock's recipes (election, semaphore) through the default API — vs Go's Election and the mutex",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- etcd: {version} (Debian), one member on loopback, started fresh for the run",
        f"- etcdlock: {source_tree()}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}",
        f"- method: {args.rounds} rounds x {args.duration:g} s per implementation and scenario; in each round the",
        "  implementations of a scenario run once each, back to back (order reversed every other round), etcd",
        "  compacted and defragmented before each run. A ratio is the median of the rounds' ratios of ops/s",
        "  (both runs of a round saw the same machine state); ops/s and latencies are medians of the rounds.",
        "  Keys under bench/ and etcd's leases are counted after every run.",
        f"- election: {args.candidates} candidate processes, each its own `Client` (its default session), loop",
        "  `async with election.campaign(proposal) as term:` (`election = client.election(name)` once) with an",
        "  empty body (resign at once); Go: `etcdlock-go-interop electbench --workers N` (interop/go/main.go,",
        "  etcd 3.4's clientv3/concurrency), one process, a client and a session per worker, Campaign -> Resign;",
        "  the floor `py-raw-ring`: N processes on bare grpc.aio doing the same RPCs and receiving the same",
        "  events per hand-over, no etcdlock code. The 2- and 8-candidate sweeps have no target.",
        f"- mutex and semaphores: one `Client`, {args.workers} tasks, `async with client.lock(name):` /",
        "  `async with client.semaphore(name, limit):` per cycle (default session, TTL 10 s).",
        f"- command: `{command}`",
        f"- every run clean (no errors, no exclusion violation, 0 keys and 0 leases left): "
        f"{'yes' if clean(table) else 'NO'}",
        "",
        "## The issue's targets",
        "",
        *target_rows,
        "",
        "## Every implementation",
        "",
    ]
    for s in scens:
        lines += scenario_lines(s, table[s.key])
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


def source_tree() -> str:
    """The commit measured (and whether the tree had changes on top of it)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src", "bench", "interop")
    return f"commit {git('rev-parse', '--short', 'HEAD')}" + (" with local changes" if dirty else "")


def go_binary(path: str | None) -> str:
    if path:
        return path
    sys.path.insert(0, str(ROOT))
    from tests.go_interop import go_interop_binary  # builds it offline (scripts/build_go_interop.sh)

    return go_interop_binary()


def drive(args: argparse.Namespace) -> int:
    from etcdlock.testing import EtcdCluster

    notes: list[str] = []
    scens = scenarios(args, go_binary(args.go_bin))
    if args.only:
        scens = [s for s in scens if s.key in args.only]
    version = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    with EtcdCluster(1) as cluster:
        pid = cluster.members[0].pid
        assert pid is not None
        table = run_rounds(scens, cluster.endpoints[0], pid, args.rounds, args.duration, notes)
    text = report(args, scens, table, version, notes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    raw = {
        "etcd": version,
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": table,
        "notes": notes,
    }
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    print(text)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")

    def run_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--endpoint", required=True)
        q.add_argument("--name", required=True, help="under bench/")

    q = sub.add_parser("pool", help="one run: tasks on one Client cycling on one mutex or semaphore")
    run_args(q)
    q.add_argument("--duration", type=float, required=True)
    q.add_argument("--impl", choices=["mutex", "semaphore"], required=True)
    q.add_argument("--limit", type=int, default=1)
    q.add_argument("--workers", type=int, default=16)
    q.add_argument("--hold-ms", type=float, default=0.0)
    q.add_argument("--warmup", type=float, default=1.0, help="seconds run before the window")
    q = sub.add_parser("election", help="one run: candidate processes on one election")
    run_args(q)
    q.add_argument("--duration", type=float, required=True)
    q.add_argument("--candidates", type=int, default=4)
    q.add_argument("--raw", action="store_true", help="the raw gRPC ring (the floor), not etcdlock")
    q = sub.add_parser("candidate", help="one candidate process (started by `election`)")
    run_args(q)
    q = sub.add_parser("ring-member", help="one raw ring member (started by `election --raw`)")
    run_args(q)
    q.add_argument("--index", type=int, required=True)
    q.add_argument("--size", type=int, required=True)

    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--candidates", type=int, default=4, help="election candidates (processes)")
    p.add_argument(
        "--also-candidates",
        type=int,
        nargs="*",
        default=[2, 8],
        help="election hand-over with these numbers of candidates too (no target)",
    )
    p.add_argument("--workers", type=int, default=16, help="mutex/semaphore tasks")
    p.add_argument("--limit", type=int, default=4, help="the larger semaphore limit")
    p.add_argument("--hold-ms", type=float, default=5.0, help="time held inside, limit scenario")
    p.add_argument("--only", nargs="*", help="these scenarios only (election, onename, limit, election-N)")
    p.add_argument("--go-bin", help="etcdlock-go-interop (default: built by tests/go_interop.py)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "recipes.md")
    args = p.parse_args()
    if args.cmd == "pool":
        result = asyncio.run(pool_run(args))
    elif args.cmd == "candidate":
        result = asyncio.run(candidate_run(args))
    elif args.cmd == "ring-member":
        result = asyncio.run(ring_member_run(args))
    elif args.cmd == "election":
        result = election_run(args)
    else:
        return drive(args)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
