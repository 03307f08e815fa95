"""Running etcd's own Go recipes (interop/go: Election, contrib/recipes RWMutex) from tests.

* :func:`go_interop_binary` builds ``etcdlock-go-interop`` once per test session with
  ``scripts/build_go_interop.sh`` (offline, from Debian's golang-etcd-server-dev) and returns its path.
* :class:`GoProc` runs one subprocess (a Go subcommand, or any program such as ``etcdctl``), collects its
  stdout lines as they come, lets a test wait for a line with a deadline, and stops it by PID: SIGTERM, then
  SIGKILL if it lingers. Use it through :func:`go_proc` / :func:`spawned` (or try/finally around
  :meth:`GoProc.stop`) so no process outlives its test.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import fcntl
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from etcdlock._procutil import die_with_parent_preexec
from etcdlock.testing import find_etcdctl_binary

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "scripts" / "build_go_interop.sh"
BINARY = ROOT / ".cache" / "go-interop" / "etcdlock-go-interop"
# A cold build compiles etcd's client and gRPC (about half a minute); an apt-get install may come first.
BUILD_TIMEOUT = 900.0
# How long a stopped process gets to resign/unlock and revoke its lease before SIGKILL.
STOP_GRACE = 10.0
STDERR_TAIL_LINES = 40


class GoInteropBuildError(RuntimeError):
    """scripts/build_go_interop.sh failed; the message quotes its output."""


_built: str | None = None
_build_lock = threading.Lock()


def go_interop_binary() -> str:
    """The path of etcdlock-go-interop, built (or found up to date) once per test session.

    The build script itself skips the compile when the binary is newer than main.go; a file lock keeps
    concurrent test processes (pytest-xdist) from building into the same path at once.
    """
    global _built
    with _build_lock:
        if _built is not None:
            return _built
        BINARY.parent.mkdir(parents=True, exist_ok=True)
        with open(BINARY.parent / ".build.lock", "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                result = subprocess.run(
                    ["bash", str(BUILD_SCRIPT), str(BINARY)],
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=BUILD_TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired as e:
                raise GoInteropBuildError(f"{BUILD_SCRIPT} did not finish within {BUILD_TIMEOUT}s") from e
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
        if result.returncode != 0 or not os.access(BINARY, os.X_OK):
            output = (result.stdout + result.stderr).strip().splitlines()[-30:]
            raise GoInteropBuildError(
                f"building the Go interop binary failed (exit {result.returncode}): {BUILD_SCRIPT}\n"
                + "\n".join(output)
            )
        _built = str(BINARY)
        return _built


@dataclasses.dataclass(frozen=True)
class Line:
    text: str
    at: float  # time.monotonic() when the test read it

    def fields(self) -> list[str]:
        return self.text.split()


class GoProc:
    """One child process whose stdout lines are collected as they arrive. stop() is idempotent."""

    def __init__(self, argv: Sequence[str], proc: asyncio.subprocess.Process) -> None:
        self.argv = list(argv)
        self.proc = proc
        self.pid = proc.pid
        self.lines: list[Line] = []
        self.signalled_at: float | None = None  # when stop() first signalled it
        self.exited_at: float | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._changed = asyncio.Condition()
        self._eof = False
        # Both pipes are drained continuously: a child blocked on a full stderr pipe would look like a hang.
        self._readers = [asyncio.create_task(self._read_stdout()), asyncio.create_task(self._read_stderr())]

    @classmethod
    async def spawn(cls, argv: Sequence[str], env: Mapping[str, str] | None = None) -> GoProc:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env) if env is not None else None,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # Dies with the test process even if that is SIGKILLed (forked from the event loop's thread, which
            # lives as long as the tests do).
            preexec_fn=die_with_parent_preexec(),
        )
        return cls(argv, proc)

    @classmethod
    async def start(
        cls, subcommand: str, *args: str, endpoints: Sequence[str], ttl: int | None = None
    ) -> GoProc:
        """Start `etcdlock-go-interop SUBCOMMAND --endpoints ... ARGS`."""
        # Built in a thread: a cold build takes half a minute, and blocking the loop that long would let
        # the test's own leases expire.
        argv = [await asyncio.to_thread(go_interop_binary), subcommand, f"--endpoints={','.join(endpoints)}"]
        if ttl is not None:
            argv.append(f"--ttl={ttl}")
        argv.extend(args)
        # Proxies would divert gRPC to loopback through them.
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        return await cls.spawn(argv, env)

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while raw := await self.proc.stdout.readline():
                async with self._changed:
                    self.lines.append(Line(raw.decode(errors="replace").rstrip("\n"), time.monotonic()))
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self._eof = True
                self._changed.notify_all()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            self._stderr.append(raw.decode(errors="replace").rstrip("\n"))

    def describe(self) -> str:
        """Everything useful in a failure message: command, exit status, output so far."""
        out = "\n".join(f"  | {line.text}" for line in self.lines[-STDERR_TAIL_LINES:]) or "  (none)"
        err = "\n".join(f"  ! {line}" for line in self._stderr) or "  (none)"
        head = f"{' '.join(self.argv)}\n pid={self.pid} rc={self.proc.returncode}"
        return f"{head}\n stdout:\n{out}\n stderr:\n{err}"

    def texts(self, prefix: str = "") -> list[str]:
        return [line.text for line in self.lines if line.text.startswith(prefix)]

    def with_prefix(self, prefix: str) -> list[Line]:
        return [line for line in self.lines if line.text.startswith(prefix)]

    async def wait_line(self, prefix: str, timeout: float = 10.0, *, start: int = 0) -> Line:
        """The first stdout line at index >= start beginning with prefix, waiting up to timeout for it.

        Fails at once (not at the deadline) if the process closes stdout without printing it.
        """
        try:
            async with asyncio.timeout(timeout), self._changed:
                while True:
                    for line in self.lines[start:]:
                        if line.text.startswith(prefix):
                            return line
                    if self._eof:
                        raise AssertionError(f"exited without printing {prefix!r}:\n{self.describe()}")
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {prefix!r} line within {timeout}s:\n{self.describe()}") from None

    async def assert_no_line(self, prefix: str, window: float, *, start: int = 0) -> None:
        """A negative check needs a window: no such line appears, and the process lives, for `window` s."""
        try:
            line = await self.wait_line(prefix, window, start=start)
        except AssertionError:
            # The deadline passed without the line (good), or stdout ended (checked below).
            assert not self._eof, f"exited during the window:\n{self.describe()}"
            return
        raise AssertionError(f"unexpected {line.text!r} within {window}s:\n{self.describe()}")

    async def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit on its own; its exit code. The caller's finally still calls stop()."""
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"still running after {timeout}s:\n{self.describe()}") from None
        await self._finish()
        return rc

    async def stop(self, sig: int = signal.SIGTERM, grace: float = STOP_GRACE) -> int:
        """Signal it by PID (SIGKILL if it has not exited after `grace` s), reap it; its exit code."""
        if self.proc.returncode is None:
            if self.signalled_at is None:
                self.signalled_at = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                await self.proc.wait()
        await self._finish()
        rc = self.proc.returncode
        assert rc is not None
        return rc

    async def _finish(self) -> None:
        if self.exited_at is None:
            self.exited_at = time.monotonic()
        # The pipes close when the process is gone and the readers end on EOF, unless something it started
        # inherited them; then stop reading rather than hang the test.
        _, pending = await asyncio.wait(self._readers, timeout=STOP_GRACE)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


def etcdctl_env() -> dict[str, str]:
    """etcdctl speaks v3 and ignores the caller's ETCDCTL_* settings and proxies (as in test_lock_interop)."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return env


def etcdctl_argv(endpoints: Sequence[str], *args: str) -> list[str]:
    return [find_etcdctl_binary(), f"--endpoints={','.join(endpoints)}", "--dial-timeout=3s", *args]


async def etcdctl(endpoints: Sequence[str], *args: str, timeout: float = 10.0) -> str:
    """Run one etcdctl command to completion; its stdout (AssertionError on failure or timeout)."""
    p = await GoProc.spawn(etcdctl_argv(endpoints, *args), etcdctl_env())
    try:
        rc = await p.wait_exit(timeout)
        assert rc == 0, f"etcdctl failed:\n{p.describe()}"
        return "\n".join(p.texts())
    finally:
        await p.stop()


async def keys_under(endpoints: Sequence[str], prefix: str) -> list[str]:
    """The keys under prefix, in key order."""
    out = await etcdctl(endpoints, "get", prefix, "--prefix", "--keys-only")
    return [line for line in out.splitlines() if line]


@contextlib.asynccontextmanager
async def go_proc(
    subcommand: str, *args: str, endpoints: Sequence[str], ttl: int | None = None
) -> AsyncIterator[GoProc]:
    """A Go subcommand that is stopped (SIGTERM, then SIGKILL) whatever happens in the block."""
    p = await GoProc.start(subcommand, *args, endpoints=endpoints, ttl=ttl)
    try:
        yield p
    finally:
        await p.stop()


@contextlib.asynccontextmanager
async def spawned(argv: Sequence[str], env: Mapping[str, str] | None = None) -> AsyncIterator[GoProc]:
    """Any program (e.g. etcdctl) under the same guarantee as go_proc()."""
    p = await GoProc.spawn(argv, env)
    try:
        yield p
    finally:
        await p.stop()
