"""`etcdlock soak`: replay the workload that leaked (K names, a tick a second, try-lock with a deadline,
hold, unlock) and show that nothing grows: live view, verdict, JSON report, PNG chart.

Exit status 0 when flat, 1 when it leaks (the report lists the allocation sites that grew), 5 on error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from etcdlock._cli.common import add_endpoint_options, endpoints_or_local
from etcdlock._client import Client
from etcdlock._core.errors import ConfigError, EtcdError
from etcdlock._diagnostics.soak import MB, Sample, Soak, SoakConfig, Verdict, chart

_LOCAL_ETCD = ("--auto-compaction-mode=periodic", "--auto-compaction-retention=1m")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "soak",
        help="replay the leaking workload and show memory and resources stay flat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_endpoint_options(p)
    p.add_argument("--keys", type=int, default=10, help="lock names (default 10)")
    p.add_argument("--hold", type=float, default=1.0, help="seconds each lock is held (default 1)")
    tick = p.add_mutually_exclusive_group()
    tick.add_argument("--rate", type=float, default=1.0, help="ticks per second (default 1)")
    tick.add_argument("--no-tick", action="store_true", help="no tick: cycles back to back (accelerated)")
    p.add_argument("--timeout", type=float, default=1.0, help="try-lock deadline in seconds (default 1)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=float, default=None, help="seconds to run (default 60)")
    stop.add_argument("--cycles", type=int, default=None, help="lock cycles to run")
    p.add_argument("--concurrency", type=int, default=1, help="workers per name with --no-tick (default 1)")
    p.add_argument("--ttl", type=int, default=10, help="lease TTL of each lock (default 10)")
    p.add_argument("--sample-every", type=float, default=1.0, help="seconds between samples (default 1)")
    p.add_argument("--max-growth-mb", type=float, default=2.0, help="RSS growth allowed after warm-up (MB)")
    p.add_argument(
        "--out", type=Path, default=Path("soak-out"), help="directory for report.json and chart.png"
    )
    p.add_argument("--no-trace", action="store_true", help="do not run tracemalloc (less overhead)")
    p.add_argument("--no-live", action="store_true", help="plain progress lines instead of the live view")
    p.add_argument("--debug-addr", default=None, help="also serve the debug endpoint on HOST:PORT")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    duration = args.duration if args.duration is not None else (None if args.cycles else 60.0)
    config = SoakConfig(
        keys=args.keys,
        hold=args.hold,
        rate=None if args.no_tick else args.rate,
        lock_timeout=args.timeout,
        duration=duration,
        cycles=args.cycles,
        concurrency=args.concurrency,
        ttl=args.ttl,
        sample_every=args.sample_every,
        max_growth_mb=args.max_growth_mb,
        trace=not args.no_trace,
    )
    try:
        # A long soak writes millions of revisions; like any production etcd, the throwaway one compacts.
        with endpoints_or_local(args, etcd_args=_LOCAL_ETCD) as endpoints:
            return asyncio.run(_soak(args, config, endpoints))
    except (EtcdError, ConfigError) as e:
        print(f"etcdlock: {e}", file=sys.stderr)
        return 5


async def _soak(args: argparse.Namespace, config: SoakConfig, endpoints: list[str]) -> int:
    async with Client(endpoints, username=args.user, password=args.password) as client:
        if args.debug_addr:
            host, _, port = args.debug_addr.rpartition(":")
            server = await client.serve_debug(int(port), host or "127.0.0.1")
            print(
                f"debug endpoint: {server.url}/metrics /debug/memory /debug/gc /debug/tasks /debug/resources"
            )
        status = await client.status()
        soak = Soak(client, config, f"http://{endpoints[0]}/metrics")
        verdict = await _run_with_view(soak, args.no_live or not sys.stdout.isatty())
        environment = {
            "etcd": status.version,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": str(os.cpu_count()),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(soak.report(verdict, environment), indent=1) + "\n")
    mode = "no tick" if config.rate is None else f"{config.rate:g} tick/s"
    title = (
        f"etcdlock soak: {config.keys} names, hold {config.hold:g}s, {mode}; "
        f"{soak.cycles} cycles — {'LEAK' if verdict.leak else 'flat'}"
    )
    chart(soak.samples, str(args.out / "chart.png"), title)
    _print_verdict(soak, verdict, args.out)
    return 1 if verdict.leak else 0


def _row(s: Sample, rate: float) -> dict[str, str]:
    return {
        "elapsed": f"{s.t:.0f}s",
        "cycles": f"{s.cycles}",
        "locks/s": f"{rate:.0f}",
        "timeouts": f"{s.timeouts}",
        "RSS": f"{s.rss / MB:.1f} MB",
        "heap": f"{s.heap / MB:.1f} MB",
        "tasks": f"{s.tasks}",
        "threads": f"{s.threads}",
        "fds": f"{s.fds}",
        "streams/watchers/leases": f"{s.watch_streams}/{s.watchers}/{s.keepalive_leases}",
        "etcd streams/watchers/leases": f"{s.server_watch_streams:g}/{s.server_watchers:g}/{s.server_leases}",
    }


async def _run_with_view(soak: Soak, plain: bool) -> Verdict:
    last: list[Sample] = []

    def rate(s: Sample) -> float:
        prev = last[-1] if last else None
        r = (s.cycles - prev.cycles) / max(1e-9, s.t - prev.t) if prev else 0.0
        last.append(s)
        return r

    if plain:

        def show(s: Sample) -> None:
            print("  ".join(f"{k} {v}" for k, v in _row(s, rate(s)).items()), flush=True)

        return await soak.run(show)

    from rich.live import Live
    from rich.table import Table

    def table(s: Sample | None) -> Table:
        t = Table(title="etcdlock soak", show_header=True)
        row = _row(s, rate(s)) if s else {}
        for k in row or ["waiting for the first sample"]:
            t.add_column(k)
        if row:
            t.add_row(*row.values())
        return t

    with Live(table(None), refresh_per_second=4) as live:
        return await soak.run(lambda s: live.update(table(s)))


_BARS = " ▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 60) -> str:
    """A text chart for the terminal; the scale starts at 0 so that flat looks flat."""
    if not values:
        return ""
    step = max(1, len(values) // width)
    points = [max(values[i : i + step]) for i in range(0, len(values), step)]
    top = max(points) or 1.0
    return "".join(_BARS[min(8, round(8 * v / top))] for v in points)


def _print_verdict(soak: Soak, verdict: Verdict, out: Path) -> None:
    print(f"\n{soak.cycles} cycles ({soak.acquired} acquired, {soak.timeouts} timed out)")
    running = soak.samples[:-1] or soak.samples  # the last sample is taken after the workload stopped
    for label, values in (
        ("RSS", [s.rss / MB for s in running]),
        ("tasks", [s.tasks for s in running]),
        ("fds", [s.fds for s in running]),
        ("etcd watchers", [s.server_watchers for s in running]),
    ):
        print(
            f"  {label:<14} {sparkline([float(v) for v in values])}  {min(values):.1f} .. {max(values):.1f}"
        )
    print(
        f"RSS after warm-up: fitted growth {verdict.rss_growth_fitted_bytes / MB:+.2f} MB over "
        f"{verdict.measured_cycles} cycles "
        f"({verdict.rss_slope_per_10k_cycles_bytes / 1024:+.1f} KB per 10k cycles)"
    )
    for name, r in verdict.resources.items():
        print(f"  {name:<22} steady max {r['steady_max']:g}   final {r['final_median']:g}")
    if verdict.leak:
        print("VERDICT: LEAK")
        for reason in verdict.reasons:
            print(f"  - {reason}")
        print("allocation sites that grew after warm-up:")
        for where, size, count in verdict.top_growth_sites:
            print(f"  {size:>+10} B {count:>+7} blocks  {where}")
    else:
        print("VERDICT: flat — no growth after warm-up")
    print(f"report: {out / 'report.json'}   chart: {out / 'chart.png'}")
