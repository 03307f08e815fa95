"""Parsing etcd's ``/metrics`` page (the Prometheus text exposition format)."""

from __future__ import annotations

import re

__all__ = ["parse_prometheus_text"]

_METRIC_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _label_block_end(line: str, start: int) -> int:
    """Index of the ``}`` closing the label block opened at ``line[start] == "{"``, or -1."""
    in_quotes = False
    i = start + 1
    while i < len(line):
        c = line[i]
        if in_quotes:
            if c == "\\":
                i += 1  # skip the escaped character
            elif c == '"':
                in_quotes = False
        elif c == '"':
            in_quotes = True
        elif c == "}":
            return i
        i += 1
    return -1


def parse_prometheus_text(text: str) -> dict[str, float]:
    """Parse the Prometheus text exposition format into ``{sample: value}``.

    Keys are the sample names exactly as printed, labels included, e.g.
    ``'etcd_server_is_leader'`` or
    ``'grpc_server_started_total{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"}'``.
    Comment (``# HELP``/``# TYPE``) and blank lines are skipped, as are malformed lines;
    timestamps are ignored.  ``NaN``/``+Inf``/``-Inf`` become the corresponding floats.
    """
    samples: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _METRIC_NAME.match(line)
        if m is None:
            continue
        end = m.end()
        if end < len(line) and line[end] == "{":
            close = _label_block_end(line, end)
            if close == -1:
                continue
            end = close + 1
        key, rest = line[:end], line[end:].split()
        if not rest:
            continue
        try:
            samples[key] = float(rest[0])
        except ValueError:
            continue
    return samples
