"""`etcdlock lock NAME [-- CMD ...]`: hold a lock (interoperable with `etcdctl lock`) or run a command.

Without a command it prints the lock key and holds the lock until SIGINT/SIGTERM. With a command it runs it
holding the lock, with ETCD_LOCK_KEY and ETCD_LOCK_REV in its environment (as etcdctl sets them); if the
lock is lost the command is terminated (SIGTERM, then SIGKILL after --kill-after seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from etcdlock.cli.common import given_endpoints
from etcdlock.client import Client
from etcdlock.core.errors import ConfigError, EtcdError
from etcdlock.recipes.errors import LockLost, LockTimeout

EXIT_TIMEOUT = 3  # the lock was not acquired within --timeout
EXIT_LOST = 4  # the lock was lost while held (the command, if any, was terminated)
EXIT_ERROR = 5  # etcd unreachable, auth failed, bad input ...


def register(sub: Any) -> None:
    p = sub.add_parser(
        "lock",
        help="hold a lock, or run a command holding it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"exit status: {EXIT_TIMEOUT} timeout, {EXIT_LOST} lock lost, {EXIT_ERROR} error; "
        "otherwise the command's own",
    )
    p.add_argument("name", help="lock name (the same name etcdctl lock uses)")
    p.add_argument("--ttl", type=int, default=10, help="session lease TTL in seconds (default 10)")
    p.add_argument(
        "--timeout", type=float, default=None, help="give up after this many seconds (default: wait)"
    )
    p.add_argument(
        "--kill-after", type=float, default=5.0, help="SIGKILL the command this long after SIGTERM"
    )
    p.add_argument("--endpoints", default=None, help="comma-separated host:port (default $ETCDCTL_ENDPOINTS)")
    p.add_argument("--user", default=None)
    p.add_argument("--password", default=None)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args, args.command))
    except KeyboardInterrupt:
        return 130


async def _run(args: argparse.Namespace, command: list[str]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Client(given_endpoints(args), username=args.user, password=args.password) as client:
            acquire = asyncio.ensure_future(
                client.lock(args.name, ttl=args.ttl, timeout=args.timeout).acquire()
            )
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([acquire, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not acquire.done():
                acquire.cancel()  # interrupted while waiting: the acquire cleans up after itself
                with contextlib.suppress(BaseException):
                    await acquire
                return 130
            stopping.cancel()
            held = acquire.result()
            try:
                if command:
                    return await _run_command(held.key, held.token, held.lost, stop, command, args.kill_after)
                print(held.key, flush=True)
                await _first(held.lost.wait(), stop.wait())
                if held.lost.is_set():
                    print(f"etcdlock: {held.lost_reason}", file=sys.stderr)
                    return EXIT_LOST
                return 0
            finally:
                await held.release()
    except LockTimeout as e:
        print(f"etcdlock: {e}", file=sys.stderr)
        return EXIT_TIMEOUT
    except LockLost as e:
        print(f"etcdlock: {e}", file=sys.stderr)
        return EXIT_LOST
    except (EtcdError, ConfigError) as e:
        print(f"etcdlock: {e}", file=sys.stderr)
        return EXIT_ERROR


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _run_command(
    key: str, token: int, lost: asyncio.Event, stop: asyncio.Event, command: list[str], kill_after: float
) -> int:
    env = {**os.environ, "ETCD_LOCK_KEY": key, "ETCD_LOCK_REV": str(token)}
    try:
        proc = await asyncio.create_subprocess_exec(*command, env=env)
    except OSError as e:
        print(f"etcdlock: cannot run {command[0]!r}: {e.strerror}", file=sys.stderr)
        return 127
    await _first(proc.wait(), lost.wait(), stop.wait())
    if proc.returncode is not None:
        return proc.returncode
    # Lost the lock, or told to stop: the command must not go on without the lock.
    proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(kill_after):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
    if lost.is_set():
        print("etcdlock: lock lost; command terminated", file=sys.stderr)
        return EXIT_LOST
    return 128 + signal.SIGTERM
