"""`SyncSemaphore` and `SyncSlot`: at most `limit` holders of NAME at once, for threads.

    sem = client.semaphore("pool", 4, timeout=30)
    with sem as slot:            # from as many threads at once as you like: each its own slot
        ...                      # slot.token, slot.lost (a threading.Event)

A SyncSlot is a SyncLock whose acquisitions are async Slots of the semaphore (made on the loop by the async
Semaphore's slot()), so the limit, FIFO order and limit checks are the async recipe's.
"""

from __future__ import annotations

import threading
from types import TracebackType

from etcdlock._recipes.semaphore import Semaphore
from etcdlock._sync.lock import HoldableFactory, SyncLock
from etcdlock._sync.portal import Portal


class SyncSlot(SyncLock):
    """One place in a semaphore, for threads: ``with slot:`` holds it; reusable like a SyncLock. See
    `etcdlock.Slot` for the meaning of each member."""

    def __init__(
        self, portal: Portal, name: str, limit: int, make: HoldableFactory, *, timeout: float | None
    ) -> None:
        super().__init__(portal, name, make, timeout=timeout, kind="semaphore")
        self._limit = limit

    @property
    def limit(self) -> int:
        """The semaphore's limit."""
        return self._limit


class SyncSemaphore:
    """At most `limit` holders of NAME at once, across processes and threads: ``with sem as slot:``.

    Threads may enter one SyncSemaphore at once: each entry is a SyncSlot of its own (its own key, fencing
    token and `lost`), released when its block ends. For a slot to hold across calls, take one with
    `slot()` and ``slot.acquire()`` / ``slot.release()``. See `etcdlock.Semaphore`."""

    def __init__(self, portal: Portal, semaphore: Semaphore, *, timeout: float | None) -> None:
        self._portal = portal
        self._semaphore = semaphore
        self._timeout = timeout
        # The slots each thread is inside, innermost last: a block's end releases its own thread's.
        self._entered = threading.local()

    @property
    def name(self) -> str:
        """The semaphore's name: its holders' keys are NAME/<lease hex>."""
        return self._semaphore.name

    @property
    def limit(self) -> int:
        """How many may hold it at once."""
        return self._semaphore.limit

    def slot(self) -> SyncSlot:
        """A place in the semaphore, not held yet (nothing is sent): ``with slot:`` or
        ``slot.acquire(timeout)``."""
        # The async Semaphore checked the options when it was made: each Slot it makes is good.
        return SyncSlot(self._portal, self.name, self.limit, self._semaphore.slot, timeout=self._timeout)

    def _slots(self) -> list[SyncSlot]:
        slots: list[SyncSlot] | None = getattr(self._entered, "slots", None)
        if slots is None:
            slots = self._entered.slots = []
        return slots

    def __enter__(self) -> SyncSlot:
        """Take a slot (LockTimeout after the semaphore's timeout); the block's end releases it."""
        slot = self.slot()
        slot.__enter__()
        self._slots().append(slot)
        return slot

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._slots().pop().__exit__(et, ev, tb)

    def __repr__(self) -> str:
        return f"<SyncSemaphore {self.name!r} limit={self.limit}>"


__all__ = ["SyncSemaphore", "SyncSlot"]
