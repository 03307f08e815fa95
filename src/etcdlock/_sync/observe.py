"""`SyncObservation`: an election's `observe()` as a blocking iterator of leaders, for threads.

    with election.observe() as leaders:
        for leader in leaders:       # blocks until the next leader or proclaimed value
            ...                      # `break` (or close() from any thread) ends the watch on the loop

The async generator `Election.observe()` runs on the client's loop, one step at a time: each `next()` asks
it for one leader. A step is a task of its own that the waiting thread only awaits (shielded), so a
`next(timeout)` that times out, or a thread interrupted while it waits, leaves the step running and the
generator whole: the next call takes the leader that step finds. (Cancelling the generator half-way, as a
plain call through the portal would, ends it.) close() cancels a pending step and closes the generator,
whose `finally` cancels its watch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from types import TracebackType
from typing import Final

from etcdlock._recipes.election import Leader
from etcdlock._recipes.state import RecipeClient
from etcdlock._sync.portal import BlockingIterator, Portal

_END: Final = object()  # what a step returns when the generator is exhausted


class _Steps:
    """The generator's items, one step (task) at a time; lives on the loop."""

    def __init__(self, client: RecipeClient, name: str, source: AsyncIterator[Leader]) -> None:
        self._client = client
        self._name = name
        self._source = source
        self._step: asyncio.Task[Leader | object] | None = None
        self._closed = False
        # One taker at a time (threads may share the iterator): each item goes to one caller only. A
        # caller that gives up leaves its step to the next one.
        self._turn = asyncio.Lock()

    async def next(self) -> Leader:
        """The next item; StopAsyncIteration once the source ended or was closed. Safe to cancel."""
        async with self._turn:
            return await self._take()

    async def _take(self) -> Leader:
        if self._closed:
            raise StopAsyncIteration
        if self._step is None:
            # Owned by the client: listed in resources() while pending, cancelled by its close().
            self._step = self._client._spawn_owned(self._pull(), f"sync-observe:{self._name}")
            self._step.add_done_callback(_seen)
        step = self._step
        try:
            item = await asyncio.shield(step)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if self._closed and step.cancelled() and (me is None or not me.cancelling()):
                raise StopAsyncIteration from None  # close() ended the step this call waited for
            raise
        finally:
            if step.done() and self._step is step:
                self._step = None  # taken (or failed): the next call starts the next step
        if item is _END:
            self._closed = True
            raise StopAsyncIteration
        assert isinstance(item, Leader)
        return item

    async def _pull(self) -> Leader | object:
        try:
            return await anext(self._source)
        except StopAsyncIteration:  # a task cannot carry StopAsyncIteration out: say it with a value
            return _END

    async def aclose(self) -> None:
        """Cancel a pending step, then close the source (its `finally` ends the watch). Idempotent."""
        self._closed = True
        step, self._step = self._step, None
        if step is not None:
            step.cancel()
            # Its error (if it failed unseen) is of no interest any more: the observation is over.
            with contextlib.suppress(BaseException):
                await step
        if isinstance(self._source, AsyncGenerator):
            await self._source.aclose()


class SyncObservation:
    """The leaders of an election, one blocking `next()` at a time (see `etcdlock.Election.observe`).

    Iterate it (``for leader in election.observe():``); leaving the loop with `break` does not end the
    watch by itself: use ``with election.observe() as leaders:``, or call close() (from any thread: a
    thread blocked in next() then gets StopIteration). A SyncObservation that is garbage-collected ends its
    watch too."""

    def __init__(self, portal: Portal, client: RecipeClient, steps: _Steps) -> None:
        self._portal = portal
        self._client = client
        self._steps = steps
        self._items: BlockingIterator[Leader] = portal.wrap_iter(steps.next)  # next is safe to cancel
        self._closed = False

    def __iter__(self) -> Iterator[Leader]:
        return self

    def __next__(self) -> Leader:
        """The next leader, or the next value the leader proclaimed (blocking); StopIteration once
        closed. Raises what the observation raises (EtcdError)."""
        return next(self._items)

    def next(self, timeout: float) -> Leader:
        """The next leader, or TimeoutError after `timeout` seconds (the observation stays open and
        loses nothing: the leader found later is the next one returned)."""
        return self._items.next(timeout)

    def close(self) -> None:
        """End the observation and its watch (idempotent). Nothing to do once the client is closed."""
        self._closed = True
        self._portal.call_unless_closed(self._steps.aclose())

    @property
    def closed(self) -> bool:
        """close() was called (or the `with` ended)."""
        return self._closed

    def __enter__(self) -> SyncObservation:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Finalizers may run on any thread, the loop's included: hand the close over, never wait for it.
        if not self._closed:
            client, steps = self._client, self._steps
            self._portal.call_soon(lambda: client._spawn_owned(steps.aclose(), "sync-observe-close"))


def _seen(step: asyncio.Task[Leader | object]) -> None:
    # A step whose caller gave up (timeout, interrupt) may fail unawaited: its error is marked as seen so
    # asyncio does not log it as "never retrieved"; the next call that awaits the step still gets it.
    if not step.cancelled():
        step.exception()


def observation(
    portal: Portal, client: RecipeClient, name: str, source: AsyncIterator[Leader]
) -> SyncObservation:
    """A SyncObservation of `source` (an `Election.observe()` not started yet)."""
    return SyncObservation(portal, client, _Steps(client, name, source))


__all__ = ["SyncObservation", "observation"]
