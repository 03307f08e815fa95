"""Spawning child processes that die with us, and killing any still running when we exit.

* Every child gets ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (Linux, through the stdlib-only private
  :mod:`etcdlock._procutil` shared with the CLI), so it dies if the process that spawned it dies, even
  on SIGKILL.  All children are forked from one long-lived internal thread because the kernel
  delivers the "parent death" signal when the *thread* that forked the child exits, not when the
  process does.
* An ``atexit`` hook kills, by their owners, the children still running when the interpreter exits
  normally (see :func:`kill_at_exit`).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import os
import queue
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import IO, Protocol

from etcdlock._procutil import die_with_parent_preexec

__all__ = ["forget_at_exit", "kill_at_exit", "spawn_child"]


class _Spawner:
    """Forks every child (etcd, a test's helpers) from one long-lived daemon thread.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits.  Spawning from
    whatever thread happens to call ``start()`` (a ThreadPoolExecutor worker, an
    ``asyncio.to_thread`` call, ...) would make etcd die as soon as that thread is retired.
    This thread lives until the process exits.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = -1
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[], subprocess.Popen[bytes]], concurrent.futures.Future[subprocess.Popen[bytes]]]
        ] = queue.SimpleQueue()

    def _run(self) -> None:
        while True:
            fn, fut = self._jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def spawn(self, fn: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                # (Re)start after fork(), too: threads do not survive it.
                self._jobs = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run, name="etcdlock-etcd-spawner", daemon=True)
                self._thread.start()
                self._pid = os.getpid()
            fut: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
            self._jobs.put((fn, fut))
        return fut.result()


_SPAWNER = _Spawner()


def spawn_child(
    argv: Sequence[str],
    *,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a helper process (a test's worker, say) that is SIGKILLed if we die: forked from the same
    long-lived thread as etcd, with PR_SET_PDEATHSIG. The caller owns it and stops it by PID."""
    preexec = die_with_parent_preexec()

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            close_fds=True,
            cwd=cwd,
            env=env,
            preexec_fn=preexec,
        )

    return _SPAWNER.spawn(popen)


class _Killable(Protocol):
    def kill(self) -> None: ...


# Owners of a live (unreaped) child process; killed by the atexit hook if still there.
_LIVE: set[_Killable] = set()
_LIVE_LOCK = threading.Lock()


def kill_at_exit(owner: _Killable) -> None:
    """Have ``owner.kill()`` called when the interpreter exits, unless :func:`forget_at_exit` comes first."""
    with _LIVE_LOCK:
        _LIVE.add(owner)


def forget_at_exit(owner: _Killable) -> None:
    """Undo :func:`kill_at_exit` (the owner's child has exited and been reaped)."""
    with _LIVE_LOCK:
        _LIVE.discard(owner)


@atexit.register
def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        owners = list(_LIVE)
    for owner in owners:
        with contextlib.suppress(Exception):
            owner.kill()
