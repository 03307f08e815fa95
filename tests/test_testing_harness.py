"""Tests of etcdlock.testing itself, against real etcd processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from etcdlock.testing import (
    INSTALL_HINT,
    EtcdCluster,
    EtcdMember,
    EtcdNotInstalledError,
    EtcdStartError,
    EtcdWaitTimeout,
    find_etcd_binary,
    find_etcdctl_binary,
    parse_prometheus_text,
)
from etcdlock.testing import binaries as binaries_module
from etcdlock.testing import cluster as cluster_module
from etcdlock.testing import ports as ports_module

pytest_plugins = ["etcdlock.testing.pytest_plugin"]


# ---- helpers ---------------------------------------------------------------------------------


def etcdctl(endpoints: Iterable[str], *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    result = subprocess.run(
        [
            find_etcdctl_binary(),
            f"--endpoints={','.join(endpoints)}",
            "--dial-timeout=3s",
            "--command-timeout=5s",
            *args,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, f"etcdctl {args} failed: {result.stderr}"
    return result.stdout


def put_get(endpoints: Iterable[str], key: str, value: str) -> None:
    endpoints = list(endpoints)
    etcdctl(endpoints, "put", key, value)
    assert etcdctl(endpoints, "get", key, "--print-value-only").strip() == value


def assert_pid_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.02)


# ---- binaries --------------------------------------------------------------------------------


def test_find_etcd_binary_missing_env_target(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-etcd"
    monkeypatch.setenv("ETCDLOCK_ETCD_BINARY", str(missing))
    with pytest.raises(EtcdNotInstalledError) as excinfo:
        find_etcd_binary()
    message = str(excinfo.value)
    assert "apt-get install etcd-server etcd-client" in message
    assert INSTALL_HINT in message
    assert str(missing) in message
    assert isinstance(excinfo.value, RuntimeError)


def test_find_etcd_binary_nothing_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ETCDLOCK_ETCD_BINARY", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(binaries_module, "_is_executable_file", lambda path: False)
    with pytest.raises(EtcdNotInstalledError, match="apt-get install etcd-server etcd-client"):
        find_etcd_binary()


def test_find_etcd_binary_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ETCDLOCK_ETCD_BINARY", raising=False)
    real = find_etcd_binary()
    assert os.access(real, os.X_OK)
    monkeypatch.setenv("ETCDLOCK_ETCD_BINARY", real)
    assert find_etcd_binary() == real


# ---- single member ---------------------------------------------------------------------------


def test_start_stop_single_member_leaves_nothing_behind() -> None:
    cluster = EtcdCluster(1)
    with cluster:
        (member,) = cluster.members
        tmp_dir = cluster.tmp_dir
        assert tmp_dir is not None and tmp_dir.is_dir()
        assert member.data_dir.is_relative_to(tmp_dir)
        assert member.log_path.is_relative_to(tmp_dir)
        assert member.endpoint == f"127.0.0.1:{member.client_port}"
        assert member.client_url == f"http://127.0.0.1:{member.client_port}"
        assert member.peer_url == f"http://127.0.0.1:{member.peer_port}"
        assert cluster.endpoints == [member.endpoint]
        pid = member.pid
        assert pid is not None and member.is_running
        os.kill(pid, 0)  # alive
        put_get(cluster.endpoints, "/harness/single", "hello")
        assert member.is_leader()
        assert member.log_path.stat().st_size > 0  # etcd's output went to the log file

        member.stop()
        assert member.pid is None and not member.is_running
        assert_pid_gone(pid)
        assert member.data_dir.is_dir()  # stop keeps the data
        member.stop()  # idempotent

        # ... so a restart on the same ports serves the old data.
        member.restart()
        assert member.pid not in (None, pid)
        assert etcdctl(cluster.endpoints, "get", "/harness/single", "--print-value-only").strip() == "hello"
        pid = member.pid
    assert pid is not None
    assert_pid_gone(pid)
    assert not tmp_dir.exists()
    assert cluster.tmp_dir is None
    cluster.stop()  # idempotent


def test_kill_keeps_data_and_restart_recovers(etcd_fresh: EtcdCluster) -> None:
    (member,) = etcd_fresh.members
    put_get(etcd_fresh.endpoints, "/harness/crash", "survives")
    pid = member.pid
    assert pid is not None
    member.kill()
    assert_pid_gone(pid)
    assert member.returncode == -9
    member.restart()
    assert etcdctl(etcd_fresh.endpoints, "get", "/harness/crash", "--print-value-only").strip() == "survives"


def test_pause_resume_single_member(etcd_fresh: EtcdCluster) -> None:
    (member,) = etcd_fresh.members
    member.pause()
    assert member.is_paused and member.is_running
    with pytest.raises(EtcdWaitTimeout, match=r"m0 \(the member is paused\).*/health"):
        member.wait_ready(timeout=0.3)
    member.resume()
    assert not member.is_paused
    member.wait_ready(timeout=5)
    put_get(etcd_fresh.endpoints, "/harness/paused", "back")


def test_stop_a_paused_member(etcd_fresh: EtcdCluster) -> None:
    (member,) = etcd_fresh.members
    pid = member.pid
    assert pid is not None
    member.pause()
    start = time.monotonic()
    member.stop(timeout=5)  # SIGTERM alone would stay pending on a stopped process
    assert time.monotonic() - start < 4, "a paused member should stop gracefully, not via SIGKILL"
    assert_pid_gone(pid)
    # etcd exits on SIGTERM by re-raising it after a graceful shutdown: -15, not -9.
    assert member.returncode == -signal.SIGTERM


def test_metrics(etcd_fresh: EtcdCluster) -> None:
    (member,) = etcd_fresh.members
    samples = member.metrics()
    assert samples["etcd_debugging_mvcc_watch_stream_total"] == 0.0
    assert member.metric("etcd_debugging_mvcc_watch_stream_total") == 0.0
    assert member.metric("etcd_server_is_leader") == 1.0
    assert not any(key.startswith("#") for key in samples)
    range_key = (
        'grpc_server_started_total{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"}'
    )
    assert range_key in samples
    before = samples[range_key]
    etcdctl(etcd_fresh.endpoints, "get", "/harness/metrics")
    assert member.metrics()[range_key] == before + 1
    with pytest.raises(KeyError, match="only exists with labels"):
        member.metric("grpc_server_started_total")
    with pytest.raises(KeyError, match="no_such_metric"):
        member.metric("no_such_metric")


def test_parse_prometheus_text() -> None:
    text = textwrap.dedent(
        """\
        # HELP a_total Some counter.
        # TYPE a_total counter
        a_total 3
        b{x="1",y="with space"} 2.5
        c{msg="brace } and \\" quote"} -1e3 1700000000000
        d NaN
        e +Inf

        f{} 7
        garbage line without value
        """
    )
    samples = parse_prometheus_text(text)
    assert samples["a_total"] == 3.0
    assert samples['b{x="1",y="with space"}'] == 2.5
    assert samples['c{msg="brace } and \\" quote"}'] == -1000.0
    assert samples["d"] != samples["d"]  # NaN
    assert samples["e"] == float("inf")
    assert samples["f{}"] == 7.0
    assert len(samples) == 6


# ---- three members ---------------------------------------------------------------------------


def test_cluster3_elects_exactly_one_leader_and_serves(etcd_cluster3: EtcdCluster) -> None:
    assert len(etcd_cluster3.members) == 3
    assert len(set(etcd_cluster3.endpoints)) == 3
    leader = etcd_cluster3.leader()
    flags = [m.is_leader() for m in etcd_cluster3.members]
    assert flags.count(True) == 1
    assert etcd_cluster3.members[flags.index(True)] is leader
    put_get(etcd_cluster3.endpoints, "/harness/c3", "v1")
    # Every member serves the data.
    for m in etcd_cluster3.members:
        assert etcdctl([m.endpoint], "get", "/harness/c3", "--print-value-only").strip() == "v1"


def test_cluster3_leader_failover_and_rejoin(etcd_cluster3: EtcdCluster) -> None:
    old = etcd_cluster3.leader()
    old_pid = old.pid
    assert old_pid is not None
    put_get(etcd_cluster3.endpoints, "/harness/failover", "before")

    old.kill()
    assert_pid_gone(old_pid)
    new = etcd_cluster3.leader(timeout=10)
    assert new is not old and new.is_running
    survivors = [m.endpoint for m in etcd_cluster3.members if m is not old]
    put_get(survivors, "/harness/failover", "during")
    with pytest.raises(Exception, match="not running"):
        etcd_cluster3.wait_healthy(timeout=1)
    etcd_cluster3.wait_healthy(timeout=5, only_running=True)

    old.restart()  # same ports and data dir; rejoins
    assert old.endpoint in etcd_cluster3.endpoints
    etcd_cluster3.wait_healthy(timeout=15)
    assert all(m.is_running for m in etcd_cluster3.members)
    etcd_cluster3.leader()
    # The rejoined member caught up with what was written while it was down.
    assert etcdctl([old.endpoint], "get", "/harness/failover", "--print-value-only").strip() == "during"
    out = etcdctl(etcd_cluster3.endpoints, "member", "list")
    assert len(out.strip().splitlines()) == 3


def test_cluster3_pause_leader(etcd_cluster3: EtcdCluster) -> None:
    old = etcd_cluster3.leader()
    old.pause()
    try:
        assert old.is_paused
        new = etcd_cluster3.leader(timeout=10)  # paused members are not asked
        assert new is not old
        others = [m.endpoint for m in etcd_cluster3.members if m is not old]
        put_get(others, "/harness/pause", "while-paused")
    finally:
        old.resume()
    etcd_cluster3.wait_healthy(timeout=15)
    wait_until(lambda: not old.is_leader())  # the old leader steps down after seeing the new term
    assert sum(m.is_leader() for m in etcd_cluster3.members) == 1
    assert etcdctl([old.endpoint], "get", "/harness/pause", "--print-value-only").strip() == "while-paused"


def test_cluster_stop_with_dead_and_paused_members() -> None:
    cluster = EtcdCluster(3).start()
    leader = cluster.leader()
    followers = [m for m in cluster.members if m is not leader]
    pids = [m.pid for m in cluster.members]
    tmp_dir = cluster.tmp_dir
    assert tmp_dir is not None
    followers[0].kill()
    followers[1].pause()
    start = time.monotonic()
    cluster.stop()
    # Naively SIGTERMing the leader first would wait ~6 s for a leadership transfer to the paused one.
    assert time.monotonic() - start < 3
    for pid in pids:
        assert pid is not None
        assert_pid_gone(pid)
    assert not tmp_dir.exists()
    cluster.stop()


# ---- fixtures, failures and cleanup ----------------------------------------------------------


def test_session_fixture(etcd: EtcdCluster, etcd_endpoints: list[str]) -> None:
    assert etcd_endpoints == etcd.endpoints
    assert len(etcd_endpoints) == 1
    put_get(etcd_endpoints, "/harness/session", "yes")


def test_invalid_timing_rejected() -> None:
    with pytest.raises(ValueError, match="5 \\* heartbeat_ms"):
        EtcdCluster(1, heartbeat_ms=100, election_ms=200)


def test_failed_start_reports_log_and_cleans_up() -> None:
    cluster = EtcdCluster(1, extra_args=["--no-such-flag"], start_timeout=10)
    with pytest.raises(EtcdStartError) as excinfo:
        cluster.start()
    message = str(excinfo.value)
    assert "m0" in message
    assert "no-such-flag" in message  # from the tail of etcd's log
    (member,) = cluster.members
    assert not member.is_running
    assert cluster.tmp_dir is None
    assert not member.base_dir.parent.exists()


def test_port_taken_meanwhile_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_free_ports = ports_module.free_ports
        calls: list[list[int]] = []

        def free_ports(n: int, exclude: Iterable[int] = ()) -> list[int]:
            ports = real_free_ports(n, exclude)
            if not calls:
                ports[1] = taken  # first attempt: m0's peer port is already in use
            calls.append(ports)
            return ports

        monkeypatch.setattr(cluster_module, "free_ports", free_ports)
        with EtcdCluster(1) as cluster:
            assert len(calls) == 2
            assert taken not in (cluster.members[0].client_port, cluster.members[0].peer_port)
            put_get(cluster.endpoints, "/harness/retry", "ok")


def test_etcd_dies_with_the_test_process(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: SIGKILL the process that started etcd, and etcd goes with it."""
    script = textwrap.dedent(
        """
        import sys, time
        from etcdlock.testing import EtcdCluster
        cluster = EtcdCluster(1).start()
        print(cluster.members[0].pid, cluster.tmp_dir, flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert line, "child did not start etcd"
        etcd_pid, tmp_dir = int(line[0]), line[1]
        os.kill(etcd_pid, 0)
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()

    def gone() -> bool:
        # etcd was `child`'s child; once dead it is reaped by init (or a subreaper).  In containers
        # whose PID 1 does not reap, it may linger as a zombie, which is dead enough.
        try:
            stat = Path(f"/proc/{etcd_pid}/stat").read_text()
        except FileNotFoundError:
            return True
        return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")

    wait_until(gone, timeout=10)
    shutil.rmtree(tmp_dir, ignore_errors=True)


def test_member_repr_and_command(etcd_fresh: EtcdCluster) -> None:
    (member,) = etcd_fresh.members
    assert isinstance(member, EtcdMember)
    assert "running" in repr(member)
    argv = member.command(cluster_state="existing")
    assert f"--listen-client-urls={member.client_url}" in argv
    assert "--initial-cluster-state=existing" in argv
    assert any(a.startswith("--initial-cluster-token=etcdlock-test-") for a in argv)
