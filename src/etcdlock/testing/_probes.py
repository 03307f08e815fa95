"""Polling etcd over plain HTTP on loopback: per-request timeouts, GET, POST to its JSON gateway."""

from __future__ import annotations

import json
import time
import urllib.request

from etcdlock.testing.errors import EtcdProcessError

__all__ = ["HTTP_TIMEOUT", "POLL_INTERVAL", "http_get", "http_post_json", "request_timeout"]

POLL_INTERVAL = 0.02  # seconds between polls of a condition
HTTP_TIMEOUT = 1.0  # per-request cap for /health and /metrics polls


def request_timeout(deadline: float) -> float:
    """Per-request timeout for a poll: never much past ``deadline``, never more than 1 s."""
    return min(HTTP_TIMEOUT, max(0.05, deadline - time.monotonic()))


# Never go through an HTTP proxy from the environment for loopback requests.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float) -> bytes:
    with _HTTP.open(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


def http_post_json(url: str, body: dict[str, object], timeout: float) -> dict[str, object]:
    """POST a JSON body to etcd's gRPC gateway (``/v3/...``) and return the JSON answer."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with _HTTP.open(request, timeout=timeout) as resp:
            answer = json.loads(resp.read())
    except (OSError, ValueError) as exc:  # includes URLError/HTTPError, timeouts and bad JSON
        raise EtcdProcessError(f"POST {url} failed: {exc}") from exc
    if not isinstance(answer, dict):
        raise EtcdProcessError(f"POST {url} returned {answer!r}")
    return answer
