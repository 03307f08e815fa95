"""`async with client.lock(name) as held:` — a lock on NAME as one reusable object, like asyncio.Lock.

The handle's behaviour (reuse, sharing by tasks, timeouts, cancel_on_loss, default sessions) is
holdable.py's; the key and the queue are Go's concurrency.Mutex (mutex.py). Two Lock objects of one name
are two contenders in etcd, each with its own key (see session_pool.py).
"""

from __future__ import annotations

from typing import Unpack

from etcdlock._recipes.contender import QueueSpec
from etcdlock._recipes.holdable import Holdable, HoldOptions
from etcdlock._recipes.mutex import check_name, queue_spec
from etcdlock._recipes.state import RecipeClient


class Lock(Holdable):
    """A lock on NAME: ``async with lock:`` or ``await lock.acquire()`` / ``await lock.release()``.

    Reusable and shareable like asyncio.Lock (tasks sharing one object take turns, FIFO); not reentrant:
    acquiring it again in the task that holds it waits for that task (until the timeout). With
    ``session=``, one session holds a name once: another Lock object of the same name on that session
    raises AlreadyHeldError while this one holds or acquires it. While held, `key`, `token`, `lease`,
    `lost`, `is_owner()`, `txn()`, `ensure_held()` and `add_lost_callback()` are those of the current
    acquisition; while not held they raise NotAcquiredError.
    """

    def __init__(self, client: RecipeClient, name: str, **options: Unpack[HoldOptions]) -> None:
        super().__init__(client, check_name(name), **options)

    def _spec(self) -> QueueSpec:
        return queue_spec("lock", self.name)


__all__ = ["Lock"]
