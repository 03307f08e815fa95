"""The mutex: Go's concurrency.Mutex protocol, so Go services and `etcdctl lock` exclude us on one name.

Protocol (the wire contract we share with Go):
  * A session is one lease. My key is NAME + "/" + lowercase hex of the lease id, empty value, on the lease.
  * Acquire is one Txn: if my key's create_revision is 0, put it (and read the queue); else get my key.
    My revision is the put's header revision, or the existing key's create_revision. The lock is mine when
    no lock key under NAME/ has a lower create_revision.
  * Otherwise I wait until every key below mine is deleted, and the lock is mine: FIFO by create_revision.

Where we do better than Go, staying wire-compatible (the keys we write are exactly Go's):
  * The acquire Txn reads the queue from the top (create_revision descending), so it returns the keys just
    below mine: when I have to wait, I already know what for.
  * Waiting is event driven: one deletion watcher per lock name and client (see queue.py), started "from
    now" so etcd serves it live. Go watches from a past revision, which etcd answers on its 100 ms sync
    tick. Exactly one waiter is woken per release: the one whose last key below is gone.
  * My own key is on the same watcher: if it disappears while I wait, the acquire fails at once; while I
    hold the lock, `lost` fires. Both come in revision order with the queue's deletions, so "every key
    below mine is gone and mine is not" needs no extra read.
  * Release deletes my key only if its create_revision is still mine, so a stale release never removes
    a newer holder's key.
  * If the watcher's resume revision is compacted, everyone reads the queue again and goes on.
  * Only direct children NAME/<hex> count as lock keys, so lock "a" is not held up by lock "a/b".
  * Cleanup after a timeout, error or cancellation is shielded from the caller's cancellation and has its
    own deadline. Invariant: acquire returns with my key the lowest under NAME/, or raises with my key gone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from etcdlock._core.client import CoreClient
from etcdlock._core.errors import ConfigError, EtcdError
from etcdlock._core.tasks import backoff, shielded
from etcdlock._core.txn import Compare, Op, txn_request
from etcdlock._core.types import GetResult, KeyValue, TxnResult
from etcdlock._recipes.errors import LockLost, LockTimeout
from etcdlock._recipes.queue import Interest, NameWatch, registry_for
from etcdlock._recipes.session import CLEANUP_TIMEOUT, Session
from etcdlock._recipes.stats import stats_for
from etcdlock._wire import kv_pb2
from etcdlock._wire import rpc_pb2 as pb

log = logging.getLogger("etcdlock.mutex")
T = TypeVar("T")

_LOCK_KEY_SUFFIX = re.compile(rb"[0-9a-f]+")
# Keys read per page when looking for the predecessor; more than one page only when other names nest under
# this one (lock "a" vs lock "a/b/...").
_PAGE = 16


@dataclass(frozen=True, slots=True)
class _Below:
    """What one read says of the lock keys below mine."""

    read_revision: int
    keys: dict[bytes, int]  # lock keys just below mine (at most a page), with their create revisions
    complete: bool  # no key (of any name under the prefix) below the page
    floor: int  # the lowest create revision the page reaches down to

    def all_gone(self, queue: NameWatch) -> bool:
        """Nothing below mine at the read: the lock is mine (the read also found my key)."""
        return not self.keys and (self.complete or self.floor <= queue.cleared_below)


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"lock name must be a str, not {type(name).__name__}")
    if not name or not name.strip():
        raise ConfigError("lock name must not be empty")
    if name.endswith("/"):
        raise ConfigError(f"lock name {name!r} must not end with '/': the lock's keys are NAME/<lease hex>")
    if "\x00" in name:
        raise ConfigError(f"lock name {name!r} must not contain NUL")
    return name


def is_lock_key(prefix: bytes, key: bytes) -> bool:
    """Is `key` (under `prefix` = NAME/) a lock key of NAME: a direct child NAME/<hex>, what waiters wait
    for? (Keys of names nested under NAME, NAME/sub/..., are not.)"""
    return key.startswith(prefix) and _LOCK_KEY_SUFFIX.fullmatch(key[len(prefix) :]) is not None


def check_lock_timeout(timeout: object) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0:
        raise ConfigError(f"lock timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    if timeout == float("inf"):
        raise ConfigError("lock timeout must be finite; use None to wait without a deadline")


class Mutex:
    """One lock name on one session. After `acquire()`, this object is the held lock."""

    def __init__(self, session: Session, name: str, *, claimed: bool = False) -> None:
        """claimed=True: the caller already claimed `name` on the session (Session.claim)."""
        self.name = check_name(name)
        self.session = session
        self._preclaimed = claimed
        self.prefix = (self.name + "/").encode()
        self.key = self.prefix + format(session.lease_id, "x").encode()
        self.token = 0  # my key's create_revision once known: the fencing token
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self.acquired_at_revision = 0
        self.wakeups = 0  # times this waiter was woken: once per release that made it first
        self._held = False
        # The name is ours on this session: only then is there anything to clean up.
        self._claimed = claimed
        self._queue: NameWatch | None = None
        self._interest: Interest | None = None
        self._lost_callbacks: list[Callable[[str], None]] = []
        self._acquiring: asyncio.Task[Any] | None = None  # the task acquiring, interrupted by a loss
        self._interrupted = False

    @property
    def client(self) -> CoreClient:
        return self.session.client

    @property
    def held(self) -> bool:
        return self._held

    @property
    def lease(self) -> int:
        return self.session.lease_id

    async def ensure_held(self) -> None:
        """Raise LockLost unless the lock is held right now.

        The lease's local deadline is read from the clock at this moment (not from the last timer tick,
        which a stopped process has not seen yet). While a deletion of my key could have gone unseen (the
        name's watcher is starting, resyncing after compaction, or resuming on another connection), etcd is
        asked: one linearizable read of my key. Call it before each step that acts on what the lock
        protects: a process resumed after a pause past its TTL learns here that it lost the lock."""
        if self._held and self.lost_reason is None:
            self.session.keeper.check()  # past the deadline: fires the session's loss, and so ours
        if not self._held or self.lost_reason is not None:
            raise LockLost(self._lost_message() if self.lost_reason else f"lock {self.name!r} is not held")
        if self._queue is not None and self._queue.in_doubt:
            await self._confirm_key(f"lock key {self.key.decode()} is gone from etcd")
            self.session.keeper.check()  # the read may have taken us past the deadline
            if self.lost_reason is not None:
                raise LockLost(self._lost_message())

    def is_owner(self) -> Compare:
        """A compare that holds only while this lock is mine; put it in your own Txn."""
        if not self.token:
            raise LockLost(f"lock {self.name!r} is not held")
        return Compare.create_revision(self.key, "==", self.token)

    async def txn(
        self,
        compare: list[Compare],
        success: list[Op],
        failure: list[Op] | None = None,
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        """A Txn that applies `success` only while I still own the lock (and `compare` holds).

        Raises LockLost when it was not applied because the lock is no longer mine; a result with
        ``succeeded=False`` means my lock was intact and one of `compare` failed."""
        if self.lost_reason is not None:
            raise LockLost(self._lost_message())
        # My key is read on the failure branch too, so a failure says in the same round trip whose
        # compare failed: mine (lock lost) or the caller's.
        mine = Op.get(self.key, keys_only=True)
        r = await self.client.txn(
            [self.is_owner(), *compare], success, [*(failure or []), mine], timeout=timeout
        )
        if r.succeeded:
            return r
        *responses, own = r.responses
        assert isinstance(own, GetResult)
        if not own.kvs or own.kvs[0].create_revision != self.token:
            self._mark_lost(f"lock key {self.key.decode()} was gone at revision {r.header.revision}")
            raise LockLost(self._lost_message())
        return dataclasses.replace(r, responses=responses)

    def add_lost_callback(self, fn: Callable[[str], None]) -> None:
        """fn(reason) runs once when the lock is lost (at once if it already is)."""
        if self.lost_reason is not None:
            fn(self.lost_reason)
        else:
            self._lost_callbacks.append(fn)

    # ---- acquire ----

    async def acquire(self, timeout: float | None = None) -> None:
        """Wait until the lock is mine. LockTimeout after `timeout` seconds (None: wait forever).

        LockLost as soon as the lock is lost while acquiring (the lease's local deadline passed, or my key
        was deleted), even in the middle of a call to etcd; its cleanup then goes on in the background."""
        check_lock_timeout(timeout)
        self._claim_name()
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                await self._while_interruptible_by_loss(self._acquire())
        except TimeoutError:
            if not deadline.expired():
                raise
            raise LockTimeout(
                f"lock {self.name!r} not acquired within {timeout:g}s; nothing was left behind"
            ) from None
        self._held = True

    async def try_acquire(self) -> bool:
        """Take the lock only if it is free right now; never waits and leaves no key behind if not."""
        self._claim_name()
        if not await self._while_interruptible_by_loss(self._try_acquire()):
            await shielded(self._cleanup(delete_key=True), CLEANUP_TIMEOUT)
            return False
        self._held = True
        return True

    async def _try_acquire(self) -> bool:
        my_rev, below = await self._create_key()
        await self._watching_my_key(my_rev)
        assert self._queue is not None
        if not below.complete and not below.keys:
            below = await self._lower_keys(my_rev)  # only nested names' keys in the page: look further
        if not below.all_gone(self._queue):
            return False
        self._queue.note_acquired(my_rev)
        return True

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
                    shielded(self._cleanup(delete_key=True), CLEANUP_TIMEOUT), f"lock-cleanup:{self.name}"
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

    def _claim_name(self) -> None:
        if not self._preclaimed:
            self.session.claim(self.name)
        self._claimed = True
        # Watch the queue (and my key) before my key exists, so no deletion can slip by.
        self._queue = registry_for(self.client).get(self.name, self.prefix)
        self._interest = Interest(self.key, self._own_key_deleted)
        self._queue.join(self._interest)
        self.session.keeper.add_lost_callback(self._on_session_lost)

    async def _acquire(self) -> None:
        queue, interest = self._queue, self._interest
        assert queue is not None and interest is not None
        my_rev, below = await self._create_key()
        await self._watching_my_key(my_rev)
        while not below.all_gone(queue):
            # The queue refuses a read it cannot vouch for (older than its watcher's coverage, or taken
            # while the watcher restarts): then the read below is done again once the watcher is live.
            if queue.wait_for(interest, below.keys, below.read_revision):
                await interest.turn.wait()  # set by the queue on my turn, or by _mark_lost
                if self.lost.is_set():
                    raise LockLost(self._lost_message())
                self.wakeups += 1
                if below.complete or below.floor <= queue.cleared_below:
                    break  # every key below mine is gone, and (same watcher, in order) mine is not
                # More keys were below mine than one read returns: read the next ones.
            await queue.live()  # a loss meanwhile interrupts this task (_while_interruptible_by_loss)
            below = await self._lower_keys(my_rev)
        queue.note_acquired(my_rev)

    async def _create_key(self) -> tuple[int, _Below]:
        """The acquire Txn. Returns my revision and the lock keys just below mine."""
        r = await self.client._txn_batched(self._acquire_request(), self.prefix, self.key)
        if r.succeeded:
            my_rev = r.header.revision
            top = r.responses[1].response_range
            # My key was just created: it is the top of the queue; the rest of the page is below it.
            page = [kv for kv in top.kvs if kv.create_revision < my_rev]
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

    def _page(self, read_revision: int, kvs: Sequence[Any], my_rev: int, *, more: bool) -> _Below:
        """A page of keys just below mine (descending create revision, all names under the prefix)."""
        floor = min((kv.create_revision for kv in kvs), default=my_rev)
        return _Below(read_revision, self._lock_keys(kvs), complete=not more, floor=floor)

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
            await self._confirm_key(f"lock key {self.key.decode()} vanished right after it was created")

    async def _confirm_key(self, reason: str) -> None:
        """Read my key (linearizable): LockLost unless it is still there with my revision."""
        r = await self.client.get(self.key, keys_only=True)
        if not r.kvs or r.kvs[0].create_revision != self.token:
            self._mark_lost(reason)
            raise LockLost(self._lost_message())

    def _acquire_request(self) -> pb.TxnRequest:
        """If my key does not exist: create it on my lease and read the top of the queue; else read my key.

        The same for every acquisition of this name on this session, so it is built once per session."""
        return self.session.acquire_request(self.name, self._build_acquire_request)

    def _build_acquire_request(self) -> pb.TxnRequest:
        queue_top = Op.get(
            self.prefix,
            prefix=True,
            sort_order="descend",
            sort_target="create",
            limit=_PAGE + 1,
            keys_only=True,
        )
        return txn_request(
            [Compare.create_revision(self.key, "==", 0)],
            [Op.put(self.key, b"", lease=self.lease), queue_top],
            [Op.get(self.key, keys_only=True)],
        )

    async def _lower_keys(self, my_rev: int) -> _Below:
        """Read the lock keys just below mine, together with my own key (which must still be there)."""
        if self.lost.is_set():
            raise LockLost(self._lost_message())
        r = await self.client.txn([], [self._below(my_rev), Op.get(self.key, keys_only=True)])
        page, mine = r.responses
        assert isinstance(page, GetResult) and isinstance(mine, GetResult)
        if not mine.kvs or mine.kvs[0].create_revision != my_rev:
            self._mark_lost(f"lock key {self.key.decode()} vanished while waiting (lease expired or deleted)")
            raise LockLost(self._lost_message())
        below = self._page(r.header.revision, page.kvs, my_rev, more=page.more)
        while not below.complete and not below.keys:
            # The page held only keys of names nested under ours (a/b/... under a/): page on down.
            page = await self.client.get(
                self.prefix,
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

    def _below(self, rev: int) -> Op:
        return Op.get(
            self.prefix,
            prefix=True,
            max_create_revision=rev - 1,
            sort_order="descend",
            sort_target="create",
            limit=_PAGE,
            keys_only=True,
        )

    def _lock_keys(self, kvs: Iterable[KeyValue | kv_pb2.KeyValue]) -> dict[bytes, int]:
        """The lock keys of this name among kvs, with their create revisions (what a waiter waits for)."""
        return {kv.key: kv.create_revision for kv in kvs if self._is_lock_key(kv.key)}

    def _is_lock_key(self, key: bytes) -> bool:
        return is_lock_key(self.prefix, key)

    # ---- loss ----

    def _own_key_deleted(self, revision: int) -> None:
        # Deletions of an earlier incarnation of the same key (a previous lock on this session) predate it.
        if self.token and revision > self.token:
            self._mark_lost(f"lock key {self.key.decode()} was deleted at revision {revision}")

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
            acquiring.cancel("etcdlock: lock lost while acquiring")
        callbacks, self._lost_callbacks = self._lost_callbacks, []
        for fn in callbacks:
            try:
                fn(reason)
            except Exception:
                log.exception("lost-callback of lock %r failed", self.name)

    def _lost_message(self) -> str:
        return f"lock {self.name!r} lost: {self.lost_reason}"

    # ---- release ----

    async def release(self, *, delete_key: bool = True) -> None:
        """Give the lock up: delete my key if it is still mine. Idempotent; shielded, own deadline.

        delete_key=False leaves deletion to the caller (who is about to revoke the lease anyway)."""
        self._held = False
        await shielded(self._cleanup(delete_key), CLEANUP_TIMEOUT)

    async def _cleanup(self, delete_key: bool) -> None:
        if not self._claimed:
            return  # never claimed (e.g. AlreadyHeldError): the key, if any, is somebody else's
        self._claimed = False
        self._leave_queue()
        if not delete_key:
            self.session.unclaim(self.name)
            return
        try:
            # Within the cleanup's own deadline, so a failure is known before that deadline cuts it off.
            await self._delete_key(CLEANUP_TIMEOUT * 0.8)
        except EtcdError as e:
            if self._session_alive():
                # The session lives on (it is shared), so its lease would never take the key away: the
                # name's queue would wait behind it for good. Keep at it in the background until it lands
                # (the delete is guarded, safe to repeat) or the session ends; the name stays ours until.
                stats_for(self.client).release_retries += 1
                log.warning("could not delete lock key %s yet (%s); retrying", self.key.decode(), e)
                self.client._spawn_owned(self._delete_until_done(), f"lock-release:{self.name}")
                return
            stats_for(self.client).release_failures += 1
            log.warning(
                "could not delete lock key %s (%s); it goes with lease %x", self.key.decode(), e, self.lease
            )
        self.session.unclaim(self.name)

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
                    log.info("lock key %s still not deleted (%s); retrying", self.key.decode(), e)
                    await asyncio.sleep(backoff(failures))
        finally:
            self.session.unclaim(self.name)

    def _leave_queue(self) -> None:
        # After this no loss can be reported, so the callbacks go too: they point back at their owners
        # (the Lock), and keeping them would make every released lock garbage for the cyclic GC.
        self._lost_callbacks.clear()
        self.session.keeper.remove_lost_callback(self._on_session_lost)
        queue, interest, self._queue, self._interest = self._queue, self._interest, None, None
        if queue is not None and interest is not None:
            queue.leave(interest)

    def __repr__(self) -> str:
        state = "held" if self._held else "lost" if self.lost_reason else "not held"
        return f"<Mutex {self.name!r} key={self.key.decode()} token={self.token} {state}>"


__all__ = ["Mutex", "check_name", "is_lock_key"]
