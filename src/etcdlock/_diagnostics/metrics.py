"""Prometheus text exposition of a client's locks, streams and process, rendered from plain counters."""

from __future__ import annotations

from etcdlock._diagnostics.process import ProcessSnapshot
from etcdlock._recipes.state import RecipeClient
from etcdlock._recipes.stats import Histogram


def _histogram(out: list[str], name: str, help_text: str, h: Histogram) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} histogram")
    running = 0
    for bound, n in zip(h.buckets, h.counts, strict=False):
        running += n
        out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
    out.append(f'{name}_bucket{{le="+Inf"}} {h.count}')
    out.append(f"{name}_sum {h.total:.6f}")
    out.append(f"{name}_count {h.count}")


def _single(out: list[str], name: str, kind: str, help_text: str, value: float) -> None:
    # Classic text format: a counter's TYPE line names the sample itself, `_total` included.
    full = f"{name}_total" if kind == "counter" else name
    out.append(f"# HELP {full} {help_text}")
    out.append(f"# TYPE {full} {kind}")
    out.append(f"{full} {value:g}")


def render(client: RecipeClient) -> str:
    s = client._recipes.stats
    res = client.resources()
    proc = ProcessSnapshot.take()
    out: list[str] = []
    _histogram(out, "etcdlock_lock_wait_seconds", "Time from asking for a lock to holding it.", s.wait)
    _histogram(out, "etcdlock_lock_hold_seconds", "Time a lock was held, acquire to release.", s.hold)
    for name, kind, text, value in (
        ("etcdlock_locks_held", "gauge", "Locks held right now.", s.held),
        ("etcdlock_locks_acquired", "counter", "Locks acquired.", s.acquired),
        ("etcdlock_locks_released", "counter", "Locks released.", s.released),
        (
            "etcdlock_locks_lost",
            "counter",
            "Locks lost while held or waited for (key or lease gone).",
            s.lost,
        ),
        ("etcdlock_lock_acquire_timeouts", "counter", "Acquires that gave up at their timeout.", s.timeouts),
        ("etcdlock_try_lock_busy", "counter", "try_lock calls that found the lock taken.", s.try_lock_busy),
        (
            "etcdlock_release_failures",
            "counter",
            "Lock keys whose delete did not land within its cleanup deadline (they go with their lease).",
            s.release_failures,
        ),
        (
            "etcdlock_release_retries",
            "counter",
            "Releases whose delete missed its cleanup deadline and went on in the background till it landed.",
            s.release_retries,
        ),
        (
            "etcdlock_revoke_failures",
            "counter",
            "Leases whose revoke did not land within its cleanup deadline (they expire at their TTL).",
            s.revoke_failures,
        ),
        (
            "etcdlock_requests_throttled",
            "counter",
            "Requests etcd refused with 'too many requests' (not applied), sent again after a pause.",
            client._requests_throttled,
        ),
        ("etcdlock_watch_streams", "gauge", "Open gRPC watch streams.", res.watch_streams),
        ("etcdlock_watch_streams_closing", "gauge", "Watch streams being closed.", res.watch_streams_closing),
        ("etcdlock_watchers", "gauge", "Watchers on the shared watch stream.", res.watchers),
        ("etcdlock_keepalive_streams", "gauge", "Open LeaseKeepAlive streams.", res.keepalive_streams),
        ("etcdlock_keepalive_leases", "gauge", "Leases kept alive by this client.", res.keepalive_leases),
        (
            "etcdlock_keepalive_renewals",
            "counter",
            "Keepalive renewals sent.",
            client._keepalive_renewals_sent,
        ),
        ("etcdlock_channels", "gauge", "gRPC channels (one per endpoint used).", res.channels),
        ("etcdlock_owned_tasks", "gauge", "Background tasks owned by the client.", len(res.tasks)),
        ("etcdlock_process_resident_memory_bytes", "gauge", "Resident set size of this process.", proc.rss),
        ("etcdlock_process_open_fds", "gauge", "Open file descriptors of this process.", proc.fds),
        ("etcdlock_process_threads", "gauge", "OS threads of this process (grpc's included).", proc.threads),
    ):
        _single(out, name, kind, text, value)
    return "\n".join(out) + "\n"
