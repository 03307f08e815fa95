"""The etcdlock command line against a real etcd: run under a lock, loss, timeout, status, demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from etcdlock import SyncClient
from etcdlock._cli.lock_cmd import EXIT_ERROR, EXIT_LOST, EXIT_TIMEOUT
from tests.waiting import wait_until_sync

CLI = [sys.executable, "-m", "etcdlock._cli.main"]

# Variables etcdlock reads; a test's subprocess sees only the ones the test sets, never the developer's.
_CONNECTION_ENV = ("ETCDLOCK_ENDPOINTS", "ETCDCTL_")


def cli_env(endpoints: list[str] | None = None, **extra: str) -> dict[str, str]:
    """os.environ without any ETCDCTL_* or ETCDLOCK_ENDPOINTS, plus ETCDCTL_ENDPOINTS and extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CONNECTION_ENV)}
    if endpoints is not None:
        env["ETCDCTL_ENDPOINTS"] = ",".join(endpoints)
    return {**env, **extra}


def run_cli(
    *args: str, endpoints: list[str] | None, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run etcdlock to the end (stdin not a terminal); env: default cli_env(endpoints)."""
    return subprocess.run(
        [*CLI, *args],
        env=cli_env(endpoints) if env is None else env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn_cli(*args: str, endpoints: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args], env=cli_env(endpoints), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(proc: subprocess.Popen[str]) -> None:
    """Kill (by PID) if still running, reap, and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def _pid_alive(pid: int) -> bool:
    """Still running. A zombie counts as gone: an orphan's reaper (PID 1, in a container) may be slow."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]  # after "(comm)", which may hold spaces and parentheses
    return state not in ("Z", "X")


def test_command_runs_with_the_lock_env(etcd_endpoints: list[str], ns: str) -> None:
    r = run_cli(
        "lock",
        ns + "job",
        "--",
        "sh",
        "-c",
        'echo "$ETCD_LOCK_KEY $ETCD_LOCK_REV"; exit 7',
        endpoints=etcd_endpoints,
    )
    assert r.returncode == 7, r.stderr
    key, rev = r.stdout.split()
    assert key.startswith(ns + "job/") and int(rev) > 0
    with SyncClient(etcd_endpoints) as c:
        assert c.get(ns, prefix=True).count == 0


def test_timeout_has_its_own_exit_status(etcd_endpoints: list[str], ns: str) -> None:
    with SyncClient(etcd_endpoints) as c, c.lock(ns + "job"):
        r = run_cli("lock", ns + "job", "--timeout", "0.3", "--", "true", endpoints=etcd_endpoints)
        assert r.returncode == EXIT_TIMEOUT
        assert "not acquired within" in r.stderr
        assert c.get(ns, prefix=True).count == 1


def test_lost_lock_terminates_the_command(etcd_endpoints: list[str], ns: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    proc = spawn_cli(
        "lock",
        ns + "job",
        "--kill-after",
        "2",
        "--",
        "sh",
        "-c",
        f"echo $$ > {pidfile}; exec sleep 60",
        endpoints=etcd_endpoints,
    )
    try:
        wait_until_sync(
            lambda: pidfile.exists() and pidfile.read_text().strip() != "", timeout=10, what="command started"
        )
        child = int(pidfile.read_text())
        with SyncClient(etcd_endpoints) as c:
            kv = c.get(ns + "job/", prefix=True).kvs[0]
            t0 = time.monotonic()
            c.revoke(kv.lease)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == EXIT_LOST
        assert time.monotonic() - t0 < 5
        assert "lost" in err
        wait_until_sync(lambda: not _pid_alive(child), what="command terminated")
    finally:
        finish(proc)


def test_without_command_prints_key_and_holds_until_sigterm(etcd_endpoints: list[str], ns: str) -> None:
    proc = spawn_cli("lock", ns + "job", endpoints=etcd_endpoints)
    try:
        assert proc.stdout is not None
        key = proc.stdout.readline().strip()
        assert key.startswith(ns + "job/")
        with SyncClient(etcd_endpoints) as c:
            assert c.get(key).count == 1
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert c.get(ns, prefix=True).count == 0
    finally:
        finish(proc)


def test_status_shows_holder_and_waiters(etcd_endpoints: list[str], ns: str) -> None:
    with SyncClient(etcd_endpoints) as c, c.lock(ns + "job") as held:
        waiter = spawn_cli("lock", ns + "job", "--", "true", endpoints=etcd_endpoints)
        try:
            wait_until_sync(lambda: c.get(ns + "job/", prefix=True).count == 2, what="waiter queued")
            r = run_cli("status", ns, "--json", endpoints=etcd_endpoints)
            assert r.returncode == 0, r.stderr
            entries = json.loads(r.stdout)[ns + "job"]
            assert [e["role"] for e in entries] == ["holder", "waiter"]
            assert entries[0]["key"] == held.key
            assert all(e["ttl_left"] > 0 for e in entries)
            text = run_cli("status", ns, endpoints=etcd_endpoints).stdout
            assert "(1 waiting)" in text and held.key in text
        finally:
            held.release()
            assert waiter.wait(timeout=10) == 0
            finish(waiter)


def test_unreachable_endpoint_is_a_clear_error() -> None:
    r = run_cli("lock", "x", "--", "true", endpoints=["127.0.0.1:1"], timeout=30)
    assert r.returncode == EXIT_ERROR
    assert "127.0.0.1:1" in r.stderr
    assert "TLS" not in r.stderr  # nothing listens there: no hint about TLS


def test_demo_runs_against_a_given_etcd(etcd_endpoints: list[str]) -> None:
    r = run_cli("demo", "--endpoints", ",".join(etcd_endpoints), endpoints=etcd_endpoints)
    assert r.returncode == 0, r.stderr
    assert "after close" in r.stdout


@pytest.mark.parametrize("args", [["lock", "x", "--ttl", "0", "--", "true"], ["lock", "", "--", "true"]])
def test_bad_input_exits_with_error(etcd_endpoints: list[str], args: list[str]) -> None:
    r = run_cli(*args, endpoints=etcd_endpoints)
    assert r.returncode == EXIT_ERROR
    assert r.stderr.strip()
