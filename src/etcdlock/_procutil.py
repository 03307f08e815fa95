"""Child-process helpers shared by the CLI and :mod:`etcdlock.testing` (stdlib only, private).

* :func:`die_with_parent_preexec`: a ``preexec_fn`` that gives the child ``prctl(PR_SET_PDEATHSIG, SIGKILL)``
  (Linux), so that the child dies even when its parent is SIGKILLed.
* :func:`signal_group` and :func:`group_running`: signal a process group; does any of it still run?
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    fn: Callable[..., int] = prctl
    return fn


# Resolved once in the parent: the child only calls an already-prepared function pointer.
_PRCTL = _load_prctl()


def die_with_parent_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child get SIGKILL when this process dies; None where prctl is missing.

    Make it in the process that spawns (it records that process's PID). The kernel sends the signal when the
    *thread* that forked the child exits, so fork from a thread that lives as long as the process.
    """
    prctl = _PRCTL
    if prctl is None:
        return None
    parent_pid = os.getpid()
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:  # runs in the forked child, before exec
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if os.getppid() != parent_pid:
            # The parent died between fork() and prctl(): the signal will never come.
            os._exit(1)

    return preexec


def signal_group(pgid: int, sig: int) -> None:
    """Send sig to every process of group pgid; an empty group, or members we may not signal, are no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_running(pgid: int) -> bool:
    """Whether a process of group pgid still runs. Zombies do not count: they are dead, only not yet reaped,
    and an orphan's reaper (PID 1, in a container) may be slow to do it."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member we may not signal (it changed user) is still a member
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return True  # no /proc: trust killpg, zombies and all
    return any(_running_in_group(pid, pgid) for pid in pids)


def _running_in_group(pid: int, pgid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
    except OSError:
        return False  # gone meanwhile
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so cut at the last ")".
    state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
    return int(pgrp) == pgid and state not in ("Z", "X")
