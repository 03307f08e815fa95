"""A counting semaphore: at most `limit` holders of NAME at once, FIFO. (Go's concurrency package has none.)

Keys are the mutex's (NAME/<lease hex> on the holder's lease) with the limit as their value; the holders
are the `limit` keys with the lowest create revisions. A contender reads every key below its own and is
in once at most limit - 1 of them remain: the shared queue (contender.py) with slack = limit - 1, so one
release wakes exactly one waiter, the one it lets in. Each holder's fencing token is its key's create
revision. A key with another limit (or not a semaphore key at all) makes the acquire fail with
LimitMismatchError, as kazoo's semaphore does: two limits on one name would let in more than either.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Unpack

from etcdlock._core.errors import ConfigError
from etcdlock._core.text import quoted, shorten
from etcdlock._recipes.contender import AnyKeyValue, QueueSpec
from etcdlock._recipes.errors import LimitMismatchError
from etcdlock._recipes.holdable import Holdable, HoldOptions
from etcdlock._recipes.mutex import check_name, is_lock_key, queue_spec
from etcdlock._recipes.state import RecipeClient


def check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"a semaphore's limit must be a whole number >= 1, got {limit!r}")
    return limit


def _check_limits(name: str, limit: int, kvs: Sequence[AnyKeyValue]) -> None:
    mine = str(limit).encode()
    for kv in kvs:
        if kv.value != mine:
            key = shorten(kv.key.decode(errors="replace"))
            theirs = (
                f"limit {kv.value.decode()}"
                if kv.value.isdigit()
                else f"value {kv.value!r} (not a semaphore's)"
            )
            raise LimitMismatchError(
                f"semaphore {quoted(name)}: key {key} has {theirs}, this one limit {limit}: every user of a "
                "semaphore must give the same limit"
            )


class Slot(Holdable):
    """One place in a semaphore: ``async with slot:`` holds it; reusable like a Lock, and like a Lock it
    has `token`, `lost`, `ensure_held()`, `txn()`, ... while held."""

    def __init__(self, client: RecipeClient, name: str, limit: int, **options: Unpack[HoldOptions]) -> None:
        super().__init__(client, name, **options)
        self.limit = limit
        """The semaphore's limit."""

    def _spec(self) -> QueueSpec:
        prefix = (self.name + "/").encode()
        return dataclasses.replace(
            queue_spec("semaphore", self.name, str(self.limit).encode()),
            is_blocker=functools.partial(is_lock_key, prefix),
            slack=self.limit - 1,
            clears_queue=False,
            check=functools.partial(_check_limits, self.name, self.limit),
            reusable_request=True,
        )


class Semaphore:
    """At most `limit` holders of NAME at once, across processes: ``async with sem as slot:``.

    Tasks may enter one Semaphore object at once: each entry is a Slot of its own (its own key, fencing
    token and `lost`), released when its block ends. For a slot to hold across calls, take one with
    `slot()` and ``await slot.acquire()`` / ``await slot.release()``."""

    def __init__(self, client: RecipeClient, name: str, limit: int, **options: Unpack[HoldOptions]) -> None:
        self.name = check_name(name, "semaphore")
        """The semaphore's name: its holders' keys are NAME/<lease hex>."""
        self.limit = check_limit(limit)
        """How many may hold it at once."""
        self._client = client
        self._options = options
        self.slot()  # checks the options now, before anything is sent
        self._entered: dict[asyncio.Task[Any] | None, list[Slot]] = {}

    def slot(self) -> Slot:
        """A place in the semaphore, not held yet (nothing is sent): ``async with slot:`` or
        ``await slot.acquire(timeout)``."""
        return Slot(self._client, self.name, self.limit, **self._options)

    async def __aenter__(self) -> Slot:
        """Take a slot (LockTimeout after the semaphore's timeout); the block's end releases it."""
        slot = self.slot()
        await slot.__aenter__()
        self._entered.setdefault(asyncio.current_task(), []).append(slot)
        return slot

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        task = asyncio.current_task()
        slots = self._entered[task]
        slot = slots.pop()
        if not slots:
            del self._entered[task]
        await slot.__aexit__(et, ev, tb)

    def __repr__(self) -> str:
        return f"<Semaphore {self.name!r} limit={self.limit}>"


__all__ = ["Semaphore", "Slot", "check_limit"]
