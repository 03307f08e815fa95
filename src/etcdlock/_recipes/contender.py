"""The base of every recipe: one key in a queue of keys under a name, ordered by create revision.

Go's recipes (concurrency.Mutex, concurrency.Election, contrib/recipes RWMutex) all come down to this: put
my key on my session's lease, then wait until the keys below mine that stand in my way are deleted. They
differ only in which key is mine, what its value is, which keys below stand in my way and how many of them
may remain; a `QueueSpec` says that, and a `Contender` does the rest:

  * Acquire is one Txn: if my key's create_revision is 0, put it (and read the blocking keys from the top,
    create_revision descending, so a waiter knows at once what it waits for); else read my key (a retried
    Txn that went through). My revision (the fencing token) is my key's create_revision.
  * Waiting is event driven: one deletion watcher per name and client (queue.py), started from the latest
    revision the client saw, so etcd serves it live (Go watches from a past revision, answered on etcd's
    100 ms sync tick). A waiter is woken once, by the deletion that leaves at most `slack` keys in its way.
  * My own key is on the same watcher: if it disappears while I wait, the acquire fails at once; while I
    hold, `lost` fires. Both come in revision order with the blockers' deletions, so "the keys in my way
    are gone and mine is not" needs no extra read.
  * A loss (lease gone, key deleted) interrupts an acquire at once, even in the middle of a call to etcd.
  * Release deletes my key only if its create_revision is still mine, so a stale release never removes a
    newer holder's key. A release that cannot get through on a shared session keeps trying in the
    background (the lease would never take the key away).
  * Cleanup after a timeout, error or cancellation is shielded from the caller's cancellation and has its
    own deadline. Invariant: acquire returns with at most `slack` blockers below my key, or raises with my
    key gone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from etcdlock._core.errors import ConfigError, EtcdError
from etcdlock._core.tasks import backoff, shielded
from etcdlock._core.txn import Compare, Op, txn_request
from etcdlock._core.types import GetResult, KeyValue, TxnResult
from etcdlock._recipes.errors import LockLost, LockTimeout
from etcdlock._recipes.queue import Interest, NameWatch
from etcdlock._recipes.session import CLEANUP_TIMEOUT, Session
from etcdlock._wire import kv_pb2
from etcdlock._wire import rpc_pb2 as pb

if TYPE_CHECKING:
    from etcdlock._recipes.state import RecipeClient

log = logging.getLogger("etcdlock.recipes")
T = TypeVar("T")

# Keys read per page when looking for the keys in my way; more than one page only when keys that do not
# stand in my way (nested names, readers for a reader) fill a page.
_PAGE = 16

AnyKeyValue = KeyValue | kv_pb2.KeyValue


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """What a recipe's key is and what it waits for."""

    kind: str  # "lock", "election", "semaphore", "read lock", "write lock": for messages
    name: str  # the recipe's name: its keys are under NAME/, watched by one NameWatch per client
    slot: str  # my key is SLOT/<lease hex>; one per session (the session's claim)
    blockers: bytes  # the prefix under which the keys that can stand in my way are
    is_blocker: Callable[[bytes], bool]  # ... and which keys under it do
    value: bytes = b""
    # Blockers below my key that may remain while I hold: 0 for exclusive recipes, limit - 1 for a
    # semaphore (which then reads every key below it, not a page).
    slack: int = 0
    # Holding means every blocker created before my key is gone for good (mutex, election): a waiter's
    # page that reaches down to a local holder's revision needs no further read.
    clears_queue: bool = False
    # Checks what the keys read say (a semaphore's limit in their values); raises to refuse.
    check: Callable[[Sequence[AnyKeyValue]], None] | None = None
    # The acquire request is the same for every acquisition on a session: build it once.
    reusable_request: bool = True

    @property
    def prefix(self) -> bytes:
        return (self.name + "/").encode()

    @property
    def what(self) -> str:
        return f"{self.kind} {self.name!r}"


@dataclass(frozen=True, slots=True)
class _Below:
    """What one read says of the blocking keys below mine."""

    read_revision: int
    keys: dict[bytes, int]  # blocking keys below mine (just below: a page, unless slack), create revisions
    complete: bool  # no key under the blockers' prefix below the page
    floor: int  # the lowest create revision the page reaches down to


def check_timeout(timeout: object) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
        raise ConfigError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    if timeout == float("inf"):
        raise ConfigError("timeout must be finite; use None to wait without a deadline")


class Contender:
    """One key of a recipe in its queue, on one session. After `acquire()`, this object is the holder."""

    def __init__(self, session: Session, spec: QueueSpec, *, claimed: bool = False) -> None:
        """claimed=True: the caller already claimed the spec's slot on the session (Session.claim)."""
        self.spec = spec
        self.name = spec.name
        self.session = session
        self._preclaimed = claimed
        self.prefix = spec.prefix
        self.key = (spec.slot + "/").encode() + format(session.lease_id, "x").encode()
        self.token = 0  # my key's create_revision once known: the fencing token
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self.wakeups = 0  # times this waiter was woken: once per release that let it in
        self._held = False
        # The slot is ours on this session: only then is there anything to clean up.
        self._claimed = claimed
        self._queue: NameWatch | None = None
        self._interest: Interest | None = None
        self._lost_callbacks: list[Callable[[str], None]] = []
        self._acquiring: asyncio.Task[Any] | None = None  # the task acquiring, interrupted by a loss
        self._interrupted = False

    @property
    def client(self) -> RecipeClient:
        return self.session.client

    @property
    def held(self) -> bool:
        return self._held

    @property
    def lease(self) -> int:
        return self.session.lease_id

    async def ensure_held(self) -> None:
        """Raise LockLost unless held right now.

        The lease's local deadline is read from the clock at this moment (not from the last timer tick,
        which a stopped process has not seen yet). While a deletion of my key could have gone unseen (the
        name's watcher is starting, resyncing after compaction, or resuming on another connection), etcd is
        asked: one linearizable read of my key. Call it before each step that acts on what is protected:
        a process resumed after a pause past its TTL learns here that it lost."""
        if self._held and self.lost_reason is None:
            self.session.keeper.check()  # past the deadline: fires the session's loss, and so ours
        if not self._held or self.lost_reason is not None:
            raise LockLost(self._lost_message() if self.lost_reason else f"{self.spec.what} is not held")
        if self._queue is not None and self._queue.in_doubt:
            await self._confirm_key(f"key {self.key.decode()} is gone from etcd")
            self.session.keeper.check()  # the read may have taken us past the deadline
            if self.lost_reason is not None:
                raise LockLost(self._lost_message())

    def is_owner(self) -> Compare:
        """A compare that holds only while my key is the one I created; put it in your own Txn."""
        if not self.token:
            raise LockLost(f"{self.spec.what} is not held")
        return Compare.create_revision(self.key, "==", self.token)

    async def txn(
        self,
        compare: list[Compare],
        success: list[Op],
        failure: list[Op] | None = None,
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        """A Txn that applies `success` only while I still hold (and `compare` holds).

        Raises LockLost when it was not applied because I no longer hold; a result with
        ``succeeded=False`` means my key was intact and one of `compare` failed."""
        if self.lost_reason is not None:
            raise LockLost(self._lost_message())
        # My key is read on the failure branch too, so a failure says in the same round trip whose
        # compare failed: mine (lost) or the caller's.
        mine = Op.get(self.key, keys_only=True)
        r = await self.client.txn(
            [self.is_owner(), *compare], success, [*(failure or []), mine], timeout=timeout
        )
        if r.succeeded:
            return r
        *responses, own = r.responses
        assert isinstance(own, GetResult)
        if not own.kvs or own.kvs[0].create_revision != self.token:
            self._mark_lost(f"key {self.key.decode()} was gone at revision {r.header.revision}")
            raise LockLost(self._lost_message())
        return dataclasses.replace(r, responses=responses)

    def add_lost_callback(self, fn: Callable[[str], None]) -> None:
        """fn(reason) runs once when the hold is lost (at once if it already is)."""
        if self.lost_reason is not None:
            fn(self.lost_reason)
        else:
            self._lost_callbacks.append(fn)

    # ---- acquire ----

    async def acquire(self, timeout: float | None = None) -> None:
        """Wait until I hold. LockTimeout after `timeout` seconds (None: wait forever).

        LockLost as soon as the hold is lost while acquiring (the lease's local deadline passed, or my key
        was deleted), even in the middle of a call to etcd; its cleanup then goes on in the background."""
        check_timeout(timeout)
        self._claim()
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                await self._while_interruptible_by_loss(self._acquire())
        except TimeoutError:
            if not deadline.expired():
                raise
            raise LockTimeout(
                f"{self.spec.what} not acquired within {timeout:g}s; nothing was left behind"
            ) from None
        self._held = True

    async def try_acquire(self) -> bool:
        """Hold only if nothing stands in my way right now; never waits, leaves no key behind if not."""
        self._claim()
        if not await self._while_interruptible_by_loss(self._try_acquire()):
            await shielded(self._cleanup(delete_key=True), CLEANUP_TIMEOUT)
            return False
        self._held = True
        return True

    async def _try_acquire(self) -> bool:
        my_rev, below = await self._create_key()
        await self._watching_my_key(my_rev)
        if not below.complete and not below.keys:
            below = await self._lower_keys(my_rev)  # only keys not in my way in the page: look further
        if not self._admitted(below):
            return False
        self._hold_at(my_rev)
        return True

    def _admitted(self, below: _Below) -> bool:
        """Does this read (which also found my key) let me in?"""
        assert self._queue is not None
        if len(below.keys) > self.spec.slack:
            return False
        return below.complete or (self.spec.clears_queue and below.floor <= self._queue.cleared_below)

    def _hold_at(self, my_rev: int) -> None:
        assert self._queue is not None and self._interest is not None
        self._queue.unwait(self._interest)
        if self.spec.clears_queue:
            self._queue.note_acquired(my_rev)

    async def _while_interruptible_by_loss(self, work: Coroutine[Any, Any, T]) -> T:
        """Run an acquisition in the caller's task; a loss meanwhile interrupts it at once and raises
        LockLost (the lease's local deadline must not wait for a call to etcd that may never come back).

        Every way out but success gives the key back: awaited on timeout, error or cancellation (shielded,
        own deadline); in the background after a loss, so LockLost is raised on time."""
        queue = self._queue
        assert queue is not None
        queue.begin_acquire()
        self._acquiring = asyncio.current_task()
        try:
            result = await work
        except BaseException as e:
            queue.end_acquire()
            lost = isinstance(e, LockLost) or self._interrupted_by_loss(e)
            if lost:
                self.client._spawn_owned(
                    shielded(self._cleanup(delete_key=True), CLEANUP_TIMEOUT), f"recipe-cleanup:{self.name}"
                )
            else:
                await shielded(self._cleanup(delete_key=True), CLEANUP_TIMEOUT)
            if lost and not isinstance(e, LockLost):
                raise LockLost(self._lost_message()) from None
            raise
        finally:
            self._acquiring = None
        queue.end_acquire()
        return result

    def _interrupted_by_loss(self, error: BaseException) -> bool:
        """Was this CancelledError ours (from _mark_lost) and nobody else's?"""
        if not self._interrupted or not isinstance(error, asyncio.CancelledError):
            return False
        task = asyncio.current_task()
        return task is not None and task.uncancel() == 0

    def _claim(self) -> None:
        if not self._preclaimed:
            self.session.claim(self.spec.slot)
        self._claimed = True
        # Watch the queue (and my key) before my key exists, so no deletion can slip by.
        self._queue = self.client._recipes.queues.get(self.name, self.prefix)
        self._interest = Interest(self.key, self._own_key_deleted, slack=self.spec.slack)
        self._queue.join(self._interest)
        self.session.keeper.add_lost_callback(self._on_session_lost)

    async def _acquire(self) -> None:
        queue, interest = self._queue, self._interest
        assert queue is not None and interest is not None
        my_rev, below = await self._create_key()
        await self._watching_my_key(my_rev)
        while not self._admitted(below):
            # The queue refuses a read it cannot vouch for (older than its watcher's coverage, or taken
            # while the watcher restarts): then the read below is done again once the watcher is live.
            if queue.wait_for(interest, below.keys, below.read_revision):
                await interest.turn.wait()  # set by the queue when I may go in, or by _mark_lost
                if self.lost.is_set():
                    raise LockLost(self._lost_message())
                self.wakeups += 1
                if below.complete or (self.spec.clears_queue and below.floor <= queue.cleared_below):
                    break  # what stood in my way is gone, and (same watcher, in order) my key is not
                # More keys were below mine than one read returns: read the next ones.
            await queue.live()  # a loss meanwhile interrupts this task (_while_interruptible_by_loss)
            below = await self._lower_keys(my_rev)
        self._hold_at(my_rev)

    async def _create_key(self) -> tuple[int, _Below]:
        """The acquire Txn. Returns my revision and the blocking keys just below mine."""
        r = await self.client._txn_batched(self._acquire_request(), self.prefix, self.key)
        if r.succeeded:
            my_rev = r.header.revision
            top = r.responses[1].response_range
            # My key was just created: everything else the read found is below it.
            page = [kv for kv in top.kvs if kv.create_revision < my_rev]
            self._check(page)
            below = self._page(r.header.revision, page, my_rev, more=top.more)
        else:
            # My key exists already: an earlier attempt of this very acquire went through (a retried
            # Txn). Where it stands in the queue needs a proper read.
            my_rev = r.responses[0].response_range.kvs[0].create_revision
            below = _Below(r.header.revision, {}, complete=False, floor=my_rev)
        self.token = my_rev
        assert self._queue is not None and self._interest is not None
        self._interest.own_revision = my_rev
        deleted = self._queue.own_key_deleted_after(self.key, my_rev)
        if deleted is not None:
            self._own_key_deleted(deleted)
        if self.lost.is_set():
            raise LockLost(self._lost_message())
        return my_rev, below

    def _check(self, kvs: Sequence[AnyKeyValue]) -> None:
        """Let the spec check the keys read that belong to this queue (not those of nested names)."""
        if self.spec.check is not None:
            is_blocker = self.spec.is_blocker
            self.spec.check([kv for kv in kvs if is_blocker(kv.key)])

    def _page(self, read_revision: int, kvs: Sequence[AnyKeyValue], my_rev: int, *, more: bool) -> _Below:
        """A page of keys just below mine (descending create revision, all keys under the prefix)."""
        floor = min((kv.create_revision for kv in kvs), default=my_rev)
        return _Below(read_revision, self._blocking(kvs), complete=not more, floor=floor)

    async def _watching_my_key(self, my_rev: int) -> None:
        """Make sure a deletion of my key from its creation on cannot go unseen.

        The queue's watcher covers deletions after the revision it started from (or last resynced at).
        If that is after my key was created, a deletion in between would go unseen, so read my key once:
        still there with my revision, or lost. With a lingering watcher (the usual case) it started long
        ago and this costs nothing."""
        assert self._queue is not None
        watched_from = self._queue.covered_from
        if self._queue.in_doubt:
            watched_from = await self._queue.live()
        if watched_from > my_rev:
            await self._confirm_key(f"key {self.key.decode()} vanished right after it was created")

    async def _confirm_key(self, reason: str) -> None:
        """Read my key (linearizable): LockLost unless it is still there with my revision."""
        r = await self.client.get(self.key, keys_only=True)
        if not r.kvs or r.kvs[0].create_revision != self.token:
            self._mark_lost(reason)
            raise LockLost(self._lost_message())

    def _acquire_request(self) -> pb.TxnRequest:
        """If my key does not exist: create it on my lease and read the top of the blockers; else read my
        key. Built once per session and slot when it is the same every time."""
        if not self.spec.reusable_request:
            return self._build_acquire_request()
        # Keyed by the value too: one session may meet one slot with different values (limits).
        slot, value = self.spec.slot, self.spec.value
        return self.session.acquire_request(
            f"{slot}\x00{value!r}" if value else slot, self._build_acquire_request
        )

    def _range_below(self, max_revision: int = 0, *, extra: int = 0) -> Op:
        """The blockers' range, from the top down (every key of it when some may remain: slack)."""
        return Op.get(
            self.spec.blockers,
            prefix=True,
            max_create_revision=max_revision,
            sort_order="descend",
            sort_target="create",
            limit=0 if self.spec.slack else _PAGE + extra,
            keys_only=self.spec.check is None,
        )

    def _build_acquire_request(self) -> pb.TxnRequest:
        return txn_request(
            [Compare.create_revision(self.key, "==", 0)],
            [Op.put(self.key, self.spec.value, lease=self.lease), self._range_below(extra=1)],
            [Op.get(self.key, keys_only=True)],
        )

    async def _lower_keys(self, my_rev: int) -> _Below:
        """Read the blocking keys just below mine, together with my own key (which must still be there)."""
        if self.lost.is_set():
            raise LockLost(self._lost_message())
        r = await self.client.txn([], [self._range_below(my_rev - 1), Op.get(self.key, keys_only=True)])
        page, mine = r.responses
        assert isinstance(page, GetResult) and isinstance(mine, GetResult)
        if not mine.kvs or mine.kvs[0].create_revision != my_rev:
            self._mark_lost(f"key {self.key.decode()} vanished while waiting (lease expired or deleted)")
            raise LockLost(self._lost_message())
        self._check(page.kvs)
        below = self._page(r.header.revision, page.kvs, my_rev, more=page.more)
        while not below.complete and not below.keys:
            # The page held only keys not in my way (nested names, readers for a reader): page on down.
            page = await self.client.get(
                self.spec.blockers,
                prefix=True,
                max_create_revision=below.floor - 1,
                sort_order="descend",
                sort_target="create",
                limit=_PAGE,
                keys_only=True,
                revision=r.header.revision,
            )
            below = self._page(r.header.revision, page.kvs, below.floor, more=page.more)
        return below

    def _blocking(self, kvs: Iterable[AnyKeyValue]) -> dict[bytes, int]:
        """The keys among kvs that stand in my way, with their create revisions."""
        is_blocker = self.spec.is_blocker
        return {kv.key: kv.create_revision for kv in kvs if is_blocker(kv.key)}

    # ---- loss ----

    def _own_key_deleted(self, revision: int) -> None:
        # Deletions of an earlier incarnation of the same key (a previous hold on this session) predate it.
        if self.token and revision > self.token:
            self._mark_lost(f"key {self.key.decode()} was deleted at revision {revision}")

    def _on_session_lost(self, reason: str) -> None:
        self._mark_lost(f"session lease {self.lease:x} lost: {reason}")

    def _mark_lost(self, reason: str) -> None:
        if self.lost_reason is not None:
            return
        self.lost_reason = reason
        self.lost.set()
        if self._interest is not None:
            self._interest.turn.set()  # a waiter wakes up to learn it lost
        acquiring = self._acquiring
        if acquiring is not None and acquiring is not asyncio.current_task() and not acquiring.done():
            # It may be in a call to etcd that will not come back before its own timeout (a partition):
            # interrupt it, so LockLost comes at the loss, not after the call gives up.
            self._interrupted = True
            acquiring.cancel("etcdlock: lost while acquiring")
        callbacks, self._lost_callbacks = self._lost_callbacks, []
        for fn in callbacks:
            try:
                fn(reason)
            except Exception:
                log.exception("lost-callback of %s failed", self.spec.what)

    def _lost_message(self) -> str:
        return f"{self.spec.what} lost: {self.lost_reason}"

    # ---- release ----

    async def release(self, *, delete_key: bool = True) -> None:
        """Give it up: delete my key if it is still mine. Idempotent; shielded, own deadline.

        delete_key=False leaves deletion to the caller (who is about to revoke the lease anyway)."""
        self._held = False
        await shielded(self._cleanup(delete_key), CLEANUP_TIMEOUT)

    async def _cleanup(self, delete_key: bool) -> None:
        if not self._claimed:
            return  # never claimed (e.g. AlreadyHeldError): the key, if any, is somebody else's
        self._claimed = False
        self._leave_queue()
        if not delete_key:
            self.session.unclaim(self.spec.slot)
            return
        try:
            # Within the cleanup's own deadline, so a failure is known before that deadline cuts it off.
            await self._delete_key(CLEANUP_TIMEOUT * 0.8)
        except EtcdError as e:
            stats = self.client._recipes.stats
            if self._session_alive():
                # The session lives on (it is shared), so its lease would never take the key away: the
                # queue would wait behind it for good. Keep at it in the background until it lands (the
                # delete is guarded, safe to repeat) or the session ends; the slot stays ours until then.
                stats.release_retries += 1
                log.warning("could not delete key %s yet (%s); retrying", self.key.decode(), e)
                self.client._spawn_owned(self._delete_until_done(), f"recipe-release:{self.name}")
                return
            stats.release_failures += 1
            log.warning(
                "could not delete key %s (%s); it goes with lease %x", self.key.decode(), e, self.lease
            )
        self.session.unclaim(self.spec.slot)

    async def _delete_key(self, timeout: float) -> None:
        """Delete my key: only if it is still the one I created (or, if I never learnt its revision, only if
        it is on my lease), never a newer holder's."""
        guard = (
            pb.Compare(key=self.key, target=pb.Compare.CREATE, create_revision=self.token)
            if self.token
            else pb.Compare(key=self.key, target=pb.Compare.LEASE, lease=self.lease)
        )
        delete = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=self.key))
        request = pb.TxnRequest(compare=[guard], success=[delete])
        await self.client._txn_batched(request, self.prefix, self.key, timeout=timeout)

    def _session_alive(self) -> bool:
        return not self.session.closed and not self.session.lost.is_set() and not self.client.closed

    async def _delete_until_done(self) -> None:
        failures = 0
        try:
            while self._session_alive():
                try:
                    await self._delete_key(CLEANUP_TIMEOUT)
                    return
                except EtcdError as e:
                    failures += 1
                    log.info("key %s still not deleted (%s); retrying", self.key.decode(), e)
                    await asyncio.sleep(backoff(failures))
        finally:
            self.session.unclaim(self.spec.slot)

    def _leave_queue(self) -> None:
        # After this no loss can be reported, so the callbacks go too: they point back at their owners,
        # and keeping them would make every released hold garbage for the cyclic GC.
        self._lost_callbacks.clear()
        self.session.keeper.remove_lost_callback(self._on_session_lost)
        queue, interest, self._queue, self._interest = self._queue, self._interest, None, None
        if queue is not None and interest is not None:
            queue.leave(interest)

    def __repr__(self) -> str:
        state = "held" if self._held else "lost" if self.lost_reason else "not held"
        return f"<{type(self).__name__} {self.spec.what} key={self.key.decode()} token={self.token} {state}>"


__all__ = ["Contender", "QueueSpec", "check_timeout"]
