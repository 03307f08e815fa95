"""Ownership of background tasks: every long-lived task has a name and exactly one owner that ends it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("etcdlock.tasks")


class TaskOwner:
    """A set of named tasks that one object owns and must end before it is closed."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"etcdlock:{self._owner}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def names(self) -> list[str]:
        return sorted(t.get_name() for t in self._tasks if not t.done())

    def __len__(self) -> int:
        return sum(1 for t in self._tasks if not t.done())

    async def cancel_all(self, timeout: float = 5.0) -> None:
        """Cancel and await every task (bounded); exceptions are consumed so none is left unretrieved."""
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for t in tasks:
            if t.done() and not t.cancelled():
                t.exception()


def backoff(failures: int, base: float = 0.05, cap: float = 1.0) -> float:
    """Seconds to wait after `failures` consecutive failures: doubling from base, at most cap. The
    exponent is bounded too: a partition can run up thousands of failures (2**1024 overflows a float)."""
    return min(base * 2.0 ** min(failures, 16), cap)


async def shielded(coro: Coroutine[Any, Any, Any], timeout: float) -> None:
    """Run cleanup that must happen: shielded from the caller's cancellation, bounded by its own deadline.

    If the caller is cancelled meanwhile, the cleanup still runs to completion (or its deadline) in its own
    task, and the caller's CancelledError is re-raised afterwards.
    """
    loop = asyncio.get_running_loop()
    # The caller waits on `finished`, which the cleanup settles itself as its last step: one event-loop
    # turn from the cleanup's end to the caller, where asyncio.shield(task) takes two (task done ->
    # shield's callback -> caller). Under load every turn waits behind everyone else's ready callbacks.
    finished: asyncio.Future[None] = loop.create_future()

    async def bounded() -> None:
        try:
            async with asyncio.timeout(timeout):
                await coro
        except asyncio.CancelledError:
            finished.cancel()
            raise
        except Exception as e:
            if not finished.done():
                finished.set_exception(e)
        else:
            if not finished.done():
                finished.set_result(None)

    task = loop.create_task(bounded(), name="etcdlock:cleanup")
    try:
        await finished  # cancelling the caller cancels only this future, never the cleanup's task
    except asyncio.CancelledError:
        # The caller was cancelled: the cleanup finishes (within its own deadline) before that propagates,
        # however many more cancellations arrive meanwhile (asyncio.wait never cancels what it waits on).
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([task])
        raise
    except TimeoutError:
        # Cleanup that misses its own deadline (etcd unreachable, a leader election) is not the caller's
        # error: what it could not give back is on a lease and goes when the lease's TTL runs out.
        log.warning("cleanup did not finish within %gs; the lease's TTL will remove what is left", timeout)
