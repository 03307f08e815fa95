"""gRPC's C-core logs (TLS handshake failures, ...) stay off the command line's stderr unless asked for.

gRPC reads GRPC_VERBOSITY once, when it is imported, so this must run before anything imports grpc: first
thing in etcdlock/__init__.py. It acts only in the `etcdlock` command (the console script, or
`python -m etcdlock._cli.main`), where every failure is already reported in one clear line; a program
using the library keeps gRPC's defaults. A GRPC_VERBOSITY set by the user is left as it is.
"""

from __future__ import annotations

import os
import sys

_CLI_MODULES = ("etcdlock._cli.main", "etcdlock")


def _is_command_line() -> bool:
    if os.path.basename(sys.argv[0]) == "etcdlock":
        return True  # the console script
    argv = getattr(sys, "orig_argv", [])
    return any(argv[i : i + 2] == ["-m", module] for module in _CLI_MODULES for i in range(len(argv) - 1))


def quiet_grpc_for_the_command_line() -> None:
    if _is_command_line():
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")


__all__ = ["quiet_grpc_for_the_command_line"]
