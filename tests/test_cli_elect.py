"""`etcdlock elect` against a real etcd, run as a subprocess: one leader at a time, the command only while
leader and never after leadership is lost, `--listen`, and interop with `etcdctl elect` both ways.

`etcdctl elect NAME PROPOSAL` prints its key and proposal, one a line, once it leads, and resigns on
SIGINT/SIGTERM; `etcdctl elect -l NAME` prints key and value of each leader. Our output must be the same
bytes, so that scripts written for one work with the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from etcdlock import Client
from etcdlock._cli.common import EXIT_ERROR
from etcdlock._cli.holding import EXIT_CANNOT_RUN, EXIT_LOST, EXIT_TIMEOUT, EXIT_USAGE
from etcdlock.testing import find_etcdctl_binary
from tests.test_cli import CLI, _pid_alive, cli_env, run_cli
from tests.test_lock_interop import _etcdctl_env
from tests.waiting import wait_until

# A negative check ("still campaigning", "printed nothing") watches for this long.
STILL_WAITING_WINDOW = 0.5
# From a leader's exit to the next one printing that it leads: ours is event driven (milliseconds); the
# budget is generous for a loaded 2-core machine.
HANDOVER_BUDGET = 3.0
# Reading what a process prints, when it should print it now.
LINE_TIMEOUT = 15.0

# sh -c SCRIPT sh PIDFILE: the command writes its PID, then becomes a long sleep (same PID).
_WRITE_PID_AND_SLEEP = 'echo $$ > "$1"; exec sleep 1000 </dev/null >/dev/null 2>&1'
# sh -c SCRIPT sh MARKER OTHER_PIDFILE: on start, record whether the other command still runs.
_MARK_IF_OTHER_RUNS = (
    'if kill -0 "$(cat "$2")" 2>/dev/null; then echo overlap; else echo alone; fi > "$1.tmp"; '
    'mv "$1.tmp" "$1"; exec sleep 1000 </dev/null >/dev/null 2>&1'
)


class Proc:
    """A subprocess (our CLI or etcdctl) whose stdout is read line by line. stop() (SIGKILL by PID if it
    still runs, then reap) is idempotent."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.stderr = b""

    @classmethod
    async def start(cls, argv: Sequence[str], env: dict[str, str]) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def lines(self, n: int, timeout: float = LINE_TIMEOUT) -> list[str]:
        """The next n lines it prints (without their newlines); TimeoutError if they do not come in time."""
        assert self.proc.stdout is not None
        out = []
        async with asyncio.timeout(timeout):
            for _ in range(n):
                line = await self.proc.stdout.readline()
                assert line.endswith(b"\n"), f"{self.pid} exited (rc={await self.wait()}): {self.stderr!r}"
                out.append(line[:-1].decode())
        return out

    async def assert_silent(self, window: float = STILL_WAITING_WINDOW) -> None:
        """It prints nothing, and keeps running, for `window` seconds."""
        with pytest.raises(TimeoutError):
            printed = await self.lines(1, window)
            pytest.fail(f"printed {printed} while it should still be waiting")
        assert self.proc.returncode is None, f"exited while waiting: {self.stderr!r}"

    def send(self, sig: int) -> None:
        os.kill(self.pid, sig)

    async def wait(self, timeout: float = LINE_TIMEOUT) -> int:
        """Its exit status once it exits by itself (its stderr in self.stderr)."""
        async with asyncio.timeout(timeout):
            rc = await self.proc.wait()
            assert self.proc.stderr is not None
            self.stderr = await self.proc.stderr.read()
        return rc

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        await self.proc.communicate()


@contextlib.asynccontextmanager
async def running(argv: Sequence[str], env: dict[str, str]) -> AsyncIterator[Proc]:
    proc = await Proc.start(argv, env)
    try:
        yield proc
    finally:
        await proc.stop()


def elect(endpoints: list[str], *args: str) -> contextlib.AbstractAsyncContextManager[Proc]:
    """`etcdlock elect ARGS...` against endpoints."""
    return running([*CLI, "elect", *args], cli_env(endpoints))


def etcdctl_elect(endpoints: list[str], *args: str) -> contextlib.AbstractAsyncContextManager[Proc]:
    """`etcdctl elect ARGS...` against endpoints."""
    argv = [find_etcdctl_binary(), f"--endpoints={','.join(endpoints)}", "--dial-timeout=3s", "elect", *args]
    return running(argv, _etcdctl_env())


async def candidates(client: Client, name: str) -> list[tuple[str, str]]:
    """(key, value) of each candidate of election `name`, in queue (create revision) order."""
    r = await client.get(name + "/", prefix=True, sort_order="ascend", sort_target="create")
    return [(kv.key.decode(), kv.value.decode()) for kv in r.kvs]


async def wait_candidates(client: Client, name: str, n: int) -> list[tuple[str, str]]:
    async def queued() -> bool:
        return len(await candidates(client, name)) == n

    await wait_until(queued, timeout=LINE_TIMEOUT, what=f"{n} candidates of {name}")
    return await candidates(client, name)


def pid_in(pidfile: Path) -> int | None:
    """The PID a shell wrote with `echo $$ > pidfile`, once the whole line is there."""
    text = pidfile.read_text() if pidfile.exists() else ""
    return int(text) if text.endswith("\n") else None


async def read_pid(pidfile: Path) -> int:
    await wait_until(lambda: pid_in(pidfile) is not None, timeout=LINE_TIMEOUT, what=pidfile.name)
    pid = pid_in(pidfile)
    assert pid is not None
    return pid


def marker(path: Path) -> str | None:
    """What a command wrote to its marker (written whole, by rename), None before."""
    return path.read_text().strip() if path.exists() else None


def kill_leftover(pidfile: Path) -> None:
    """Cleanup when a test failed: SIGKILL (by PID) a command the CLI left running."""
    pid = pid_in(pidfile)
    if pid is not None and _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


# ---- leading, and running a command while leader ---------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_without_command_prints_key_and_proposal_then_resigns_on_signal(
    client: Client, etcd_endpoints: list[str], ns: str, sig: signal.Signals
) -> None:
    name = ns + "svc"
    async with elect(etcd_endpoints, name, "node-1", "--ttl", "30") as leader:
        key, proposal = await leader.lines(2)
        assert proposal == "node-1"
        assert await candidates(client, name) == [(key, "node-1")]
        leader.send(sig)
        assert await leader.wait() == 0, leader.stderr
        assert await candidates(client, name) == []  # resigned: the key went before the exit


async def test_command_runs_while_leader_with_the_term_in_its_environment(
    client: Client, etcd_endpoints: list[str], ns: str
) -> None:
    name = ns + "svc"
    script = 'echo "$ETCD_ELECTION_KEY $ETCD_ELECTION_REV"; exit 7'
    async with elect(etcd_endpoints, name, "node-1", "--", "sh", "-c", script) as leader:
        key, proposal, env_line = await leader.lines(3)
        assert await leader.wait() == 7, leader.stderr  # the command's status
    # etcdctl's two lines first, then the command's output.
    assert proposal == "node-1"
    env_key, env_rev = env_line.split()
    assert env_key == key and key.startswith(name + "/")
    assert int(env_rev) > 0
    assert await candidates(client, name) == []


async def test_second_leads_right_after_the_first_ends_and_its_command_never_overlaps(
    client: Client, etcd_endpoints: list[str], ns: str, tmp_path: Path
) -> None:
    name = ns + "svc"
    first_pid, second_marker = tmp_path / "first.pid", tmp_path / "second.marker"
    first_cmd = ["sh", "-c", _WRITE_PID_AND_SLEEP, "sh", str(first_pid)]
    second_cmd = ["sh", "-c", _MARK_IF_OTHER_RUNS, "sh", str(second_marker), str(first_pid)]
    try:
        async with elect(etcd_endpoints, name, "a", "--", *first_cmd) as first:
            first_key, _ = await first.lines(2)
            first_child = await read_pid(first_pid)
            # Started once the first leads: it campaigns behind it.
            async with elect(etcd_endpoints, name, "b", "--", *second_cmd) as second:
                queue = await wait_candidates(client, name, 2)
                assert queue[0] == (first_key, "a") and queue[1][1] == "b"
                await second.assert_silent()
                assert marker(second_marker) is None, "the second's command started while the first leads"

                first.send(signal.SIGTERM)
                assert await first.wait() == 128 + signal.SIGTERM, first.stderr
                exited = time.monotonic()
                assert not _pid_alive(first_child)
                assert await second.lines(2, HANDOVER_BUDGET) == [queue[1][0], "b"]
                took = time.monotonic() - exited
                print(f"\nhand-over: the second printed {took * 1000:.0f} ms after the first exited")
                await wait_until(lambda: marker(second_marker) is not None, timeout=LINE_TIMEOUT, what="cmd")
                assert marker(second_marker) == "alone", "the second's command ran with the first's"

                second.send(signal.SIGTERM)
                assert await second.wait() == 128 + signal.SIGTERM, second.stderr
        assert await candidates(client, name) == []
    finally:
        kill_leftover(first_pid)


async def test_lost_leadership_terminates_the_command_and_exits_lost(
    client: Client, etcd_endpoints: list[str], ns: str, tmp_path: Path
) -> None:
    name = ns + "svc"
    pidfile = tmp_path / "command.pid"
    argv = ["--kill-after", "2", "--", "sh", "-c", _WRITE_PID_AND_SLEEP, "sh", str(pidfile)]
    try:
        async with elect(etcd_endpoints, name, "node-1", *argv) as leader:
            key, _ = await leader.lines(2)
            command = await read_pid(pidfile)
            lease = (await client.get(key)).kvs[0].lease
            await client.revoke(lease)
            assert await leader.wait() == EXIT_LOST, leader.stderr
            assert b"leadership lost; command terminated" in leader.stderr
            assert not _pid_alive(command)  # ended before etcdlock exited
        assert await candidates(client, name) == []
    finally:
        kill_leftover(pidfile)


async def test_lost_leadership_without_command_exits_lost(
    client: Client, etcd_endpoints: list[str], ns: str
) -> None:
    name = ns + "svc"
    async with elect(etcd_endpoints, name, "node-1") as leader:
        key, _ = await leader.lines(2)
        await client.revoke((await client.get(key)).kvs[0].lease)
        assert await leader.wait() == EXIT_LOST, leader.stderr
        assert b"Traceback" not in leader.stderr
    assert await candidates(client, name) == []


async def test_timeout_has_the_lock_commands_status_and_withdraws(
    client: Client, etcd_endpoints: list[str], ns: str
) -> None:
    name = ns + "svc"
    async with client.election(name).campaign("holder") as term:
        async with elect(etcd_endpoints, name, "node-2", "--timeout", "0.5", "--", "true") as waiter:
            assert await waiter.wait() == EXIT_TIMEOUT, waiter.stderr
            assert b"not won within --timeout" in waiter.stderr
        assert await candidates(client, name) == [(term.key, "holder")]


async def test_signal_while_campaigning_withdraws_the_candidacy(
    client: Client, etcd_endpoints: list[str], ns: str
) -> None:
    name = ns + "svc"
    async with client.election(name).campaign("holder") as term:
        async with elect(etcd_endpoints, name, "node-2", "--", "true") as waiter:
            await wait_candidates(client, name, 2)
            waiter.send(signal.SIGTERM)
            assert await waiter.wait() == 128 + signal.SIGTERM, waiter.stderr
        assert await candidates(client, name) == [(term.key, "holder")]


async def test_command_that_cannot_start_leaves_nothing(
    client: Client, etcd_endpoints: list[str], ns: str, tmp_path: Path
) -> None:
    name = ns + "svc"
    async with elect(etcd_endpoints, name, "node-1", "--", str(tmp_path / "no-such-command")) as leader:
        assert await leader.wait() == EXIT_CANNOT_RUN, leader.stderr
        assert b"cannot run" in leader.stderr
    assert await candidates(client, name) == []


# ---- --listen --------------------------------------------------------------------------------------------


async def test_listen_prints_each_leader_and_each_proclaimed_value(
    client: Client, etcd_endpoints: list[str], ns: str
) -> None:
    name = ns + "svc"
    election = client.election(name)
    first, second = election.campaign("first"), election.campaign("third")
    campaigning: asyncio.Task[bool] | None = None
    async with elect(etcd_endpoints, "--listen", name) as listener:
        await listener.assert_silent()  # no leader yet: nothing to print
        try:
            async with first:
                assert await listener.lines(2) == [first.key, "first"]
                await first.proclaim("second")
                assert await listener.lines(2) == [first.key, "second"]
                campaigning = asyncio.create_task(second.acquire())
                await wait_candidates(client, name, 2)
                await listener.assert_silent()  # a candidate queued behind the leader is no new leader
            # The first resigned: the queued one leads.
            assert await campaigning
            assert await listener.lines(2) == [second.key, "third"]
        finally:
            if campaigning is not None:
                campaigning.cancel()
                await asyncio.gather(campaigning, return_exceptions=True)
            await second.resign()
        listener.send(signal.SIGTERM)
        assert await listener.wait() == 0, listener.stderr
    assert await candidates(client, name) == []


async def test_listen_with_sigint_exits_zero(client: Client, etcd_endpoints: list[str], ns: str) -> None:
    async with (
        client.election(ns + "svc").campaign("leader") as term,
        elect(etcd_endpoints, "-l", ns + "svc") as listener,
    ):
        # Printed: it is past start-up, its signal handlers are in place.
        assert await listener.lines(2) == [term.key, "leader"]
        listener.send(signal.SIGINT)
        assert await listener.wait() == 0, listener.stderr


# ---- interop with etcdctl elect --------------------------------------------------------------------------


async def test_we_win_right_after_the_etcdctl_leader_exits(
    client: Client, etcd_endpoints: list[str], ns: str
) -> None:
    name = ns + "svc"
    async with etcdctl_elect(etcd_endpoints, name, "go-1") as theirs:
        their_key, their_proposal = await theirs.lines(2)
        assert their_proposal == "go-1"
        async with elect(etcd_endpoints, name, "py-2") as ours:
            queue = await wait_candidates(client, name, 2)
            assert queue[0] == (their_key, "go-1")
            assert queue[1][1] == "py-2"
            await ours.assert_silent()

            theirs.send(signal.SIGINT)
            assert await theirs.wait() == 0, theirs.stderr
            exited = time.monotonic()
            assert await ours.lines(2, HANDOVER_BUDGET) == [queue[1][0], "py-2"]
            took = time.monotonic() - exited
            print(f"\netcdctl -> etcdlock elect: {took * 1000:.0f} ms after etcdctl exited")

            ours.send(signal.SIGTERM)
            assert await ours.wait() == 0, ours.stderr
    assert await candidates(client, name) == []


async def test_etcdctl_wins_right_after_we_resign(client: Client, etcd_endpoints: list[str], ns: str) -> None:
    name = ns + "svc"
    async with elect(etcd_endpoints, name, "py-1") as ours:
        our_key, _ = await ours.lines(2)
        async with etcdctl_elect(etcd_endpoints, name, "go-2") as theirs:
            queue = await wait_candidates(client, name, 2)
            assert queue[0] == (our_key, "py-1")
            await theirs.assert_silent()

            ours.send(signal.SIGTERM)
            assert await ours.wait() == 0, ours.stderr
            # Go waits from a past revision, answered on etcd's 100 ms sync tick: still well in budget.
            assert await theirs.lines(2, HANDOVER_BUDGET) == [queue[1][0], "go-2"]
            theirs.send(signal.SIGINT)
            assert await theirs.wait() == 0, theirs.stderr
    assert await candidates(client, name) == []


async def test_listeners_of_both_print_the_same_leaders(
    client: Client, etcd_endpoints: list[str], ns: str
) -> None:
    """etcdctl elect -l prints our leader's proposal, our --listen prints etcdctl's: the same bytes."""
    name = ns + "svc"
    async with (
        elect(etcd_endpoints, "--listen", name) as our_listener,
        etcdctl_elect(etcd_endpoints, "-l", name) as their_listener,
    ):
        async with elect(etcd_endpoints, name, "py-1") as ours:
            our_key, _ = await ours.lines(2)
            for listener in (our_listener, their_listener):
                assert await listener.lines(2) == [our_key, "py-1"]
            ours.send(signal.SIGTERM)
            assert await ours.wait() == 0, ours.stderr
        async with etcdctl_elect(etcd_endpoints, name, "go-2") as theirs:
            their_key, _ = await theirs.lines(2)
            for listener in (our_listener, their_listener):
                assert await listener.lines(2) == [their_key, "go-2"]
            theirs.send(signal.SIGINT)
            assert await theirs.wait() == 0, theirs.stderr
        our_listener.send(signal.SIGTERM)
        assert await our_listener.wait() == 0, our_listener.stderr
        their_listener.send(signal.SIGINT)
        assert await their_listener.wait() == 0, their_listener.stderr
    assert await candidates(client, name) == []


# ---- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        pytest.param(["", "p"], EXIT_ERROR, "election name must not be empty", id="empty-name"),
        pytest.param(["svc/", "p"], EXIT_ERROR, "must not end with '/'", id="name-ending-in-slash"),
        pytest.param(["--listen", ""], EXIT_ERROR, "election name must not be empty", id="listen-empty-name"),
        pytest.param(["svc"], EXIT_USAGE, "PROPOSAL is required", id="no-proposal"),
        pytest.param(["-l", "svc", "p"], EXIT_USAGE, "--listen takes no PROPOSAL", id="listen-with-proposal"),
        pytest.param(
            ["-l", "svc", "--", "true"], EXIT_USAGE, "--listen runs no command", id="listen-with-cmd"
        ),
    ],
)
def test_bad_input_is_a_clear_error_before_connecting(args: list[str], status: int, message: str) -> None:
    # Nothing listens at this endpoint: the error must be the input's, found before any connection.
    r = run_cli("elect", *args, endpoints=["127.0.0.1:1"])
    assert r.returncode == status, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_ttl_is_an_error_and_runs_nothing(etcd_endpoints: list[str], ns: str) -> None:
    r = run_cli("elect", ns + "svc", "p", "--ttl", "0", "--", "echo", "command-ran", endpoints=etcd_endpoints)
    assert r.returncode == EXIT_ERROR, r.stderr
    assert "command-ran" not in r.stdout
    assert "TTL" in r.stderr and "Traceback" not in r.stderr
