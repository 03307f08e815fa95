"""The reusable handle every recipe hands out: `async with handle:` holds, leaving the block releases.

A handle is acquired again after each release and can be shared by tasks, like asyncio.Lock. Every
acquisition is a Contender of its own (its own key, fencing token and `lost`), kept while it is held; the
handle's properties are those of the acquisition held now. Tasks acquiring one handle at once take turns in
this process first (FIFO), so a handle never has two acquisitions at a time, not even a lost one whose
body is still running: `held`, `token`, `ensure_held()` and `release()` can only ever mean that one.

The body never runs without the hold: acquire either returns holding or raises (LockTimeout, LockLost, ...)
with nothing left behind. On the way out the hold is released whatever happened in the body. With
cancel_on_loss=True the body's task is cancelled the moment the hold is lost, and the `async with` raises
LockLost instead of CancelledError.

Without a session, the key goes on the client's default session of the handle's TTL (session_pool.py);
a lease etcd no longer knows is given up and the acquisition goes again on a new one.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypedDict, Unpack

from etcdlock._core.errors import ConfigError, LeaseNotFoundError
from etcdlock._core.lease import check_ttl
from etcdlock._core.txn import Compare, Op
from etcdlock._core.types import TxnResult
from etcdlock._recipes.contender import Contender, QueueSpec, check_timeout
from etcdlock._recipes.errors import LockLost, LockTimeout, NotAcquiredError
from etcdlock._recipes.session import DEFAULT_TTL, Session
from etcdlock._recipes.state import RecipeClient

_LOSS_CANCEL_MSG = "etcdlock: lock lost"
# Default sessions tried by one acquire when etcd says the lease is gone (revoked from outside meanwhile).
_SESSION_ATTEMPTS = 3


@dataclass(eq=False)
class _Holding:
    """One acquisition, from the acquire until its release."""

    contender: Contender
    since: float
    # A try_lock's holding: the first `async with` on the handle takes it over (and releases it on
    # the way out) instead of acquiring a second time.
    adoptable: bool = False
    # The task whose `async with` holds it: its __aexit__ releases it, and cancel_on_loss cancels it.
    entered_by: asyncio.Task[Any] | None = None
    cancelled_for_loss: bool = False


class HoldOptions(TypedDict, total=False):
    """How a handle acquires: the keyword arguments every recipe's handle takes (see Holdable)."""

    ttl: int
    timeout: float | None
    session: Session | None
    cancel_on_loss: bool


class Holdable:
    """A recipe's reusable handle: ``async with handle:`` or ``await handle.acquire()`` /
    ``await handle.release()``. Subclasses say which key they put in which queue (`_spec`).

    Reusable and shareable like asyncio.Lock: acquire it again after each release, from any task. Tasks
    acquiring one handle at once wait for each other in this process, FIFO, each with its own timeout;
    then each acquisition queues in etcd like any other contender. Not reentrant. With ``session=``, one
    session holds one key of a slot: another handle of the same slot on that session raises
    AlreadyHeldError while this one holds or acquires it.

    While held, `key`, `token`, `lease`, `lost`, `is_owner()`, `txn()`, `ensure_held()` and
    `add_lost_callback()` are those of the current acquisition, also after it was lost (until released).
    While not held (never acquired, or released) they raise NotAcquiredError; `held` is False and
    `lost_reason` None.
    """

    def __init__(self, client: RecipeClient, name: str, **options: Unpack[HoldOptions]) -> None:
        """A handle on `name` (nothing is sent yet); `options`: ttl (the default session's TTL, when no
        session is given), timeout (acquire's default), session, cancel_on_loss."""
        ttl = options.get("ttl", DEFAULT_TTL)
        timeout = options.get("timeout")
        session = options.get("session")
        cancel_on_loss = options.get("cancel_on_loss", False)
        check_timeout(timeout)
        if session is None:
            check_ttl(ttl)
        if session is not None and session.client is not client:
            raise ConfigError("the session belongs to another client")
        self.name = name
        """The recipe's name: its keys are under NAME/."""
        self._client = client
        self._ttl = ttl
        self._timeout = timeout
        self._session = session
        self._cancel_on_loss = cancel_on_loss
        # One acquisition at a time per handle: acquirers take this turn first, the release gives it back.
        self._turn = asyncio.Lock()
        self._holding: _Holding | None = None
        self._last: Contender | None = None  # the latest acquisition's, held or not (tests, diagnosis)
        self._spec_cache: QueueSpec | None = None  # what _spec() said; cleared when it would say otherwise
        self._stats = client._recipes.stats

    # ---- what the subclass says ----

    def _spec(self) -> QueueSpec:
        """The key this handle puts in which queue, and what it waits for."""
        raise NotImplementedError

    @property
    def _what(self) -> str:
        return self._spec_now.what

    @property
    def _spec_now(self) -> QueueSpec:
        if self._spec_cache is None:
            self._spec_cache = self._spec()
        return self._spec_cache

    # ---- the current acquisition ----

    @property
    def contender(self) -> Contender:
        """The current acquisition's queue entry, for the recipes and their tests. Raises
        NotAcquiredError while not held. @private"""
        if self._holding is None:
            raise NotAcquiredError(
                f"{self._what} is not acquired (never acquired, or released): it has no key, token "
                "or lease now"
            )
        return self._holding.contender

    @property
    def key(self) -> str:
        """My key, SLOT/<lease hex>. Raises NotAcquiredError while not held."""
        return self.contender.key.decode()

    @property
    def token(self) -> int:
        """The fencing token: my key's create_revision, increasing with every grant of this name. Raises
        NotAcquiredError while not held."""
        return self.contender.token

    @property
    def lease(self) -> int:
        """The lease my key is on. Raises NotAcquiredError while not held."""
        return self.contender.lease

    @property
    def lost(self) -> asyncio.Event:
        """Set once the current acquisition is lost. Raises NotAcquiredError while not held."""
        return self.contender.lost

    @property
    def lost_reason(self) -> str | None:
        """Why the current acquisition was lost; None while it is not, and while not held."""
        return self._holding.contender.lost_reason if self._holding is not None else None

    @property
    def held(self) -> bool:
        """Held and not known lost (the body of `async with` may still be running after a loss)."""
        return self._holding is not None and self.contender.held and self.contender.lost_reason is None

    async def ensure_held(self) -> None:
        """Raise LockLost unless still held at this moment, NotAcquiredError if not held at all.

        The lease's local deadline is read from the clock now; while a deletion of my key could have
        gone unseen (the name's watcher is starting, resyncing or resuming), etcd is asked with one
        linearizable read. Call it before each step that acts on what the hold protects: a process
        resumed after a pause past its TTL learns here that it lost."""
        await self.contender.ensure_held()

    def is_owner(self) -> Compare:
        """A compare that holds only while the current acquisition is mine; put it in your own Txn.
        Raises NotAcquiredError while not held."""
        return self.contender.is_owner()

    async def txn(
        self,
        compare: list[Compare],
        success: list[Op],
        failure: list[Op] | None = None,
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        """A Txn that applies `success` only while I hold (and `compare` holds): LockLost if it was not
        applied because the hold is gone (a result with succeeded=False means one of `compare` failed),
        NotAcquiredError while not held."""
        return await self.contender.txn(compare, success, failure, timeout=timeout)

    def add_lost_callback(self, fn: Callable[[str], None]) -> None:
        """fn(reason) runs once if the current acquisition is lost. Raises NotAcquiredError while not
        held."""
        self.contender.add_lost_callback(fn)

    # ---- acquire / release ----

    async def acquire(self, timeout: float | None = None) -> bool:
        """Wait until held.

        timeout: seconds to wait; None: the handle's own (which by default waits without limit); 0: one
        attempt, no waiting. Returns True once held, False if the timeout passed first (then nothing was
        left behind: no key, no session of this attempt). Raises LockLost if the hold is lost while
        waiting (its key deleted, its session lost), AlreadyHeldError if another handle holds this slot
        on the given session, ConfigError for a bad timeout, EtcdError if etcd fails."""
        check_timeout(timeout)
        try:
            await self._acquire(self._timeout if timeout is None else timeout)
        except LockTimeout:
            return False
        return True

    async def _try_lock(self) -> bool:
        """One attempt; the first `async with` on the handle takes over the holding."""
        try:
            holding = await self._acquire(0, try_lock=True)
        except LockTimeout:
            return False
        holding.adoptable = True
        return True

    async def _acquire(self, timeout: float | None, *, try_lock: bool = False) -> _Holding:
        """Hold, or raise LockTimeout once `timeout` (whole seconds budget; 0: one attempt) has passed,
        with nothing left behind."""
        started = time.monotonic()

        def remaining() -> float | None:
            # The timeout covers the whole acquire: this handle's turn, a session, the wait in the queue.
            return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))

        try:
            await self._take_turn(timeout)
            try:
                if timeout == 0:
                    # One attempt: no deadline on getting a session and asking once, and no waiting.
                    got = await self._take(lambda c: c.try_acquire(), lambda: None, timeout)
                else:
                    got = await self._take(functools.partial(_wait_in_queue, remaining), remaining, timeout)
            except BaseException:
                self._turn.release()
                raise
            if got is None:
                self._turn.release()
                raise LockTimeout(f"{self._what} is held (one attempt, timeout=0); nothing was left behind")
        except LockTimeout:
            if try_lock:
                self._stats.try_lock_busy += 1
            else:
                self._stats.timeouts += 1
            raise
        return self._hold(got, time.monotonic() - started)

    async def _take_turn(self, timeout: float | None) -> None:
        """This handle's turn: tasks sharing it acquire one after the other (FIFO)."""
        if timeout == 0 and self._turn.locked():
            raise LockTimeout(
                f"{self._what} is held or being acquired through this handle (one attempt, timeout=0); "
                "nothing was left behind"
            )
        if timeout is None:
            await self._turn.acquire()  # free: returns without suspending
            return
        # timeout=0 goes through asyncio.timeout too: a free turn returns without suspending, while one
        # just handed on to a woken waiter (not locked yet, but taken) would make this attempt wait.
        waiting = asyncio.timeout(timeout)
        try:
            async with waiting:
                await self._turn.acquire()
        except TimeoutError:
            if not waiting.expired():
                raise
            raise LockTimeout(
                f"{self._what} not acquired within {timeout:g}s (another task held or acquired it through "
                "this handle meanwhile); nothing was left behind"
            ) from None

    async def _take(
        self,
        how: Callable[[Contender], Awaitable[bool]],
        remaining: Callable[[], float | None],
        timeout: float | None,
    ) -> Contender | None:
        """The acquisition `how` got (True), or None when it said no (False)."""
        if self._session is not None:
            return await self._take_on(self._session, how, claimed=False)
        attempt = 1
        while True:
            session = await self._pooled_session(remaining(), timeout)
            try:
                return await self._take_on(session, how, claimed=True)
            except LeaseNotFoundError:
                # The client's session was revoked or expired on the server before the client heard of
                # it: it is lost, for every hold on it, and this one goes again on a new one.
                session.keeper.declare_lost("its lease was not found on the server (revoked or expired)")
                if attempt == _SESSION_ATTEMPTS:
                    raise
                attempt += 1

    async def _take_on(
        self, session: Session, how: Callable[[Contender], Awaitable[bool]], *, claimed: bool
    ) -> Contender | None:
        contender = self._last = Contender(session, self._spec_now, claimed=claimed)
        try:
            if await how(contender):
                return contender
        except LockLost:
            # Raised at the loss, on time: giving back what is left may wait for the network, so it goes
            # on in the background (shielded, own deadline; the lease's TTL covers what it cannot reach).
            self._client._spawn_owned(contender.release(), f"recipe-drop:{self.name}")
            raise
        except BaseException:
            await contender.release()
            raise
        await contender.release()  # (said no: it left no key; this only makes sure)
        return None

    async def _pooled_session(self, remaining: float | None, timeout: float | None) -> Session:
        """The client's default session for this TTL, with this handle's slot claimed on it."""
        waiting = asyncio.timeout(remaining)
        try:
            async with waiting:
                return await self._client._recipes.sessions.claim(self._spec_now.slot, self._ttl)
        except TimeoutError:
            if not waiting.expired():
                raise
            raise LockTimeout(
                f"{self._what} not acquired within {timeout:g}s (no session was ready in time); "
                "nothing was left behind"
            ) from None

    def _hold(self, contender: Contender, waited: float) -> _Holding:
        holding = self._holding = _Holding(contender, time.monotonic())
        self._stats.acquired += 1
        self._stats.held += 1
        self._stats.wait.observe(waited)
        contender.add_lost_callback(self._count_loss)
        return holding

    def _count_loss(self, reason: str) -> None:
        self._stats.lost += 1

    async def release(self) -> None:
        """Release the current acquisition: its key is deleted if it is still mine. Shielded from
        cancellation, with its own deadline. Does nothing while not held (idempotent). As with
        asyncio.Lock, any task may release it, not only the one that acquired it."""
        if self._holding is not None:
            await self._release(self._holding)

    async def _release(self, holding: _Holding) -> None:
        if self._holding is not holding:
            return  # released already
        self._holding = None
        self._stats.held -= 1
        self._stats.released += 1
        self._stats.hold.observe(time.monotonic() - holding.since)
        try:
            await holding.contender.release()
        finally:
            self._turn.release()

    async def __aenter__(self) -> Self:
        """Acquire (LockTimeout after the handle's timeout), or take over a try_lock's holding."""
        holding = self._holding
        if holding is not None and holding.adoptable:
            holding.adoptable = False
            if holding.contender.lost_reason is not None:
                await self._release(holding)
                raise LockLost(f"{self._what} lost before its block began: {holding.contender.lost_reason}")
        else:
            holding = await self._acquire(self._timeout)
        holding.entered_by = asyncio.current_task()
        if self._cancel_on_loss:
            holding.contender.add_lost_callback(functools.partial(self._cancel_body, holding))
        return self

    @staticmethod
    def _cancel_body(holding: _Holding, reason: str) -> None:
        task = holding.entered_by
        if task is not None and not task.done():
            holding.cancelled_for_loss = True
            task.cancel(_LOSS_CANCEL_MSG)

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        task = asyncio.current_task()
        holding = self._holding
        if holding is None or holding.entered_by is not task:
            return  # the body released it already (and another may hold it since): nothing of this block
        holding.entered_by = None
        lost_reason = holding.contender.lost_reason
        await self._release(holding)
        loss_cancelled_body = holding.cancelled_for_loss and isinstance(ev, asyncio.CancelledError)
        if loss_cancelled_body and task is not None and task.uncancel() == 0:
            raise LockLost(f"{self._what} lost while the body ran: {lost_reason}") from ev

    def __repr__(self) -> str:
        now = self._holding.contender if self._holding is not None else "not held"
        return f"<{type(self).__name__} {self.name!r} {now}>"


async def _wait_in_queue(remaining: Callable[[], float | None], contender: Contender) -> bool:
    await contender.acquire(remaining())
    return True


__all__ = ["HoldOptions", "Holdable"]
