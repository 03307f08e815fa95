"""`async with client.lock(name) as held:` — a lock on NAME as one reusable object, like asyncio.Lock.

The handle's behaviour (reuse, sharing by tasks, timeouts, cancel_on_loss, default sessions) is
holdable.py's; the key and the queue are Go's concurrency.Mutex (mutex.py). Two Lock objects of one name
are two contenders in etcd, each with its own key (see session_pool.py).
"""

from __future__ import annotations

from etcdlock._recipes.contender import Contender, QueueSpec
from etcdlock._recipes.holdable import Holdable
from etcdlock._recipes.mutex import check_name, queue_spec
from etcdlock._recipes.session import DEFAULT_TTL, Session
from etcdlock._recipes.state import RecipeClient


class Lock(Holdable):
    """A lock on NAME: ``async with lock:`` or ``await lock.acquire()`` / ``await lock.release()``.

    Reusable and shareable like asyncio.Lock: acquire it again after each release, from any task. Tasks
    acquiring one object at once wait for each other in this process, FIFO, each with its own timeout;
    then each acquisition queues in etcd like any other contender. Not reentrant: acquiring it again in
    the task that holds it waits for that task (until the timeout). With ``session=``, one session holds a
    name once: another Lock object of the same name on that session raises AlreadyHeldError while this
    one holds or acquires it (tasks sharing this object wait for their turn instead).

    While held, `key`, `token`, `lease`, `lost`, `is_owner()`, `txn()`, `ensure_held()` and
    `add_lost_callback()` are those of the current acquisition, also after it was lost (until released).
    While not held (never acquired, or released) they raise NotAcquiredError; `held` is False and
    `lost_reason` None.
    """

    def __init__(
        self,
        client: RecipeClient,
        name: str,
        *,
        ttl: int = DEFAULT_TTL,
        timeout: float | None = None,
        session: Session | None = None,
        cancel_on_loss: bool = False,
    ) -> None:
        super().__init__(
            client, check_name(name), ttl=ttl, timeout=timeout, session=session, cancel_on_loss=cancel_on_loss
        )

    def _spec(self) -> QueueSpec:
        return queue_spec("lock", self.name)

    @property
    def mutex(self) -> Contender:
        """The current acquisition's queue entry, for the recipes and their tests. Raises NotAcquiredError
        while not held. @private"""
        return self.contender


__all__ = ["Lock"]
