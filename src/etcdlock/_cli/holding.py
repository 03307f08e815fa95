"""What `etcdlock lock` and `etcdlock elect` share: hold something in etcd (a lock, a term as leader) until a
stop signal, or run a command only while it is held, never letting the command outlive the hold.

A command describes what it holds with a Hold (how to make the handle, what to print, what to tell the
command); `run_holding` does the rest the same way for every command: connect, wait (withdrawing on a stop
signal), hold or run, release, and the exit statuses below. The options and the exit-status help live here
too, so that the commands cannot drift apart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from etcdlock._cli.common import EXIT_ERROR, Connection, report_error
from etcdlock._client import Client
from etcdlock._core.errors import ConfigError, EtcdError
from etcdlock._procutil import die_with_parent_preexec, group_running, signal_group
from etcdlock._recipes.errors import LockLost, LockTimeout
from etcdlock._recipes.holdable import Holdable

EXIT_TIMEOUT = 3  # not acquired within --timeout
EXIT_LOST = 4  # lost while held (the command, if any, was terminated)
EXIT_CANNOT_RUN = 127  # the command could not be started (as a shell reports a command not found)
EXIT_USAGE = 2  # a malformed command line (argparse's status)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

_GROUP_POLL = 0.02  # seconds between checks that the command's group has ended
_AFTER_SIGKILL_WAIT = 2.0  # how long to wait for the group to vanish after SIGKILL (it cannot refuse)

H = TypeVar("H", bound=Holdable)


def add_hold_options(p: argparse.ArgumentParser, noun: str, *, acquired: str = "acquired") -> None:
    """--ttl, --timeout and --kill-after; noun names what is held ("the lock", "leadership"), and acquired
    how it is had ("won")."""
    p.add_argument(
        "--ttl",
        type=int,
        default=10,
        metavar="SECONDS",
        help=f"lease TTL in seconds: how long {noun} outlives an etcdlock that vanished (default 10)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"give up (exit {EXIT_TIMEOUT}) when {noun} is not {acquired} within this time (default: wait)",
    )
    p.add_argument(
        "--kill-after",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="SIGKILL the command's process group this long after SIGTERM (default 5)",
    )


def exit_status_help(noun: str, *, acquired: str = "acquired") -> str:
    """The epilog listing the exit statuses of a command that holds `noun` ("the lock", "leadership")."""
    return f"""exit status:
  N      the command's own; 128+N if signal N killed it
  128+N  etcdlock got stop signal N while waiting or running the command
         (130 SIGINT, 143 SIGTERM, 129 SIGHUP, 131 SIGQUIT); 0 when holding
         without a command
  {EXIT_USAGE}      the command line is malformed
  {EXIT_TIMEOUT}      {noun} was not {acquired} within --timeout
  {EXIT_LOST}      {noun} was lost (the command was terminated)
  {EXIT_ERROR}      error: etcd unreachable, auth failed, bad input
  {EXIT_CANNOT_RUN}    the command could not be started
"""


@dataclass(frozen=True)
class Hold(Generic[H]):
    """What a command holds, and how it speaks of it."""

    make: Callable[[Client], H]
    """The handle (not acquired yet), with the TTL and timeout of the command line."""
    not_acquired: str
    """The error printed after --timeout."""
    lost: str
    """The error printed when the hold is lost while the command runs ("lock lost")."""
    environment: Callable[[H], Mapping[str, str]]
    """Variables added to the command's environment once held."""
    announce: Callable[[H], None]
    """Prints that it is held: without a command, or before it with announce_with_command."""
    announce_with_command: bool = False


class StopSignals:
    """Turns SIGINT/SIGTERM/SIGHUP/SIGQUIT into an event, remembering the first (it sets the exit status)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.event = asyncio.Event()
        self.signum: int | None = None
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._received, sig)

    def _received(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
        self.event.set()

    async def wait(self) -> None:
        await self.event.wait()

    @property
    def exit_status(self) -> int:
        """128+N for signal N, as a shell reports a process killed by N."""
        return 128 + (self.signum if self.signum is not None else signal.SIGTERM)


async def first(*aws: Awaitable[Any]) -> None:
    """Wait until one of aws is done, then cancel (and reap) the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_holding(hold: Hold[H], conn: Connection, command: list[str], kill_after: float) -> int:
    """Hold until a stop signal, or run `command` holding; the process's exit status."""
    # Before connecting: from here on no stop signal can kill etcdlock behind the hold's back.
    stop = StopSignals(asyncio.get_running_loop())
    try:
        async with conn.client() as client:
            handle = hold.make(client)
            if not await _acquire_unless_stopped(handle, hold, stop):
                return stop.exit_status
            try:
                if command:
                    if hold.announce_with_command:
                        hold.announce(handle)
                    return await _run_command(handle, hold, stop, command, kill_after)
                hold.announce(handle)
                return await _hold(handle, stop)
            finally:
                await handle.release()
    except LockTimeout as e:
        print(f"etcdlock: {e}", file=sys.stderr)
        return EXIT_TIMEOUT
    except LockLost as e:
        print(f"etcdlock: {e}", file=sys.stderr)
        return EXIT_LOST
    except (EtcdError, ConfigError) as e:
        return report_error(e, conn)


async def _acquire_unless_stopped(handle: H, hold: Hold[H], stop: StopSignals) -> bool:
    """True once acquired; False if a stop signal came first (the request withdrawn, no key left).
    Raises LockTimeout after the handle's timeout."""
    acquire = asyncio.ensure_future(handle.acquire())
    await first(asyncio.shield(acquire), stop.wait())
    if not stop.event.is_set():
        if not await acquire:  # or its error (etcd down ...)
            raise LockTimeout(hold.not_acquired)
        return True
    acquire.cancel()  # a cancelled acquire deletes its own key
    (outcome,) = await asyncio.gather(acquire, return_exceptions=True)
    if outcome is True:  # the grant and the signal crossed: give it straight back
        await handle.release()
    return False


async def _hold(held: Holdable, stop: StopSignals) -> int:
    await first(held.lost.wait(), stop.wait())
    if held.lost.is_set():
        print(f"etcdlock: {held.lost_reason}", file=sys.stderr)
        return EXIT_LOST
    return 0


async def _run_command(
    held: H, hold: Hold[H], stop: StopSignals, command: list[str], kill_after: float
) -> int:
    try:
        proc = await _start_command(command, hold.environment(held))
    except OSError as e:
        print(f"etcdlock: cannot run {command[0]!r}: {e.strerror}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    await first(proc.wait(), held.lost.wait(), stop.wait())
    # Lost, stopped or done: nothing of the command may go on once the caller releases the hold.
    ended_on_its_own = proc.returncode is not None
    returncode = await _end_group(proc, kill_after)
    if ended_on_its_own:
        return _shell_status(returncode)
    if held.lost.is_set():
        print(f"etcdlock: {hold.lost}; command terminated", file=sys.stderr)
        return EXIT_LOST
    return stop.exit_status


async def _start_command(command: list[str], extra_env: Mapping[str, str]) -> asyncio.subprocess.Process:
    """Start the command as the leader of a new session and process group, to die with etcdlock.

    A new session, not only a new group: a background group of our terminal would be stopped (SIGTTIN) when
    it reads the terminal; with no controlling terminal it reads its inherited stdin freely. The fork
    happens in this (the main) thread, which lives as long as etcdlock: the parent-death signal fires when
    the forking thread exits.
    """
    return await asyncio.create_subprocess_exec(
        *command,
        env={**os.environ, **extra_env},
        start_new_session=True,
        preexec_fn=die_with_parent_preexec(),
    )


async def _end_group(proc: asyncio.subprocess.Process, kill_after: float) -> int:
    """End every process of the command's group: SIGTERM, then SIGKILL to what still runs after kill_after.
    Returns the command's returncode once it is reaped and (short of an unkillable process) no member runs."""
    # The command leads the group. Its PGID cannot name another group while a member, or the unreaped
    # command, is left; once the group is empty, killpg finds no one.
    pgid = proc.pid
    if group_running(pgid):
        signal_group(pgid, signal.SIGTERM)
        signal_group(pgid, signal.SIGCONT)  # a stopped member would only act on SIGTERM once continued
        if not await _group_ended(pgid, kill_after):
            signal_group(pgid, signal.SIGKILL)
            await _group_ended(pgid, _AFTER_SIGKILL_WAIT)
    return await proc.wait()


async def _group_ended(pgid: int, timeout: float) -> bool:
    """Whether no process of group pgid runs any more, polling for up to timeout seconds."""
    # Polling: the kernel has no way to wait for a process group; checks are cheap and stops are rare.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while group_running(pgid):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_GROUP_POLL)
    return True


def _shell_status(returncode: int) -> int:
    """The exit status a shell reports: the code, or 128+N when signal N killed it (Python says -N)."""
    return 128 - returncode if returncode < 0 else returncode
