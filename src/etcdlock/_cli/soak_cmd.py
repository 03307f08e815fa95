"""`etcdlock soak`: replay the workload that leaked (K names, a tick a second, try-lock with a deadline,
hold, unlock) and show that nothing grows: live view, verdict, JSON report, PNG chart. The live view (rich)
and the chart (matplotlib) are the [soak] extra; without them the soak prints plain lines and no chart."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etcdlock._cli.common import (
    EXIT_ERROR,
    Connection,
    add_connection_options,
    connection_from,
    endpoints_or_local,
    report_error,
)
from etcdlock._core.connection import parse_endpoint
from etcdlock._core.errors import ConfigError, EtcdError
from etcdlock._diagnostics.soak import MB, Sample, Soak, SoakConfig, Verdict, chart

_LOCAL_ETCD = ("--auto-compaction-mode=periodic", "--auto-compaction-retention=1m")
EXIT_LEAK = 1

DESCRIPTION = """\
Run a lock workload against etcd and show that the client's memory and
resources stay flat.

K lock names; every tick each name tries to lock with a deadline, holds the
lock and unlocks (--no-tick: back to back, as fast as etcd allows). Every
--sample-every seconds it records RSS, the traced Python heap, tasks,
threads, file descriptors, the client's watch streams, watchers and
kept-alive leases, and etcd's own watch and lease counts. It shows them live,
then judges the run after a warm-up: the RSS growth fitted over the cycles
must stay under --max-growth-mb, and no count may end above its steady
state. It writes report.json and chart.png to --out. Its keys are under
etcdlock-soak/.

The live view needs rich, the chart matplotlib: pip install 'etcdlock[soak]'.
Without them it prints plain lines and no chart."""

EPILOG = f"""exit status:
  0  flat: nothing grew after the warm-up
  {EXIT_LEAK}  leak: something grew (the report lists the allocation sites that grew)
  {EXIT_ERROR}  error: etcd unreachable, auth failed, bad input"""
_INSTALL_EXTRA = "pip install 'etcdlock[soak]'"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "soak",
        help="run a lock workload and show that memory and resources stay flat",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--keys", metavar="N", type=int, default=10, help="lock names (default 10)")
    p.add_argument(
        "--hold", metavar="SECONDS", type=float, default=1.0, help="seconds each lock is held (default 1)"
    )
    tick = p.add_mutually_exclusive_group()
    tick.add_argument("--rate", metavar="N", type=float, default=1.0, help="ticks per second (default 1)")
    tick.add_argument("--no-tick", action="store_true", help="no tick: cycles back to back (accelerated)")
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=1.0,
        help="try-lock deadline in seconds (default 1)",
    )
    stop = p.add_mutually_exclusive_group()
    stop.add_argument(
        "--duration", metavar="SECONDS", type=float, default=None, help="seconds to run (default 60)"
    )
    stop.add_argument("--cycles", metavar="N", type=int, default=None, help="lock cycles to run")
    p.add_argument(
        "--concurrency", metavar="N", type=int, default=1, help="workers per name with --no-tick (default 1)"
    )
    p.add_argument(
        "--ttl", metavar="SECONDS", type=int, default=10, help="lease TTL of each lock (default 10)"
    )
    p.add_argument(
        "--sample-every",
        metavar="SECONDS",
        type=float,
        default=1.0,
        help="seconds between samples (default 1)",
    )
    p.add_argument(
        "--max-growth-mb",
        metavar="MB",
        type=float,
        default=2.0,
        help="RSS growth allowed after warm-up (default 2)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        default=Path("soak-out"),
        help="directory for report.json and chart.png (default soak-out)",
    )
    p.add_argument("--no-trace", action="store_true", help="do not run tracemalloc (less overhead)")
    p.add_argument("--no-live", action="store_true", help="plain progress lines instead of the live view")
    p.add_argument(
        "--debug-addr",
        default=None,
        metavar="HOST:PORT",
        help="also serve the debug endpoint (/metrics, /debug/memory, ...) on HOST:PORT",
    )
    add_connection_options(p, local_etcd=True)
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
        conn = connection_from(args, local_etcd=True)
    except ConfigError as e:
        return report_error(e, None)
    try:
        # A long soak writes millions of revisions; like any production etcd, the throwaway one compacts.
        with endpoints_or_local(conn, etcd_args=_LOCAL_ETCD) as endpoints:
            return asyncio.run(_soak(args, config, conn, endpoints))
    except (EtcdError, ConfigError) as e:
        return report_error(e, conn)


def _metrics_url(endpoint: str, conn: Connection) -> str | None:
    """Where etcd's Prometheus metrics are, for its own watch and lease counts; None over TLS, whose
    metrics the soak does not read (those counts then show as -1)."""
    host_port, https = parse_endpoint(endpoint)
    return None if https or conn.tls is not None else f"http://{host_port}/metrics"


async def _soak(args: argparse.Namespace, config: SoakConfig, conn: Connection, endpoints: list[str]) -> int:
    async with conn.client(endpoints) as client:
        if args.debug_addr:
            host, _, port = args.debug_addr.rpartition(":")
            server = await client.serve_debug(int(port), host or "127.0.0.1")
            print(
                f"debug endpoint: {server.url}/metrics /debug/memory /debug/gc /debug/tasks /debug/resources"
            )
        status = await client.status()
        soak = Soak(client, config, _metrics_url(endpoints[0], conn))
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
    chart_file = _write_chart(soak.samples, args.out / "chart.png", title)
    _print_verdict(soak, verdict, args.out, chart_file)
    return EXIT_LEAK if verdict.leak else 0


def _write_chart(samples: list[Sample], path: Path, title: str) -> Path | None:
    """Draw the chart to path; None (and a note) when matplotlib is missing. A chart from an earlier run
    never stays beside this run's report."""
    path.unlink(missing_ok=True)
    try:
        chart(samples, str(path), title)
    except ImportError as e:
        print(f"etcdlock: no chart: cannot import matplotlib ({e}); {_INSTALL_EXTRA}", file=sys.stderr)
        return None
    return path


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

    if not plain and (verdict := await _run_live(soak, rate)) is not None:
        return verdict

    def show(s: Sample) -> None:
        print("  ".join(f"{k} {v}" for k, v in _row(s, rate(s)).items()), flush=True)

    return await soak.run(show)


async def _run_live(soak: Soak, rate: Callable[[Sample], float]) -> Verdict | None:
    """The soak with a live table; None, having run nothing, when rich cannot be imported."""
    try:
        from rich.live import Live
        from rich.table import Table
    except ImportError as e:
        print(f"etcdlock: no live view: cannot import rich ({e}); {_INSTALL_EXTRA}", file=sys.stderr)
        return None

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


def _print_verdict(soak: Soak, verdict: Verdict, out: Path, chart_file: Path | None) -> None:
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
    shown = chart_file if chart_file is not None else f"none (matplotlib missing: {_INSTALL_EXTRA})"
    print(f"report: {out / 'report.json'}   chart: {shown}")
