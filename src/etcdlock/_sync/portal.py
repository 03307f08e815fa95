"""The portal between threads and the event loop the sync API runs its async core on.

One `Portal` owns one event loop, running on a thread of its own. Other threads hand it coroutines with
`call()` and block until they finish; `wrap_iter()` turns an async source of items into a blocking iterator.
The sync wrappers (client, lock, session, watch, keepalive) get the portal and nothing else of each other.

Interruption is part of the contract: if the waiting thread is interrupted (KeyboardInterrupt, an exception
raised by a signal handler) or its `timeout` runs out, the coroutine is cancelled on the loop and its
shielded cleanup runs to the end before the call returns, so an interrupted acquire leaves no key behind.
A coroutine that finished just before the cancel reached it is not lost: a timed-out call returns its
result after all, and an interrupted one hands it to `undo`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Generic, TypeVar

from etcdlock._core import fork
from etcdlock._core.errors import ClientClosedError

T = TypeVar("T")

# How long an interrupted call may take to wind down (its cleanup has its own, shorter, deadline); also how
# long stop() waits for the loop to drain and its thread to end.
CANCEL_GRACE = 10.0

_CLOSED = "the etcdlock SyncClient is closed"


class _Call(Generic[T]):
    """One coroutine run for a waiting thread: its task lives on the loop, `done` is set when it ended."""

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self._task: asyncio.Task[T] | None = None
        self.done = threading.Event()

    def start(self) -> None:  # on the loop
        self._task = asyncio.get_running_loop().create_task(self._coro, name="etcdlock:sync-call")
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[T]) -> None:  # on the loop
        if not task.cancelled():
            # Marks the error as seen: a caller that was interrupted meanwhile never asks for it, and
            # asyncio would log it as "never retrieved". result() still raises it.
            task.exception()
        self.done.set()

    def cancel(self) -> None:  # on the loop, after start() if start() was scheduled at all
        if self._task is None:
            self.discard()  # the caller was interrupted before it could schedule start(): nothing ran
        else:
            self._task.cancel()

    def discard(self) -> None:
        """Give up on a call whose task never started (or never will: the loop stopped)."""
        if self._task is None:
            self._coro.close()
        self.done.set()

    def succeeded(self) -> bool:
        t = self._task
        return t is not None and t.done() and not t.cancelled() and t.exception() is None

    def cancelled(self) -> bool:
        return self._task is not None and self._task.cancelled()

    def result(self) -> T:
        t = self._task
        if t is None or not t.done() or t.cancelled():
            # Never started, or cancelled by stop() draining the loop: the client was closed meanwhile.
            raise ClientClosedError(f"{_CLOSED} (closed while this call was in flight)")
        return t.result()


class Portal:
    """Owns an event loop on a thread of its own and runs coroutines there for other threads."""

    def __init__(self, thread_name: str = "etcdlock-loop") -> None:
        # In a forked child the loop's thread does not exist: a call would wait for it forever.
        self._born = fork.generation()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=thread_name, daemon=True)
        self._thread.start()
        self._guard = threading.Lock()  # orders call() against stop()
        self._stopped = False
        self._calls: set[_Call[Any]] = set()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def stopped(self) -> bool:
        return self._stopped

    def call(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        timeout: float | None = None,
        undo: Callable[[T], Coroutine[Any, Any, object]] | None = None,
    ) -> T:
        """Run `coro` on the loop and wait for its result (or error).

        timeout: seconds to wait (None: no limit); then the coroutine is cancelled and TimeoutError raised.
        undo: awaited on the loop with the result if the coroutine succeeded but the waiting thread was
        interrupted too late to cancel it (e.g. release what an acquire just got).
        Raises RuntimeError when called from the loop thread itself (it would wait for itself), and
        ClientClosedError once the portal is stopped.
        """
        if fork.forked_since(self._born):
            coro.close()
            fork.check_same_process(self._born, "this SyncClient")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                "SyncClient methods cannot be called from its own loop thread (e.g. a lost callback)"
            )
        job = _Call(coro)
        with self._guard:
            if self._stopped:
                coro.close()
                raise ClientClosedError(_CLOSED)
            self._calls.add(job)
        try:
            try:
                # Scheduled inside the try: an interrupt that lands even before start() was queued still
                # goes through _cancel(), which then finds nothing started (callbacks run in order).
                self._loop.call_soon_threadsafe(job.start)
                finished = job.done.wait(timeout)
            except BaseException:
                self._cancel(job)
                if undo is not None and job.succeeded():
                    with contextlib.suppress(Exception):
                        self.call(undo(job.result()))
                raise
            if not finished:
                self._cancel(job)
                if job.cancelled() or not job.done.is_set():
                    raise TimeoutError(f"no result within {timeout:g}s (the call was cancelled)")
            return job.result()
        finally:
            with self._guard:
                self._calls.discard(job)

    def _cancel(self, job: _Call[Any]) -> None:
        # Cancel on the loop, then wait for the coroutine's cleanup to finish (bounded).
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs any more
            self._loop.call_soon_threadsafe(job.cancel)
        job.done.wait(CANCEL_GRACE)

    def call_unless_closed(self, coro: Coroutine[Any, Any, object]) -> None:
        """call(coro) for cleanup that the loop's end makes moot (release, cancel, close): once the portal
        is stopped it does nothing, as the async twin's cleanup finds nothing left to do after the client's
        close()."""
        if fork.forked_since(self._born):
            coro.close()  # a forked child: the loop is the parent's; nothing of it is left to clean up
            return
        try:
            self.call(coro)
        except ClientClosedError:
            if not self._stopped:
                raise

    def run(self, fn: Callable[[], T]) -> T:
        """Run the plain function `fn` on the loop thread (for what touches loop-owned state) and wait."""

        async def on_loop() -> T:
            return fn()

        return self.call(on_loop())

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Have the loop run `fn` soon, without waiting; nothing happens once the portal is stopped.
        Safe from any thread, the loop thread and finalizers included."""
        if not self._stopped and not fork.forked_since(self._born):
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(fn)

    def wrap_iter(self, pull: Callable[[], Coroutine[Any, Any, T]]) -> BlockingIterator[T]:
        """A blocking iterator over the items `await pull()` gives, until it raises StopAsyncIteration.
        `pull` must be safe to cancel (a timed-out `next(timeout)` leaves the source as it was)."""
        return BlockingIterator(self, pull)

    def stop(self) -> None:
        """Cancel and await whatever is still pending on the loop, stop it and end its thread. Idempotent.
        Calls still waiting (from other threads) raise ClientClosedError."""
        with self._guard:
            if self._stopped:
                return
            self._stopped = True
        if fork.forked_since(self._born):
            return  # a forked child: the loop's thread is not here, and the loop is the parent's
        if self._loop.is_running():
            # As asyncio.run does: whatever is still pending on our loop (grpc keeps small internal tasks
            # per call) is cancelled and awaited, so nothing is destroyed while pending.
            with contextlib.suppress(BaseException):
                asyncio.run_coroutine_threadsafe(_drain(), self._loop).result(timeout=CANCEL_GRACE)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=CANCEL_GRACE)
        if not self._thread.is_alive():
            if not self._loop.is_closed():
                self._loop.close()
            with self._guard:
                pending = list(self._calls)
            for job in pending:  # their start never ran: wake their callers
                job.discard()


class BlockingIterator(Generic[T]):
    """Items of an async source, one blocking `next()` at a time, through a portal."""

    def __init__(self, portal: Portal, pull: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self._portal = portal
        self._pull = pull

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        try:
            return self._portal.call(self._pull())
        except StopAsyncIteration:
            raise StopIteration from None

    def next(self, timeout: float) -> T:
        """The next item, or TimeoutError after `timeout` seconds (the source stays as it was)."""
        try:
            return self._portal.call(self._pull(), timeout=timeout)
        except StopAsyncIteration:
            raise StopIteration from None


async def _drain() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


__all__ = ["CANCEL_GRACE", "BlockingIterator", "Portal"]
