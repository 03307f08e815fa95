"""`SyncLock`: a recipe's reusable handle for threads (a lock, a read or write lock, and the base of a
term and a semaphore slot), reusable like threading.Lock.

    lock = client.lock("jobs/42", ttl=10, timeout=5)
    with lock:               # as many times as you like, from as many threads as you like
        ...                  # lock.lost is a threading.Event

One SyncLock has at most one holder at a time, like threading.Lock: a thread that finds it taken by another
thread waits (within its timeout) before going to etcd at all. Each acquisition is a fresh async handle
(any `Holdable`: Lock, Term, Slot, ReadLock, WriteLock) made by a factory and run on the client's loop, so
the sync API has no recipe logic of its own and needs nothing of the async handle beyond a single use.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from etcdlock._core.txn import Compare, Op
from etcdlock._core.types import TxnResult
from etcdlock._recipes.contender import check_timeout
from etcdlock._recipes.errors import AlreadyHeldError, LockLost, LockTimeout
from etcdlock._recipes.holdable import Holdable
from etcdlock._sync.portal import Portal

# Makes the async handle of one acquisition (called on the loop thread). Its own timeout must be the
# SyncLock's: an acquisition without a deadline asks it for one with timeout=None.
HoldableFactory = Callable[[], Holdable]


@dataclass
class _Acquisition:
    """One hold: the async handle that holds it and its own loss event."""

    handle: Holdable
    lost: threading.Event = field(default_factory=threading.Event)


class SyncLock:
    """A lock on NAME as seen from threads; see `etcdlock.Lock` for the meaning of each member. The read and
    write locks of a SyncRWLock are SyncLocks too, and SyncTerm and SyncSlot are SyncLocks with more.

    `acquire(timeout)` -> bool and `release()` as threading.Lock; `with lock:` acquires (raising
    LockTimeout when it cannot) and releases. Members that describe the held lock (key, token, lease, lost,
    txn, ...) refer to the current hold and raise LockLost while there is none.
    """

    def __init__(
        self,
        portal: Portal,
        name: str,
        make: HoldableFactory,
        *,
        timeout: float | None,
        on_lost: Callable[[str], None] | None = None,
        kind: str = "lock",
    ) -> None:
        self._portal = portal
        self._name = name
        self._what = f"{kind} {name!r}"  # for messages: "lock 'a'", "read lock 'a'", "election 'a'"
        self._make = make
        self._timeout = timeout
        self._on_lost = on_lost
        # One holder at a time through this object, as with threading.Lock; taken before going to etcd.
        self._gate = threading.Lock()
        self._state = threading.Lock()  # guards the three fields below
        self._current: _Acquisition | None = None
        # The thread that acquired (any thread may release, as with threading.Lock).
        self._owner: threading.Thread | None = None
        self._entered = False  # the current hold belongs to a `with` block

    @property
    def name(self) -> str:
        """The recipe's name: its keys are under NAME/."""
        return self._name

    # ---- the held lock ----

    def _held_lock(self) -> _Acquisition:
        current = self._current
        if current is None:
            raise LockLost(f"{self._what} is not held")
        return current

    @property
    def key(self) -> str:
        return self._held_lock().handle.key

    @property
    def token(self) -> int:
        """The fencing token: my key's create_revision, increasing with every grant of this name."""
        return self._held_lock().handle.token

    @property
    def lease(self) -> int:
        return self._held_lock().handle.lease

    @property
    def lost(self) -> threading.Event:
        """Set when the current hold is lost (a fresh event for every hold), after on_lost has run."""
        return self._held_lock().lost

    @property
    def lost_reason(self) -> str | None:
        current = self._current
        return current.handle.lost_reason if current is not None else None

    @property
    def held(self) -> bool:
        """Held and not known lost (the body of `with` may still be running after a loss)."""
        current = self._current
        return current is not None and current.handle.held

    def ensure_held(self) -> None:
        """Raise LockLost unless the lock is still mine at this moment (see Lock.ensure_held)."""
        self._portal.call(self._held_lock().handle.ensure_held())

    def is_owner(self) -> Compare:
        """A compare that holds only while this lock is mine; put it in your own Txn."""
        return self._held_lock().handle.is_owner()

    def txn(
        self,
        compare: list[Compare],
        success: list[Op],
        failure: list[Op] | None = None,
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        """A Txn applied only while I still own the lock; LockLost when it was not because I do not."""
        return self._portal.call(self._held_lock().handle.txn(compare, success, failure, timeout=timeout))

    def add_lost_callback(self, fn: Callable[[str], None]) -> None:
        """fn(reason) runs once, on the loop thread, when the current hold is lost (at once if it is)."""
        handle = self._held_lock().handle
        self._portal.run(lambda: handle.add_lost_callback(fn))

    # ---- acquire / release ----

    def acquire(self, timeout: float | None = None) -> bool:
        """Acquire the lock: True once held, False when not within `timeout` seconds (nothing is left
        behind then). None: the timeout given to client.lock() (itself None: wait without a deadline);
        0: one attempt, without waiting.

        Raises ConfigError for a bad timeout, AlreadyHeldError when this thread already holds this
        SyncLock (locks are not reentrant), LockLost when the lock is lost while being acquired, EtcdError
        when etcd cannot be reached."""
        try:
            self._take(timeout, entered=False)
        except LockTimeout:
            return False
        return True

    def _take(self, timeout: float | None, *, entered: bool) -> None:
        check_timeout(timeout)
        wait = self._timeout if timeout is None else timeout
        if self._owner is threading.current_thread():
            raise AlreadyHeldError(
                f"{self._what} is already held by this thread through this {type(self).__name__}; "
                "it is not reentrant"
            )
        started = time.monotonic()
        if not self._gate.acquire(timeout=-1 if wait is None else wait):
            raise LockTimeout(
                f"{self._what} not acquired within {wait:g}s (another thread holds it through the same "
                f"{type(self).__name__}); nothing was left behind"
            )
        try:
            left = None if wait is None else max(0.0, wait - (time.monotonic() - started))
            if wait and not left:
                # A positive timeout used up at the gate: 0 would mean "one attempt", not "no time left".
                raise LockTimeout(f"{self._what} not acquired within {wait:g}s; nothing was left behind")
            current = self._portal.call(self._acquire_on_loop(left), undo=_release)
        except BaseException:
            self._gate.release()
            raise
        with self._state:
            self._current, self._owner, self._entered = current, threading.current_thread(), entered

    async def _acquire_on_loop(self, timeout: float | None) -> _Acquisition:
        handle = self._make()
        if not await handle.acquire(timeout):  # 0: one attempt; None: no deadline (never False)
            within = "in one attempt" if timeout == 0 else f"within {timeout:g}s"
            raise LockTimeout(f"{self._what} not acquired {within}; nothing was left behind")
        current = _Acquisition(handle)
        # Fires at once if the hold was already lost: no loss goes unseen.
        handle.add_lost_callback(lambda reason: self._fire_lost(current, reason))
        return current

    def _fire_lost(self, current: _Acquisition, reason: str) -> None:  # on the loop thread
        # on_lost first: a thread woken by `lost` finds it has run.
        try:
            if self._on_lost is not None:
                self._on_lost(reason)
        finally:
            current.lost.set()

    def release(self) -> None:
        """Release the lock (idempotent; from any thread, as threading.Lock). The key is deleted shielded,
        with its own deadline; once the client is closed there is nothing left to do."""
        with self._state:
            current, self._current, self._owner, self._entered = self._current, None, None, False
        if current is None:
            return
        try:
            self._portal.call_unless_closed(current.handle.release())
        finally:
            self._gate.release()

    def __enter__(self) -> Self:
        """Acquire (LockTimeout when not within the lock's timeout) — unless this thread holds the lock
        from acquire() or client.try_lock() outside any `with`: then the `with` takes over that hold."""
        me = threading.current_thread()
        with self._state:
            adopt = self._current is not None and self._owner is me and not self._entered
            if adopt:
                self._entered = True
        if not adopt:
            self._take(None, entered=True)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        current = self._current
        now = current.handle if current is not None else "not held"
        return f"<{type(self).__name__} {self._name!r} {now!r}>"


async def _release(current: _Acquisition) -> None:
    await current.handle.release()


__all__ = ["HoldableFactory", "SyncLock"]
