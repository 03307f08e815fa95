"""`etcdlock lock NAME [-- CMD [ARGS...]]`: hold a lock (interoperable with `etcdctl lock`) or run a
command holding it, which never outlives the lock. DESCRIPTION, the help text, tells the user how."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable
from typing import Any

from etcdlock._cli.common import EXIT_ERROR as EXIT_ERROR  # one of lock's exit statuses, shared by all
from etcdlock._cli.common import (
    Connection,
    add_connection_options,
    connection_from,
    report_error,
)
from etcdlock._core.errors import ConfigError, EtcdError
from etcdlock._procutil import die_with_parent_preexec, group_running, signal_group
from etcdlock._recipes.errors import LockLost, LockTimeout
from etcdlock._recipes.lock import Lock

EXIT_TIMEOUT = 3  # the lock was not acquired within --timeout
EXIT_LOST = 4  # the lock was lost while held (the command, if any, was terminated)
EXIT_CANNOT_RUN = 127  # the command could not be started (as a shell reports a command not found)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

DESCRIPTION = """\
Hold the lock NAME, or run a command holding it. The lock is the one
`etcdctl lock NAME` takes: both queue on the same keys and exclude each other.

Without a command, etcdlock prints the lock's key once it holds the lock and
holds it until SIGINT, SIGTERM, SIGHUP or SIGQUIT (then exits 0). With a
command after --, it runs the command holding the lock, with ETCD_LOCK_KEY
and ETCD_LOCK_REV in its environment (as etcdctl sets them), and exits with
the command's status.

The command never outlives the lock:
  * It runs in a session and process group of its own, without a controlling
    terminal: Ctrl-C reaches etcdlock, which stops it. When the lock is lost,
    or etcdlock gets one of those signals, the whole group gets SIGTERM, then
    SIGKILL after --kill-after seconds, and the lock is released only once no
    process of the group runs. Whatever the command leaves running in its
    group when it exits is ended the same way.
  * On Linux it dies at once if etcdlock is killed with SIGKILL (its own
    children cannot be reached then: the lock's key stays until the lease's
    TTL runs out).
A signal while still waiting for the lock withdraws the request: no key is
left behind.
"""

_EXIT_STATUS_HELP = f"""exit status:
  N      the command's own; 128+N if signal N killed it
  128+N  etcdlock got stop signal N while waiting or running the command
         (130 SIGINT, 143 SIGTERM, 129 SIGHUP, 131 SIGQUIT); 0 when holding
         without a command
  {EXIT_TIMEOUT}      the lock was not acquired within --timeout
  {EXIT_LOST}      the lock was lost (the command was terminated)
  {EXIT_ERROR}      error: etcd unreachable, auth failed, bad input
  {EXIT_CANNOT_RUN}    the command could not be started
"""

_GROUP_POLL = 0.02  # seconds between checks that the command's group has ended
_AFTER_SIGKILL_WAIT = 2.0  # how long to wait for the group to vanish after SIGKILL (it cannot refuse)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "lock",
        help="hold a lock, or run a command holding it",
        usage="%(prog)s [options] NAME [-- CMD [ARGS...]]",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EXIT_STATUS_HELP,
    )
    p.add_argument("name", metavar="NAME", help="lock name (the name etcdctl lock takes)")
    p.add_argument(
        "--ttl",
        type=int,
        default=10,
        metavar="SECONDS",
        help="lease TTL in seconds: how long the lock outlives an etcdlock that vanished (default 10)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up (exit 3) when the lock is not acquired within this time (default: wait)",
    )
    p.add_argument(
        "--kill-after",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="SIGKILL the command's process group this long after SIGTERM (default 5)",
    )
    add_connection_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        conn = connection_from(args)  # may ask for a password: before any signal handler is set
    except ConfigError as e:
        return report_error(e, None)
    return asyncio.run(_run(args, conn, args.command))


class _StopSignals:
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


async def _run(args: argparse.Namespace, conn: Connection, command: list[str]) -> int:
    # Before connecting: from here on no stop signal can kill etcdlock behind the lock's back.
    stop = _StopSignals(asyncio.get_running_loop())
    try:
        async with conn.client() as client:
            lock = client.lock(args.name, ttl=args.ttl, timeout=args.timeout)
            held = await _acquire_unless_stopped(lock, stop)
            if held is None:
                return stop.exit_status
            try:
                if command:
                    return await _run_command(held, stop, command, args.kill_after)
                return await _hold(held, stop)
            finally:
                await held.release()
    except LockTimeout as e:
        print(f"etcdlock: {e}", file=sys.stderr)
        return EXIT_TIMEOUT
    except LockLost as e:
        print(f"etcdlock: {e}", file=sys.stderr)
        return EXIT_LOST
    except (EtcdError, ConfigError) as e:
        return report_error(e, conn)


async def _acquire_unless_stopped(lock: Lock, stop: _StopSignals) -> Lock | None:
    """The lock once acquired; None if a stop signal came first (the request withdrawn, no key left).
    Raises LockTimeout after the lock's timeout."""
    acquire = asyncio.ensure_future(lock.acquire())
    await _first(asyncio.shield(acquire), stop.wait())
    if not stop.event.is_set():
        if not await acquire:  # or its error (etcd down ...)
            raise LockTimeout(f"lock {lock.name!r} not acquired within --timeout; nothing was left behind")
        return lock
    acquire.cancel()  # a cancelled acquire deletes its own key
    (outcome,) = await asyncio.gather(acquire, return_exceptions=True)
    if outcome is True:  # the grant and the signal crossed: give the lock straight back
        await lock.release()
    return None


async def _hold(held: Lock, stop: _StopSignals) -> int:
    print(held.key, flush=True)
    await _first(held.lost.wait(), stop.wait())
    if held.lost.is_set():
        print(f"etcdlock: {held.lost_reason}", file=sys.stderr)
        return EXIT_LOST
    return 0


async def _first(*aws: Awaitable[Any]) -> None:
    """Wait until one of aws is done, then cancel (and reap) the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _run_command(held: Lock, stop: _StopSignals, command: list[str], kill_after: float) -> int:
    try:
        proc = await _start_command(command, held)
    except OSError as e:
        print(f"etcdlock: cannot run {command[0]!r}: {e.strerror}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    await _first(proc.wait(), held.lost.wait(), stop.wait())
    # Lost, stopped or done: nothing of the command may go on once the caller releases the lock.
    ended_on_its_own = proc.returncode is not None
    returncode = await _end_group(proc, kill_after)
    if ended_on_its_own:
        return _shell_status(returncode)
    if held.lost.is_set():
        print("etcdlock: lock lost; command terminated", file=sys.stderr)
        return EXIT_LOST
    return stop.exit_status


async def _start_command(command: list[str], held: Lock) -> asyncio.subprocess.Process:
    """Start the command as the leader of a new session and process group, to die with etcdlock.

    A new session, not only a new group: a background group of our terminal would be stopped (SIGTTIN) when
    it reads the terminal; with no controlling terminal it reads its inherited stdin freely. The fork
    happens in this (the main) thread, which lives as long as etcdlock: the parent-death signal fires when
    the forking thread exits.
    """
    env = {**os.environ, "ETCD_LOCK_KEY": held.key, "ETCD_LOCK_REV": str(held.token)}
    return await asyncio.create_subprocess_exec(
        *command, env=env, start_new_session=True, preexec_fn=die_with_parent_preexec()
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
