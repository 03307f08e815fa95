"""The skeleton every long-lived bidirectional etcd stream of a client shares (Watch, LeaseKeepAlive).

One runner task keeps one gRPC call open while its owner still needs it: it opens the call (on the leader
or on any member), starts the call's only reader, writes what is due, and waits for the next thing to do.
When the call fails, ends, or its member stops being trusted (it went silent, another call found it dead,
or the owner has its own reasons), the runner drops the call, waits a backoff that grows with consecutive
failures, and opens a new one, on another member if the connection moved on. What a stream sends, what its
replies mean and when its member is no longer trusted are the subclass's; how to stay connected is here.

No read ever has a timeout around it (a cancelled read leaks native memory in grpcio): silence is judged by
the runner from the time of the last reply, and ending a call is `call.cancel()` followed by awaiting the
reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
import grpc.aio

from etcdlock._core.connection import Connection
from etcdlock._core.errors import ClientClosedError
from etcdlock._core.tasks import TaskOwner, backoff
from etcdlock._wire.methods import Method

# Errors a write raises once the call is broken; its reader sees the failure too.
WRITE_ERRORS = (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError)


class StreamEnded(Exception):
    """The server ended a stream its owner still needed."""


class BidiStream:
    """Keeps one bidirectional call of `method` open while `needed()`. Subclasses fill in the hooks."""

    def __init__(
        self,
        conn: Connection,
        tasks: TaskOwner,
        method: Method[Any, Any],
        *,
        leader: bool,
        name: str,
        log: logging.Logger,
    ) -> None:
        self._conn = conn
        self._tasks = tasks
        self._method = method
        self._on_leader = leader
        self._name = name
        self._log = log
        self._wake = asyncio.Event()
        self._abandon = False  # another call found this stream's member unresponsive
        self.endpoint = ""
        self.generations = 0  # calls opened
        self.is_open = False
        self.replies_since_open = 0
        self.last_reply_at = 0.0

    # ---- hooks ----

    def needed(self) -> bool:
        """Whether the stream must stay open; the runner ends once it is not."""
        raise NotImplementedError

    def on_open(self, now: float) -> None:
        """A new call is open (its reader runs): requeue what the last call left unanswered."""

    def on_drop(self) -> None:
        """The call was given up; nothing sent on it will be answered."""

    async def send(self, call: Any, now: float) -> None:
        """Write whatever is due. A broken call raises one of WRITE_ERRORS."""
        raise NotImplementedError

    def on_reply(self, reply: Any) -> None:
        """One reply, on the reader task: must be quick and must not raise."""
        raise NotImplementedError

    def distrust(self, now: float) -> str | None:
        """Why the member is no longer trusted with this stream (it is then left and reported), or None."""
        return None

    def next_check(self, now: float) -> float | None:
        """Seconds until the runner must look again unless woken (None: only when woken)."""
        return None

    def has_work(self) -> bool:
        """Something waits to be written: the runner does not sleep."""
        return False

    # ---- for owners ----

    def wake(self) -> None:
        self._wake.set()

    def endpoint_failed(self, endpoint: str) -> None:
        """Another call found `endpoint` unresponsive: this stream may be as cut off without knowing it (a
        black hole sends no error), so it moves too."""
        if endpoint == self.endpoint:
            self._abandon = True
            self._wake.set()

    # ---- the runner ----

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        call: Any = None
        reader: asyncio.Task[Any] | None = None
        failures = 0
        try:
            while self.needed():
                if call is not None and reader is not None:
                    reason, report = self._why_leave(reader, loop.time())
                    if reason is not None:
                        self._log.info("%s stream at %s %s; moving on", self._name, self.endpoint, reason)
                        if report:
                            self._conn.report_failure(self.endpoint)
                        call, reader = await self._drop(call, reader)
                        failures += 1
                if call is None:
                    if failures:
                        await self._backoff(backoff(failures))
                        if not self.needed():
                            break
                    try:
                        self.endpoint, call = await self._conn.open_stream(
                            self._method, leader=self._on_leader
                        )
                    except ClientClosedError:
                        break
                    except Exception as e:  # auth or connection trouble: retry with backoff
                        self._log.info("cannot open %s stream: %s", self._name, e)
                        failures += 1
                        continue
                    self._abandon = False
                    self.generations += 1
                    self.is_open = True
                    self.replies_since_open = 0
                    self.last_reply_at = loop.time()
                    reader = self._tasks.spawn(self._read(call), f"{self._name}-reader")
                    self.on_open(loop.time())
                try:
                    await self.send(call, loop.time())
                except WRITE_ERRORS as e:
                    # The call is broken and its reader sees that too: wait for it, then start over above.
                    self._log.info("%s stream write failed: %s", self._name, e)
                    if reader is not None:
                        await asyncio.wait([reader])
                    continue
                if self.replies_since_open:
                    failures = 0  # the stream works again: reset the backoff
                await self._pause(self.next_check(loop.time()), reader)
        finally:
            await self._drop(call, reader)

    def _why_leave(self, reader: asyncio.Task[Any], now: float) -> tuple[str | None, bool]:
        """(why the call is given up, whether to report its member to the connection)."""
        if self._abandon:
            return "is on a member another call found unresponsive", False
        if reader.done():
            exc = None if reader.cancelled() else reader.exception()
            detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc or "ended")
            return f"failed ({detail})", True
        reason = self.distrust(now)
        return reason, reason is not None

    async def _drop(self, call: Any, reader: asyncio.Task[Any] | None) -> tuple[None, None]:
        if call is not None:
            call.cancel()
            self.is_open = False
        if reader is not None:
            with contextlib.suppress(BaseException):
                await reader
        if call is not None:
            self.on_drop()
        return None, None

    async def _backoff(self, seconds: float) -> None:
        """Wait the whole backoff before reopening (unlike _pause, which returns at once while work waits,
        and so would spin), unless the stream stops being needed meanwhile."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while self.needed() and (left := until - loop.time()) > 0:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._wake.wait()

    async def _pause(self, seconds: float | None, reader: asyncio.Task[Any] | None) -> None:
        self._wake.clear()
        if self.has_work() or not self.needed() or (reader is not None and reader.done()):
            return
        if seconds is None:
            await self._wake.wait()
        elif seconds > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._wake.wait()

    async def _read(self, call: Any) -> None:
        """The call's only reader. Ends with the call; raises StreamEnded if the server ended it early."""
        loop = asyncio.get_running_loop()
        try:
            async for reply in call:
                self.replies_since_open += 1
                self.last_reply_at = loop.time()
                self.on_reply(reply)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return  # call.cancel() by the runner: a normal end
        finally:
            self._wake.set()
        if self.needed():
            raise StreamEnded("closed by the server")


__all__ = ["WRITE_ERRORS", "BidiStream", "StreamEnded"]
