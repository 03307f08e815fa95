"""`etcdlock` entry point: parses the command line and dispatches to one module per command."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

import etcdlock
from etcdlock._cli import demo, elect_cmd, local_etcd, lock_cmd, soak_cmd, status_cmd

DESCRIPTION = """\
Distributed locks on etcd from the shell: run a command holding a lock or while
leading an election, see who holds and who waits, and check that a long-running
client leaks nothing."""

EPILOG = """\
The commands that connect to etcd (lock, elect, status, soak, demo) take
etcdctl's connection flags and read the same environment variables:
ETCDCTL_ENDPOINTS, ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY,
ETCDCTL_INSECURE_TRANSPORT, ETCDCTL_USER (USER or USER:PASSWORD) and
ETCDCTL_PASSWORD. A flag wins over its variable; a password given nowhere is
asked for on the terminal.

Run 'etcdlock COMMAND --help' for a command's options."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etcdlock",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"etcdlock {etcdlock.__version__}")
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    for module in (lock_cmd, elect_cmd, status_cmd, soak_cmd, demo, local_etcd):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Everything after the first "--" is a command to run (etcdlock lock NAME [options] -- CMD ...); split it
    # off before argparse, whose REMAINDER would also swallow options given after NAME.
    words = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, command = words[:cut], words[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(words)
    if command and not getattr(args, "takes_command", False):
        parser.error(f"only 'lock' and 'elect' run a command after '--' (got {' '.join(command)!r})")
    args.command = command
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:  # Ctrl-C at a password prompt, or before a command set its own handlers
        print(file=sys.stderr)
        return 128 + signal.SIGINT
    return code


if __name__ == "__main__":
    sys.exit(main())
