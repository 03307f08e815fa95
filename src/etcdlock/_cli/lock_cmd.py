"""`etcdlock lock NAME [-- CMD [ARGS...]]`: hold a lock (interoperable with `etcdctl lock`) or run a
command holding it, which never outlives the lock. DESCRIPTION, the help text, tells the user how."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from etcdlock._cli.common import EXIT_ERROR as EXIT_ERROR  # one of lock's exit statuses, shared by all
from etcdlock._cli.common import add_connection_options, connection_from, report_error
from etcdlock._cli.holding import EXIT_CANNOT_RUN as EXIT_CANNOT_RUN
from etcdlock._cli.holding import EXIT_LOST as EXIT_LOST
from etcdlock._cli.holding import EXIT_TIMEOUT as EXIT_TIMEOUT
from etcdlock._cli.holding import Hold, add_hold_options, exit_status_help, run_holding
from etcdlock._core.errors import ConfigError
from etcdlock._recipes.lock import Lock

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


def register(sub: Any) -> None:
    p = sub.add_parser(
        "lock",
        help="hold a lock, or run a command holding it",
        usage="%(prog)s [options] NAME [-- CMD [ARGS...]]",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=exit_status_help("the lock"),
    )
    p.add_argument("name", metavar="NAME", help="lock name (the name etcdctl lock takes)")
    add_hold_options(p, "the lock")
    add_connection_options(p)
    p.set_defaults(run=run, takes_command=True)


def run(args: argparse.Namespace) -> int:
    try:
        conn = connection_from(args)  # may ask for a password: before any signal handler is set
    except ConfigError as e:
        return report_error(e, None)
    hold = Hold(
        make=lambda client: client.lock(args.name, ttl=args.ttl, timeout=args.timeout),
        not_acquired=f"lock {args.name!r} not acquired within --timeout; nothing was left behind",
        lost="lock lost",
        environment=_environment,
        announce=_announce,
    )
    return asyncio.run(run_holding(hold, conn, args.command, args.kill_after))


def _environment(held: Lock) -> dict[str, str]:
    return {"ETCD_LOCK_KEY": held.key, "ETCD_LOCK_REV": str(held.token)}  # as etcdctl lock sets them


def _announce(held: Lock) -> None:
    print(held.key, flush=True)
