"""A fenced resource: the thing a lock protects, which accepts a write only with a fencing token at least
as high as the highest it has accepted for that lock name.

Locks alone cannot give mutual exclusion (a paused holder acts after its lease is gone); a resource that
checks tokens can. It lives in the checker process, outside etcd, so etcd faults do not touch it, and it
logs every write it is offered so the checker can verify its decisions independently.

Protocol, one line per request over TCP:  "W <name> <token> <worker> <seq>\n"
answered "OK\n" or "STALE <highest>\n".
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Write:
    at: float  # time.monotonic() at receipt (CLOCK_MONOTONIC: one clock for every process on the host)
    name: str
    token: int
    worker: str
    seq: int
    accepted: bool


class FencedResource:
    """A TCP server on loopback, run by one owned thread with its own event loop."""

    def __init__(self, *, enforce: bool = True) -> None:
        # enforce=False turns fencing off: only for proving that the checker notices stale writes.
        self.enforce = enforce
        self.writes: list[Write] = []
        self._highest: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._stopping = asyncio.Event()  # bound to the server's loop on first use, in its thread
        self._error: BaseException | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FencedResource:
        self._thread = threading.Thread(target=self._run, name="etcdlock-fenced-resource", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"fenced resource did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopping.wait()
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while line := await reader.readline():
                writer.write(self._decide(line.decode()).encode())
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _decide(self, line: str) -> str:
        try:
            op, name, token_s, worker, seq_s = line.split()
            token, seq = int(token_s), int(seq_s)
            if op != "W":
                raise ValueError(op)
        except ValueError:
            return "ERR bad request\n"
        with self._lock:
            highest = self._highest.get(name, 0)
            accepted = token >= highest or not self.enforce
            if accepted:
                self._highest[name] = max(highest, token)
            self.writes.append(Write(time.monotonic(), name, token, worker, seq, accepted))
        return "OK\n" if accepted else f"STALE {highest}\n"

    def snapshot(self) -> list[Write]:
        with self._lock:
            return list(self.writes)

    def close(self) -> None:
        """Stop serving and join the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._stopping.set)
            thread.join(10)
        self._thread = None

    def __enter__(self) -> FencedResource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def stale_accepted(writes: list[Write]) -> list[Write]:
    """Accepted writes whose token is below one accepted earlier for the same name: what fencing forbids.

    Recomputed from the log, not taken from the resource's own bookkeeping."""
    highest: dict[str, int] = {}
    bad = []
    for w in writes:
        if not w.accepted:
            continue
        if w.token < highest.get(w.name, 0):
            bad.append(w)
        highest[w.name] = max(highest.get(w.name, 0), w.token)
    return bad
