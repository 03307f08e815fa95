"""A set/clear flag that tasks can wait on, like asyncio.Event, for objects kept by the thousand.

asyncio.Event allocates its waiters' queue (a deque, ~0.6 KB) up front; a client holding 10,000 locks holds
several flags per lock, and most are never waited on. Flag allocates an Event only for its first waiter.
"""

from __future__ import annotations

import asyncio


class Flag:
    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: asyncio.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        # Wakes every waiter; the next one to wait (after a clear) makes a new Event. Dropping this one
        # keeps a flag that was waited on once from holding an Event for the rest of its life.
        event, self._event = self._event, None
        if event is not None:
            event.set()

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        if self._event is None:
            self._event = asyncio.Event()
        await self._event.wait()


__all__ = ["Flag"]
