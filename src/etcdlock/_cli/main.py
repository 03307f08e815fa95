"""`etcdlock` entry point: parses the command line and dispatches to one module per command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from etcdlock._cli import demo, local_etcd, lock_cmd, soak_cmd, status_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="etcdlock", description=__doc__)
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    for module in (lock_cmd, status_cmd, soak_cmd, demo, local_etcd):
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
    args = build_parser().parse_args(words)
    if command and args.command_name != "lock":
        build_parser().error(f"only 'lock' runs a command after '--' (got {' '.join(command)!r})")
    args.command = command
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
