"""The soak: replay the workload that leaked in production and show whether anything grows.

The seed workload: K lock names; every tick (1 s) each name does a try-lock with a ~1 s deadline, holds it
for `hold` seconds, unlocks. Accelerated runs drop the tick (`rate=None`): `concurrency` workers per name
lock, hold and unlock back to back. A sampler records, every `sample_every` seconds: cycles, timeouts, RSS,
the traced Python heap, tasks, threads, fds, the client's streams/watchers/keepalive leases, and etcd's
own watch-stream / watcher gauges and lease count.

Verdict, over the samples after the warm-up: a least-squares fit of RSS against cycles gives the growth
slope; the run leaks if the fitted growth over the measured span exceeds `max_growth_mb`, or if any
resource count ends (median of the last quarter) above its steady state (max over the first half).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import tracemalloc
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from etcdlock._diagnostics import memory
from etcdlock._diagnostics.process import ProcessSnapshot
from etcdlock._recipes.errors import LockTimeout
from etcdlock._recipes.lock import Lock
from etcdlock._recipes.state import RecipeClient

MB = 1024 * 1024
RESOURCES = (
    "tasks",
    "threads",
    "fds",
    "watch_streams",
    "watchers",
    "keepalive_leases",
    "server_watch_streams",
    "server_watchers",
    "server_leases",
)


@dataclass
class SoakConfig:
    keys: int = 10
    hold: float = 1.0
    rate: float | None = 1.0  # ticks per second; None: no tick, back-to-back cycles
    lock_timeout: float = 1.0
    duration: float | None = 60.0
    cycles: int | None = None
    concurrency: int = 1  # workers per name, without a tick
    ttl: int = 10
    sample_every: float = 1.0
    warmup: float = 0.2  # fraction of the run before measuring
    max_growth_mb: float = 2.0
    trace: bool = True
    prefix: str = "etcdlock-soak/"


@dataclass
class Sample:
    t: float
    cycles: int
    acquired: int
    timeouts: int
    rss: int
    heap: int
    tasks: int
    threads: int
    fds: int
    watch_streams: int
    watchers: int
    keepalive_leases: int
    server_watch_streams: float
    server_watchers: float
    server_leases: int


@dataclass
class Verdict:
    leak: bool
    reasons: list[str]
    rss_growth_fitted_bytes: float
    rss_slope_per_10k_cycles_bytes: float
    measured_cycles: int
    resources: dict[str, dict[str, float]]
    top_growth_sites: list[tuple[str, int, int]] = field(default_factory=list)


def _fit_slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2 or max(xs) == min(xs):
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def judge(samples: list[Sample], config: SoakConfig, growth_sites: list[tuple[str, int, int]]) -> Verdict:
    start = samples[0].t + (samples[-1].t - samples[0].t) * config.warmup
    post = [s for s in samples if s.t >= start]
    reasons: list[str] = []
    slope = _fit_slope([s.cycles for s in post], [s.rss for s in post])
    span = (post[-1].cycles - post[0].cycles) if post else 0
    fitted = slope * span
    if fitted > config.max_growth_mb * MB:
        reasons.append(
            f"RSS grew {fitted / MB:.2f} MB over {span} cycles after warm-up "
            f"(limit {config.max_growth_mb:g} MB)"
        )
    resources: dict[str, dict[str, float]] = {}
    half, last = post[: max(1, len(post) // 2)], post[-max(1, len(post) // 4) :]
    for name in RESOURCES:
        steady = max(getattr(s, name) for s in half)
        final = statistics.median(getattr(s, name) for s in last)
        grew = final > steady
        resources[name] = {"steady_max": steady, "final_median": final, "grew": float(grew)}
        if grew:
            reasons.append(f"{name} ended at {final:g}, above its steady state {steady:g}")
    return Verdict(
        bool(reasons),
        reasons,
        fitted,
        slope * 10_000,
        span,
        resources,
        growth_sites if reasons else growth_sites[:5],
    )


class Soak:
    def __init__(self, client: RecipeClient, config: SoakConfig, metrics_url: str | None) -> None:
        self.client = client
        self.config = config
        self.metrics_url = metrics_url
        self.cycles = self.acquired = self.timeouts = 0
        self.samples: list[Sample] = []
        self._stop = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._t0 = 0.0

    def _done(self) -> bool:
        c = self.config
        if c.cycles is not None and self.cycles >= c.cycles:
            return True
        return c.duration is not None and time.monotonic() - self._t0 >= c.duration

    async def _cycle(self, name: str) -> None:
        try:
            async with Lock(self.client, name, ttl=self.config.ttl, timeout=self.config.lock_timeout):
                self.acquired += 1
                if self.config.hold > 0:
                    await asyncio.sleep(self.config.hold)
        except LockTimeout:
            self.timeouts += 1
        finally:
            self.cycles += 1

    async def _ticker(self, names: list[str]) -> None:
        assert self.config.rate is not None
        period = 1.0 / self.config.rate
        next_tick = time.monotonic()
        while not self._stop.is_set():
            for name in names:
                task = asyncio.get_running_loop().create_task(self._cycle(name), name="etcdlock:soak-cycle")
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            next_tick += period
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_tick - time.monotonic())):
                    await self._stop.wait()

    async def _worker(self, name: str) -> None:
        while not self._stop.is_set():
            await self._cycle(name)

    def _server_gauges(self) -> tuple[float, float]:
        if self.metrics_url is None:
            return -1.0, -1.0
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.metrics_url, timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return -1.0, -1.0
        values = {}
        for line in text.splitlines():
            if line.startswith(
                ("etcd_debugging_mvcc_watch_stream_total ", "etcd_debugging_mvcc_watcher_total ")
            ):
                k, v = line.split()
                values[k] = float(v)
        return (
            values.get("etcd_debugging_mvcc_watch_stream_total", -1.0),
            values.get("etcd_debugging_mvcc_watcher_total", -1.0),
        )

    async def _sample(self) -> Sample:
        res = self.client.resources()
        proc = ProcessSnapshot.take()
        streams, watchers = await asyncio.to_thread(self._server_gauges)
        try:
            leases = len(await self.client.leases())
        except Exception:
            leases = -1
        return Sample(
            round(time.monotonic() - self._t0, 3),
            self.cycles,
            self.acquired,
            self.timeouts,
            proc.rss,
            tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0,
            len(asyncio.all_tasks()),
            proc.threads,
            proc.fds,
            res.watch_streams,
            res.watchers,
            res.keepalive_leases,
            streams,
            watchers,
            leases,
        )

    async def run(self, on_sample: Callable[[Sample], None] | None = None) -> Verdict:
        c = self.config
        names = [f"{c.prefix}key{i}" for i in range(c.keys)]
        started_trace = c.trace and not tracemalloc.is_tracing()
        if started_trace:
            tracemalloc.start(1)
        self._t0 = time.monotonic()
        if c.rate is None:
            drivers = [asyncio.create_task(self._worker(n)) for n in names for _ in range(c.concurrency)]
        else:
            drivers = [asyncio.create_task(self._ticker(names))]
        baseline_sites: memory.Sites | None = None
        warm_at = (c.duration or 0) * c.warmup
        try:
            while not self._done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(c.sample_every):
                        await self._stop.wait()
                sample = await self._sample()
                self.samples.append(sample)
                if on_sample is not None:
                    on_sample(sample)
                warm = (sample.t >= warm_at) if c.cycles is None else (sample.cycles >= c.cycles * c.warmup)
                if c.trace and baseline_sites is None and warm:
                    baseline_sites = memory.sites()
        finally:
            self._stop.set()
            await asyncio.gather(*drivers, return_exceptions=True)
            await asyncio.gather(*self._inflight, return_exceptions=True)
        final = await self._sample()
        self.samples.append(final)
        sites = (
            memory.growth(baseline_sites, memory.sites()) if c.trace and baseline_sites is not None else []
        )
        if started_trace:
            tracemalloc.stop()
        return judge(self.samples, c, sites)

    def report(self, verdict: Verdict, environment: dict[str, str]) -> dict[str, object]:
        return {
            "config": asdict(self.config),
            "environment": environment,
            "verdict": asdict(verdict),
            "samples": [asdict(s) for s in self.samples],
        }


def chart(samples: list[Sample], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [s.cycles for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.plot(xs, [s.rss / MB for s in samples], label="RSS (MB)")
    if any(s.heap for s in samples):
        top.plot(xs, [s.heap / MB for s in samples], label="traced Python heap (MB)")
    top.set_ylabel("MB")
    top.set_ylim(bottom=0)
    top.legend(loc="upper left")
    top.set_title(title)
    for name in RESOURCES:
        bottom.plot(xs, [getattr(s, name) for s in samples], label=name)
    bottom.set_xlabel("lock cycles")
    bottom.set_ylabel("count")
    bottom.legend(loc="upper left", fontsize="small", ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
