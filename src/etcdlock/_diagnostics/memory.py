"""Allocation sites from tracemalloc, aggregated by hand (bytes, blocks per file:line).

tracemalloc's own statistics() can fail to sort frames whose line number is None (seen on CPython 3.11).
"""

from __future__ import annotations

import tracemalloc

Sites = dict[str, tuple[int, int]]


def sites(snapshot: tracemalloc.Snapshot | None = None) -> Sites:
    if snapshot is None:
        snapshot = tracemalloc.take_snapshot()
    snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    out: Sites = {}
    for trace in snapshot.traces:
        frame = trace.traceback[0]
        where = f"{frame.filename}:{frame.lineno or 0}"
        size, count = out.get(where, (0, 0))
        out[where] = (size + trace.size, count + 1)
    return out


def growth(before: Sites, after: Sites, top: int = 15) -> list[tuple[str, int, int]]:
    """(site, bytes grown, blocks grown) for the sites that grew most."""
    diffs = [
        (where, size - before.get(where, (0, 0))[0], count - before.get(where, (0, 0))[1])
        for where, (size, count) in after.items()
    ]
    return sorted((d for d in diffs if d[1] > 0), key=lambda d: -d[1])[:top]
