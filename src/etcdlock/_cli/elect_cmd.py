"""`etcdlock elect NAME PROPOSAL [-- CMD [ARGS...]]` and `etcdlock elect --listen NAME`: lead an election
(interoperable with `etcdctl elect`) or run a command while leader, which never outlives leadership; or
follow the election's leaders. Campaigning is holding.py's machinery, the same as `etcdlock lock`'s."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

from etcdlock._cli.common import EXIT_ERROR, Connection, add_connection_options, connection_from, report_error
from etcdlock._cli.holding import Hold, StopSignals, add_hold_options, exit_status_help, first, run_holding
from etcdlock._core.errors import ConfigError, EtcdError
from etcdlock._recipes.election import Election, Term
from etcdlock._recipes.mutex import check_name

DESCRIPTION = """\
Campaign in the election NAME with PROPOSAL, or follow its leaders. The
election is the one `etcdctl elect NAME` runs (Go's concurrency.Election):
both queue on the same keys, and the earliest candidate leads.

Once leader, etcdlock prints its key and PROPOSAL, one a line, as etcdctl
does. Without a command it then leads until SIGINT, SIGTERM, SIGHUP or
SIGQUIT, resigns and exits 0. With a command after --, it runs the command
while leader, with ETCD_ELECTION_KEY and ETCD_ELECTION_REV (the term's
fencing token) in its environment, resigns when it exits and exits with the
command's status.

The command never outlives leadership, as under `etcdlock lock`: it runs in a
session and process group of its own; when leadership is lost (the key
deleted, the lease expired or revoked) or etcdlock gets one of those signals,
the whole group gets SIGTERM, then SIGKILL after --kill-after seconds, and
etcdlock resigns only once no process of the group runs. A signal while
still campaigning withdraws the candidacy: no key is left behind.

With --listen, etcdlock prints the leader's key and proposal, one a line (as
`etcdctl elect -l` does), now and each time another candidate takes over or
the leader proclaims a new value, until SIGINT, SIGTERM, SIGHUP or SIGQUIT
(then exits 0). It waits while there is no leader.
"""

_EXIT_STATUS_HELP = (
    exit_status_help("leadership", acquired="won")
    + f"""
with --listen:
  0      stopped by a signal
  {EXIT_ERROR}      error: etcd unreachable, auth failed, bad input
"""
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "elect",
        help="lead an election, or run a command while leader; or follow its leaders",
        usage="%(prog)s [options] NAME PROPOSAL [-- CMD [ARGS...]]\n       %(prog)s --listen [options] NAME",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EXIT_STATUS_HELP,
    )
    p.add_argument("name", metavar="NAME", help="election name (the name etcdctl elect takes)")
    p.add_argument(
        "proposal", metavar="PROPOSAL", nargs="?", help="the value to lead with (not with --listen)"
    )
    p.add_argument(
        "-l",
        "--listen",
        action="store_true",
        help="print each leader's key and proposal as it changes (observation: no campaign)",
    )
    add_hold_options(p, "leadership", acquired="won")
    add_connection_options(p)
    p.set_defaults(run=run, takes_command=True, usage_error=p.error)


def run(args: argparse.Namespace) -> int:
    if args.listen and args.proposal is not None:
        args.usage_error(f"--listen takes no PROPOSAL (got {args.proposal!r})")
    if args.listen and args.command:
        args.usage_error(f"--listen runs no command (got {' '.join(args.command)!r})")
    if not args.listen and args.proposal is None:
        args.usage_error("PROPOSAL is required to campaign (or give --listen to follow the leaders)")
    try:
        check_name(args.name, "election")  # before connecting: a bad name is the error, not etcd's absence
        conn = connection_from(args)  # may ask for a password: before any signal handler is set
    except ConfigError as e:
        return report_error(e, None)
    if args.listen:
        return asyncio.run(_listen(args.name, conn))
    hold = Hold(
        make=lambda client: client.election(args.name).campaign(
            args.proposal, ttl=args.ttl, timeout=args.timeout
        ),
        not_acquired=f"election {args.name!r} not won within --timeout; the candidacy was withdrawn, "
        "nothing was left behind",
        lost="leadership lost",
        environment=_environment,
        announce=_announce,
        announce_with_command=True,  # etcdctl prints once elected; the command's output follows
    )
    return asyncio.run(run_holding(hold, conn, args.command, args.kill_after))


def _environment(term: Term) -> dict[str, str]:
    return {"ETCD_ELECTION_KEY": term.key, "ETCD_ELECTION_REV": str(term.token)}


def _announce(term: Term) -> None:
    # etcdctl prints the key and its value as stored: bytes out, as they went in.
    _write(term.key.encode() + b"\n" + term.value + b"\n")


def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


async def _listen(name: str, conn: Connection) -> int:
    stop = StopSignals(asyncio.get_running_loop())
    try:
        async with conn.client() as client:
            printing = asyncio.ensure_future(_print_leaders(client.election(name)))
            await first(printing, stop.wait())
            if stop.event.is_set():
                return 0
            return printing.result()  # the observation's error, if it ended with one
    except BrokenPipeError:
        # The reader went away (`| head -2`): stop quietly, with the status of a process killed by SIGPIPE
        # as a shell reports it; stdout goes to /dev/null so that the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (EtcdError, ConfigError) as e:
        return report_error(e, conn)


async def _print_leaders(election: Election) -> int:
    async for leader in election.observe():
        _write(leader.key.encode() + b"\n" + leader.value + b"\n")
    # observe() ends only when its watch was cancelled, which is not ours to do: say so (etcdctl does too).
    print(f"etcdlock: the observation of election {election.name!r} ended", file=sys.stderr)
    return EXIT_ERROR
