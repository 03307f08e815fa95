"""Shared test set-up: real etcd fixtures, asyncio hygiene checks, and a per-test key namespace."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from etcdlock import Client
from etcdlock.testing import EtcdNotInstalledError, find_etcd_binary, find_etcdctl_binary

pytest_plugins = ["etcdlock.testing.pytest_plugin"]

# Messages asyncio logs (instead of raising) when a task or future was left behind.
_ASYNCIO_LEAK_SIGNS = ("Task was destroyed but it is pending", "exception was never retrieved")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False, help="also run long soak/fault tests")


def pytest_report_header(config: pytest.Config) -> str:
    """Which etcd, etcdctl and Python a run used: the test command's legs differ in exactly these."""
    lines = [f"python {sys.version.split()[0]} at {sys.executable}"]
    for find, flag in ((find_etcd_binary, "--version"), (find_etcdctl_binary, "version")):
        try:
            path = find()
            out = subprocess.run([path, flag], capture_output=True, text=True, timeout=10).stdout
            lines.append(f"{path}: {out.splitlines()[0] if out else '?'}")
        except (EtcdNotInstalledError, OSError, subprocess.SubprocessError) as e:
            lines.append(f"{find.__name__}: {e}")
    return "\n".join(lines)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="long test: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


class _AsyncioLeakLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if any(sign in msg for sign in _ASYNCIO_LEAK_SIGNS):
            self.records.append(msg)


@pytest.fixture(autouse=True)
def asyncio_hygiene() -> Iterator[None]:
    """Fail the test if asyncio reports a destroyed pending task or an unretrieved exception."""
    handler = _AsyncioLeakLog()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield
        gc.collect()
    finally:
        logger.removeHandler(handler)
    if handler.records:
        pytest.fail("asyncio reported leaked tasks/futures:\n" + "\n".join(handler.records[:5]))


@pytest.fixture
def ns() -> str:
    """A key namespace of this test's own, so tests sharing one etcd never see each other's keys."""
    return f"/t/{uuid.uuid4().hex[:12]}/"


@pytest.fixture
async def client(etcd_endpoints: list[str]) -> AsyncIterator[Client]:
    c = Client(etcd_endpoints)
    async with c:
        yield c
    leftover = c.resources()
    assert leftover.total() == 0, f"client still holds resources after close: {leftover}"
