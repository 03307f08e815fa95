"""`etcdlock lock NAME -- CMD`: the command never outlives the lock.

CMD runs in a process group of its own, and every way etcdlock stops (a stop signal, the lock lost, the
command ending) ends the whole group before the lock is released. A SIGKILLed etcdlock takes CMD down through
the parent-death signal. Exit statuses follow the shell: 128+N for a signal N.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import pytest

from etcdlock import SyncClient
from etcdlock._cli.lock_cmd import EXIT_LOST
from tests.test_cli import _pid_alive, finish, run_cli, spawn_cli
from tests.waiting import wait_until_sync

# sh -c SCRIPT sh GRANDCHILD_PIDFILE COMMAND_PIDFILE: a shell that starts a background grandchild and waits.
# The grandchild's stdio goes to /dev/null so that it never holds the test's pipes open.
_GROUP = 'sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > "$1"; echo $$ > "$2"; wait'
# The same with SIGTERM ignored by the shell and (inherited) by the grandchild: only SIGKILL ends them.
_GROUP_IGNORING_TERM = "trap '' TERM; " + _GROUP

_STOP_SIGNALS = [
    pytest.param(signal.SIGTERM, 143, id="SIGTERM"),
    pytest.param(signal.SIGINT, 130, id="SIGINT"),
    pytest.param(signal.SIGHUP, 129, id="SIGHUP"),
    pytest.param(signal.SIGQUIT, 131, id="SIGQUIT"),
]


def _read_pid(pidfile: Path) -> int:
    """The PID a shell wrote with `echo $pid > pidfile`, once the whole line is there."""
    wait_until_sync(
        lambda: pidfile.exists() and pidfile.read_text().endswith("\n"), timeout=10, what=pidfile.name
    )
    return int(pidfile.read_text())


def _kill_leftovers(*pidfiles: Path) -> None:
    """Cleanup when a test failed: SIGKILL (by PID) whatever the command started and left running."""
    for pidfile in pidfiles:
        text = pidfile.read_text() if pidfile.exists() else ""
        if text.endswith("\n") and _pid_alive(int(text)):
            os.kill(int(text), signal.SIGKILL)


@dataclasses.dataclass
class _ShellWithGrandchild:
    """A command (sh) that starts a background grandchild in its group; both write their PIDs to files."""

    tmp_path: Path
    script: str = _GROUP

    @property
    def pidfiles(self) -> tuple[Path, Path]:
        return self.tmp_path / "grandchild.pid", self.tmp_path / "command.pid"

    def argv(self) -> list[str]:
        return ["sh", "-c", self.script, "sh", *map(str, self.pidfiles)]

    def pids(self) -> tuple[int, int]:
        """(grandchild, command), once both are running."""
        grandchild_file, command_file = self.pidfiles
        return _read_pid(grandchild_file), _read_pid(command_file)

    def any_alive(self) -> bool:
        return any(_pid_alive(pid) for pid in self.pids())

    def cleanup(self) -> None:
        _kill_leftovers(*self.pidfiles)


@pytest.mark.parametrize(("sig", "status"), _STOP_SIGNALS)
def test_stop_signal_ends_the_command_group_then_releases(
    etcd_endpoints: list[str], ns: str, tmp_path: Path, sig: signal.Signals, status: int
) -> None:
    cmd = _ShellWithGrandchild(tmp_path)
    proc = spawn_cli("lock", ns + "job", "--", *cmd.argv(), endpoints=etcd_endpoints)
    try:
        cmd.pids()
        with SyncClient(etcd_endpoints) as c:
            assert c.get(ns + "job/", prefix=True).count == 1
            proc.send_signal(sig)
            assert proc.wait(timeout=15) == status
            # Gone when etcdlock exits, not some time later: the group ends before the lock is released.
            assert not cmd.any_alive()
            assert c.get(ns, prefix=True).count == 0
    finally:
        cmd.cleanup()
        finish(proc)


def test_group_ignoring_sigterm_is_killed_after_kill_after(
    etcd_endpoints: list[str], ns: str, tmp_path: Path
) -> None:
    cmd = _ShellWithGrandchild(tmp_path, script=_GROUP_IGNORING_TERM)
    proc = spawn_cli("lock", ns + "job", "--kill-after", "0.5", "--", *cmd.argv(), endpoints=etcd_endpoints)
    try:
        cmd.pids()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 128 + signal.SIGTERM
        assert time.monotonic() - t0 >= 0.5  # SIGTERM alone ends nothing here: SIGKILL came after 0.5 s
        assert not cmd.any_alive()
        with SyncClient(etcd_endpoints) as c:
            assert c.get(ns, prefix=True).count == 0
    finally:
        cmd.cleanup()
        finish(proc)


def test_lost_lock_ends_the_whole_command_group(etcd_endpoints: list[str], ns: str, tmp_path: Path) -> None:
    cmd = _ShellWithGrandchild(tmp_path)
    proc = spawn_cli("lock", ns + "job", "--kill-after", "2", "--", *cmd.argv(), endpoints=etcd_endpoints)
    try:
        cmd.pids()
        with SyncClient(etcd_endpoints) as c:
            c.revoke(c.get(ns + "job/", prefix=True).kvs[0].lease)
        assert proc.wait(timeout=15) == EXIT_LOST
        assert not cmd.any_alive()
    finally:
        cmd.cleanup()
        finish(proc)


def test_background_child_left_by_the_command_ends_before_release(
    etcd_endpoints: list[str], ns: str, tmp_path: Path
) -> None:
    grandchild_file = tmp_path / "grandchild.pid"
    script = 'sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > "$1"; exit 7'
    try:
        r = run_cli(
            "lock", ns + "job", "--", "sh", "-c", script, "sh", str(grandchild_file), endpoints=etcd_endpoints
        )
        assert r.returncode == 7, r.stderr  # the command's own status, even though etcdlock ended its child
        assert not _pid_alive(_read_pid(grandchild_file))
        with SyncClient(etcd_endpoints) as c:
            assert c.get(ns, prefix=True).count == 0
    finally:
        _kill_leftovers(grandchild_file)


@pytest.mark.parametrize(
    ("sig", "status"),
    [pytest.param(s, 128 + s, id=s.name) for s in (signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM)],
)
def test_stop_signal_while_waiting_withdraws_the_key(
    etcd_endpoints: list[str], ns: str, sig: signal.Signals, status: int
) -> None:
    with SyncClient(etcd_endpoints) as c, c.lock(ns + "job"):
        waiter = spawn_cli("lock", ns + "job", "--", "true", endpoints=etcd_endpoints)
        try:
            wait_until_sync(lambda: c.get(ns + "job/", prefix=True).count == 2, what="waiter queued")
            waiter.send_signal(sig)
            assert waiter.wait(timeout=10) == status
            assert c.get(ns + "job/", prefix=True).count == 1  # only ours: the waiter's key went with it
        finally:
            finish(waiter)


def test_sigkill_of_etcdlock_takes_the_command_down(
    etcd_endpoints: list[str], ns: str, tmp_path: Path
) -> None:
    command_file = tmp_path / "command.pid"
    script = 'echo $$ > "$1"; exec sleep 1000 </dev/null >/dev/null 2>&1'
    proc = spawn_cli(
        "lock", ns + "job", "--", "sh", "-c", script, "sh", str(command_file), endpoints=etcd_endpoints
    )
    try:
        command = _read_pid(command_file)
        proc.kill()  # no handler can run: only the parent-death signal set in the command can act
        proc.wait(timeout=10)
        wait_until_sync(lambda: not _pid_alive(command), timeout=2, what="the command to die with etcdlock")
    finally:
        _kill_leftovers(command_file)
        finish(proc)


@pytest.mark.parametrize(("sig", "status"), [("TERM", 143), ("KILL", 137)])
def test_command_killed_by_signal_n_exits_128_plus_n(
    etcd_endpoints: list[str], ns: str, sig: str, status: int
) -> None:
    r = run_cli("lock", ns + "job", "--", "sh", "-c", f"kill -{sig} $$", endpoints=etcd_endpoints)
    assert r.returncode == status, r.stderr
    with SyncClient(etcd_endpoints) as c:
        assert c.get(ns, prefix=True).count == 0
