"""`async with client.lock(name) as held:` — a mutex on its own session (or a shared one), as one object.

The body never runs without the lock: acquire either returns holding it or raises (LockTimeout, LockLost,
...) with nothing left behind. On the way out the lock is released whatever happened in the body.
With cancel_on_loss=True the body's task is cancelled the moment the lock is lost, and the `async with`
raises LockLost instead of CancelledError.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType

from etcdlock._core.client import CoreClient
from etcdlock._core.errors import ConfigError, LeaseNotFoundError
from etcdlock._core.lease import check_ttl
from etcdlock._core.txn import Compare, Op
from etcdlock._core.types import TxnResult
from etcdlock._recipes.errors import LockLost, LockTimeout
from etcdlock._recipes.mutex import Mutex, check_lock_timeout, check_name
from etcdlock._recipes.session import DEFAULT_TTL, Session
from etcdlock._recipes.session_pool import pool_for
from etcdlock._recipes.stats import stats_for

_LOSS_CANCEL_MSG = "etcdlock: lock lost"
# Default sessions tried by one acquire when etcd says the lease is gone (revoked from outside meanwhile).
_SESSION_ATTEMPTS = 3


class Lock:
    """A lock on NAME: acquire with `async with` (or `await lock.acquire()`), then use it as the held lock."""

    def __init__(
        self,
        client: CoreClient,
        name: str,
        *,
        ttl: int = DEFAULT_TTL,
        timeout: float | None = None,
        session: Session | None = None,
        cancel_on_loss: bool = False,
    ) -> None:
        self.name = check_name(name)
        check_lock_timeout(timeout)
        if session is None:
            check_ttl(ttl)
        if session is not None and session.client is not client:
            raise ConfigError("the session belongs to another client")
        self._client = client
        self._ttl = ttl
        self._timeout = timeout
        self._session = session
        self._cancel_on_loss = cancel_on_loss
        self._mutex: Mutex | None = None
        self._body_task: asyncio.Task[object] | None = None
        self._cancelled_for_loss = False
        self._stats = stats_for(client)
        self._held_since: float | None = None

    # ---- the held lock ----

    @property
    def mutex(self) -> Mutex:
        if self._mutex is None or not self._mutex.held:
            raise LockLost(f"lock {self.name!r} is not held")
        return self._mutex

    @property
    def key(self) -> str:
        return self.mutex.key.decode()

    @property
    def token(self) -> int:
        """The fencing token: my key's create_revision, increasing with every grant of this name."""
        return self.mutex.token

    @property
    def lease(self) -> int:
        return self.mutex.lease

    @property
    def lost(self) -> asyncio.Event:
        return self.mutex.lost

    @property
    def lost_reason(self) -> str | None:
        return self._mutex.lost_reason if self._mutex else None

    @property
    def held(self) -> bool:
        """Held and not known lost (the body of `async with` may still be running after a loss)."""
        return self._mutex is not None and self._mutex.held and self._mutex.lost_reason is None

    async def ensure_held(self) -> None:
        """Raise LockLost unless the lock is still mine at this moment (see Mutex.ensure_held)."""
        if self._mutex is None:
            raise LockLost(f"lock {self.name!r} is not held")
        await self._mutex.ensure_held()

    def is_owner(self) -> Compare:
        return self.mutex.is_owner()

    async def txn(
        self,
        compare: list[Compare],
        success: list[Op],
        failure: list[Op] | None = None,
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        return await self.mutex.txn(compare, success, failure, timeout=timeout)

    def add_lost_callback(self, fn: Callable[[str], None]) -> None:
        self.mutex.add_lost_callback(fn)

    # ---- acquire / release ----

    async def acquire(self) -> Lock:
        started = time.monotonic()

        def remaining() -> float | None:
            # The lock's timeout covers the whole acquire: getting a session and the wait in the queue.
            return None if self._timeout is None else max(0.0, self._timeout - (time.monotonic() - started))

        try:
            await self._take(lambda m: m.acquire(remaining()), remaining)
        except LockTimeout:
            self._stats.timeouts += 1
            raise
        self._acquired(time.monotonic() - started)
        return self

    def _acquired(self, waited: float) -> None:
        self._stats.acquired += 1
        self._stats.held += 1
        self._stats.wait.observe(waited)
        self._held_since = time.monotonic()
        self.mutex.add_lost_callback(self._count_loss)

    def _count_loss(self, reason: str) -> None:
        self._stats.lost += 1

    async def try_acquire(self) -> bool:
        ok = False

        async def attempt(m: Mutex) -> None:
            nonlocal ok
            ok = await m.try_acquire()

        started = time.monotonic()
        await self._take(attempt, lambda: None)
        if not ok:
            await self._drop()
            self._stats.try_lock_busy += 1
            return False
        self._acquired(time.monotonic() - started)
        return True

    async def _take(self, how: Callable[[Mutex], object], remaining: Callable[[], float | None]) -> None:
        if self._mutex is not None:
            raise ConfigError(f"lock {self.name!r}: this Lock object was already used; make a new one")
        if self._session is not None:
            await self._take_on(self._session, how, claimed=False)
            return
        for attempt in range(_SESSION_ATTEMPTS):
            session = await self._pooled_session(remaining())
            try:
                await self._take_on(session, how, claimed=True)
                return
            except LeaseNotFoundError:
                # The client's session was revoked or expired on the server before the client heard of
                # it: it is lost, for every lock on it, and this lock goes again on a new one.
                session.keeper.declare_lost("its lease was not found on the server (revoked or expired)")
                if attempt == _SESSION_ATTEMPTS - 1:
                    raise
                self._mutex = None

    async def _take_on(self, session: Session, how: Callable[[Mutex], object], *, claimed: bool) -> None:
        self._mutex = Mutex(session, self.name, claimed=claimed)
        try:
            await how(self._mutex)  # type: ignore[misc]
        except LockLost:
            # Raised at the loss, on time: giving back what is left may wait for the network, so it goes
            # on in the background (shielded, own deadline; the lease's TTL covers what it cannot reach).
            self._client._spawn_owned(self._drop(), f"lock-drop:{self.name}")
            raise
        except BaseException:
            await self._drop()
            raise

    async def _pooled_session(self, timeout: float | None) -> Session:
        """The client's default session for this TTL, with this lock's name claimed on it."""
        waiting = asyncio.timeout(timeout)
        try:
            async with waiting:
                return await pool_for(self._client).claim(self.name, self._ttl)
        except TimeoutError:
            if not waiting.expired():
                raise
            raise LockTimeout(
                f"lock {self.name!r} not acquired within {self._timeout:g}s (no session was ready in time); "
                "nothing was left behind"
            ) from None

    async def _drop(self) -> None:
        """Give the key back (idempotent; shielded, own deadline). The session stays: it is the client's,
        or the caller's."""
        if self._mutex is not None:
            await self._mutex.release()

    async def release(self) -> None:
        """Release the lock (idempotent). Shielded from cancellation, with its own deadline."""
        if self._mutex is None:
            return
        if self._held_since is not None:
            self._stats.held -= 1
            self._stats.released += 1
            self._stats.hold.observe(time.monotonic() - self._held_since)
            self._held_since = None
        await self._drop()

    async def __aenter__(self) -> Lock:
        await self.acquire()
        if self._cancel_on_loss:
            task = asyncio.current_task()
            assert task is not None
            self._body_task = task
            self.mutex.add_lost_callback(self._cancel_body)
        return self

    def _cancel_body(self, reason: str) -> None:
        if self._body_task is not None and not self._body_task.done():
            self._cancelled_for_loss = True
            self._body_task.cancel(_LOSS_CANCEL_MSG)

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._body_task = None
        lost_reason = self.lost_reason
        await self.release()
        if self._cancelled_for_loss and isinstance(ev, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is not None and task.uncancel() == 0:
                raise LockLost(f"lock {self.name!r} lost while the body ran: {lost_reason}") from ev

    def __repr__(self) -> str:
        return f"<Lock {self.name!r} {self._mutex!r}>"


__all__ = ["Lock"]
