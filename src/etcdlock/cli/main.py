"""`etcdlock` entry point: parses the command line and dispatches to one module per command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from etcdlock.cli import demo, local_etcd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="etcdlock", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (demo, local_etcd):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
