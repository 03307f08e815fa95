"""The command line fails fast and says why: within --timeout, on malformed endpoints, in its own words."""

from __future__ import annotations

import time

import pytest

from etcdlock._cli.common import EXIT_ERROR
from etcdlock.testing import free_port
from tests.test_cli import run_cli

# Generous for a loaded machine; the client's own connection wait is 5 s, which --timeout 1 must cut short.
SHORT_TIMEOUT_BUDGET = 4.0


@pytest.mark.parametrize("command", [["lock", "job", "--", "true"], ["elect", "svc", "p1", "--", "true"]])
def test_the_connection_wait_is_within_timeout(command: list[str]) -> None:
    unreachable = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    r = run_cli(*command[:-2], "--timeout", "1", *command[-2:], endpoints=[unreachable])
    took = time.monotonic() - started
    assert r.returncode == EXIT_ERROR, r.stderr
    assert "within 1s" in r.stderr, r.stderr
    assert took < SHORT_TIMEOUT_BUDGET, f"gave up after {took:.1f}s with --timeout 1"


@pytest.mark.parametrize(
    ("endpoints", "message"),
    [
        ("::1:2379", "an IPv6 address goes in brackets, e.g. [::1]:2379"),
        ("[::1:2379", "an IPv6 address goes in brackets"),
        ("", "names no endpoint"),
        (" , ", "names no endpoint"),
        ("127.0.0.1", "is not of the form host:port"),
        ("127.0.0.1:99999", "is not of the form host:port"),
    ],
)
def test_malformed_endpoints_are_refused_before_connecting(endpoints: str, message: str) -> None:
    started = time.monotonic()
    r = run_cli("lock", "job", f"--endpoints={endpoints}", "--", "true", endpoints=None)
    assert r.returncode == EXIT_ERROR, r.stderr
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert time.monotonic() - started < SHORT_TIMEOUT_BUDGET
