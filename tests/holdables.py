"""Looking inside a recipe handle (Lock, Slot, ReadLock, WriteLock) from tests: its latest queue entry."""

from __future__ import annotations

from etcdlock._recipes.contender import Contender
from etcdlock._recipes.holdable import Holdable


def contender_of(h: Holdable) -> Contender:
    """The handle's latest acquisition (held or not), with its key, token and wake-up count."""
    c = h._last
    assert c is not None, f"{h!r} has not tried to acquire yet"
    return c


def is_waiting(h: Holdable) -> bool:
    """The acquire is parked on the queue: its key exists and it waits for keys below it."""
    c = h._last
    return c is not None and c._interest is not None and bool(c._interest.waiting_on)


def wakeups(h: Holdable) -> int:
    return contender_of(h).wakeups
