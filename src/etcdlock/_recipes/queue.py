"""The queue of a recipe's name as this client sees it: one watcher per name, shared by every local holder
and waiter of that name (a lock, an election, a semaphore or a read/write lock).

A lock's waiting and its loss detection both come down to "tell me when these keys are deleted":
  * a waiter needs to know when every lock key below its own is gone (then the lock is its own);
  * a waiter or holder needs to know when its own key is gone (then the lock is lost).
One watcher on NAME/ (deletions only, started "from now" so etcd serves it live) answers both for all local
locks of NAME, with no watch created or cancelled per acquisition. Events of one watcher arrive in revision
order, so when the last key below mine is reported deleted, a deletion of my own key before it has already
been reported: "all keys below mine are gone and mine is not" needs no extra read.

Gap-free restarts. The watcher starts "from now" the first time; etcd's create reply names the revision W
from which it reports every deletion, and any read of the queue at a revision >= W can be trusted together
with it. When a watch resume comes back compacted (or etcd ends the watch), deletions between the last one
seen and "now" are unknown, so the restart is a list-then-watch: read the whole queue at revision R, start
the new watcher at R + 1, and settle every registered lock against that read (a key it waited for is gone:
one fewer to wait for; its own key is gone or newer: lost). Until that is done the name is "in doubt":
registrations are refused (the caller reads again once the watcher is live) and `ensure_held()` asks etcd.

Deletions that arrive before a waiter registers its keys (the watch event can overtake the reply of the read
that found them) are kept in `recent`, so registering never misses one. Only an acquisition in progress can
need them, so they are kept only while one is (`acquiring`), and dropped when the last one finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from etcdlock._core.client import CoreClient
from etcdlock._core.errors import CompactedError, EtcdError, WatchError
from etcdlock._core.flag import Flag
from etcdlock._core.tasks import backoff
from etcdlock._core.types import WatchEvent
from etcdlock._core.watch import Watcher

log = logging.getLogger("etcdlock.queue")

_RECENT = 4096  # deletions remembered for late registrations
LINGER = 1.0  # seconds a name's watcher outlives its last lock


class Interest:
    """One local lock's stake in a name: the keys it waits on and its own key."""

    def __init__(self, own_key: bytes, on_own_deleted: Callable[[int], None], *, slack: int = 0) -> None:
        self.own_key = own_key
        self.on_own_deleted = on_own_deleted
        self.own_revision = 0  # my key's create_revision once known: a resync checks it is still there
        # Lock keys to be deleted before my turn, each with the create revision it had when read: a lock
        # name's key is the same string every time a session locks it again, so only a deletion after
        # that revision (or the key absent, or newer, in a resync's read) means the one I wait for is gone.
        self.waiting_on: dict[bytes, int] = {}
        # How many of them may remain when it is my turn: 0, or a semaphore's limit - 1.
        self.slack = slack
        self.turn = Flag()  # set when at most `slack` keys are left in waiting_on


class NameWatch:
    """The shared deletion watcher of one lock name on one client."""

    def __init__(
        self, client: CoreClient, name: str, prefix: bytes, on_empty: Callable[[NameWatch], None]
    ) -> None:
        self.client = client
        self.name = name
        self.prefix = prefix
        self._on_empty = on_empty
        self.interests: set[Interest] = set()
        self._by_key: dict[bytes, set[Interest]] = {}
        self._own: dict[bytes, Interest] = {}
        self.recent: list[tuple[int, bytes]] = []  # (revision, key), oldest first, at most _RECENT
        self._forgotten = 0  # the latest revision of a deletion dropped from `recent` to keep it short
        self.acquiring = 0  # local acquisitions between their first read and their outcome
        self.events = 0
        self.resyncs = 0  # list-then-watch restarts after a compacted or ended watch
        # Every lock key created before this revision is gone for good: a local lock acquired at it (then
        # nothing was below it, and no key can be created below it later). A waiter whose page of keys
        # below is all gone needs no further read once its page reaches down to here.
        self.cleared_below = 0
        # Reads of the queue at this revision or later can be trusted with the watcher: every deletion
        # after it is dispatched (or settled by a resync). 0 while the watcher is not live yet.
        self.covered_from = 0
        self._live = Flag()
        self._resyncing: asyncio.Task[None] | None = None
        self._closed = False
        # From just after the latest revision this client saw, not from "now": the watch then covers the
        # key a lock is about to create even when its create is answered after the key's Txn (thousands of
        # new names at once), and the lock need not read its key again to know it was not deleted meanwhile.
        self._first_start = client._revision_seen + 1 if client._revision_seen else 0
        # No task per name while all is well (thousands of names are held at once): the watcher reports
        # its creation and its end through callbacks, and a task exists only while a resync runs.
        self.watcher = self._new_watcher(self._first_start)
        self.watcher.on_created = self._first_created
        self.expiry: asyncio.TimerHandle | None = None

    def _new_watcher(self, start_revision: int) -> Watcher:
        w = self.client.watch(self.prefix, prefix=True, no_put=True, start_revision=start_revision)
        # Deletions are handled right on the stream's reader: a release wakes the next holder with no
        # extra task switch in between.
        w.on_events = self._on_events
        w.on_failed = self._watch_failed
        w.start()
        return w

    def _on_events(self, events: list[WatchEvent]) -> None:
        for event in events:
            self._dispatch(event.kv.key, event.revision)

    async def live(self) -> int:
        """Wait until the watcher is live; returns the revision from which queue reads can be trusted."""
        while not self._live.is_set():
            await self._live.wait()
        return self.covered_from

    @property
    def in_doubt(self) -> bool:
        """True while a deletion under this name may have happened unseen: the watcher is being started
        or resynced, or its stream is resuming on another connection."""
        return not self._live.is_set() or self.watcher.watch_id is None

    @property
    def position(self) -> int:
        """Every deletion up to this revision has been dispatched."""
        return self.watcher.next_revision - 1

    # ---- membership ----

    def join(self, interest: Interest) -> None:
        self.interests.add(interest)
        self._own[interest.own_key] = interest

    def leave(self, interest: Interest) -> None:
        self._unwait(interest)
        self.interests.discard(interest)
        if self._own.get(interest.own_key) is interest:
            del self._own[interest.own_key]
        if not self.interests:
            self._on_empty(self)

    def own_key_deleted_after(self, key: bytes, revision: int) -> int | None:
        """The revision at which key was deleted after `revision`, if the watcher already reported it."""
        for rev, k in reversed(self.recent):
            if rev <= revision:
                break
            if k == key:
                return rev
        return None

    def wait_for(self, interest: Interest, keys: Mapping[bytes, int], read_revision: int) -> bool:
        """Register the keys (read at read_revision, with their create revisions) that must all be deleted
        before interest's turn.

        False if the deletions since read_revision are not all known (the watcher is not live, started
        after the read, or the read is older than the remembered deletions): the caller reads again."""
        if not self._live.is_set() or read_revision < self.covered_from:
            return False
        if self._forgotten > read_revision:
            return False
        pending = dict(keys)
        for rev, k in reversed(self.recent):
            if rev <= read_revision:
                break
            pending.pop(k, None)  # deleted after the read: the very key that was read
        self._unwait(interest)
        interest.turn.clear()
        interest.waiting_on = pending
        for k in pending:
            self._by_key.setdefault(k, set()).add(interest)
        if len(pending) <= interest.slack:
            interest.turn.set()
        return True

    def unwait(self, interest: Interest) -> None:
        """Interest holds now: it waits for nothing any more."""
        self._unwait(interest)

    def _unwait(self, interest: Interest) -> None:
        for k in interest.waiting_on:
            self._stop_waiting(interest, k)
        interest.waiting_on = {}

    def _stop_waiting(self, interest: Interest, key: bytes) -> None:
        waiters = self._by_key.get(key)
        if waiters is not None:
            waiters.discard(interest)
            if not waiters:
                del self._by_key[key]

    # ---- watcher supervision ----
    # The queue must outlive every fault while locks depend on it (they wait for it to be live), so
    # anything the watcher ends with, expected or not, leads to a resync.

    def _first_created(self, revision: int) -> None:
        self.covered_from = self._first_start - 1 if self._first_start else revision
        self._live.set()

    def _watch_failed(self, error: BaseException) -> None:
        if self._closed or self._resyncing is not None or self.client.closed:
            return  # closing; or the resync in progress sees this watcher's error itself
        # Compaction on resume, server cancel: deletions since the last one seen are unknown.
        level = logging.INFO if isinstance(error, EtcdError) else logging.WARNING  # unexpected
        log.log(level, "lock queue watch on %s ended (%r); resyncing", self.name, error)
        self._resyncing = self.client._spawn_owned(self._resync(), f"lock-queue-resync:{self.name}")

    async def _resync(self) -> None:
        """List, then watch from the list's revision + 1, then settle every lock against the list.

        Repeated until the new watcher is created (a compaction may overtake the read again)."""
        self._live.clear()
        self.resyncs += 1
        try:
            await self._resync_until_live()
        finally:
            self._resyncing = None

    async def _resync_until_live(self) -> None:
        failures = 0
        while not self.client.closed and not self._closed:
            self.watcher.cancel()
            try:
                listed = await self.client.get(self.prefix, prefix=True, keys_only=True)
                self.watcher = self._new_watcher(listed.header.revision + 1)
                await self.watcher.wait_created()
            except (CompactedError, WatchError) as e:
                log.info("lock queue watch on %s: resync overtaken (%s); again", self.name, e)
                continue
            except Exception as e:  # unreachable etcd, or anything unexpected: never give up on the name
                failures += 1
                log.info("lock queue watch on %s: resync failed (%r); retrying", self.name, e)
                await asyncio.sleep(backoff(failures))
                continue
            self._settle(listed.header.revision, {kv.key: kv.create_revision for kv in listed.kvs})
            self.covered_from = listed.header.revision
            self._live.set()
            return

    def _settle(self, revision: int, present: dict[bytes, int]) -> None:
        """Apply what a full read of the queue at `revision` says to every registered lock."""
        for key, waiters in list(self._by_key.items()):
            for interest in list(waiters):
                if present.get(key) != interest.waiting_on[key]:
                    self._done_waiting(interest, key)  # gone, or created anew since
        for interest in list(self.interests):
            mine = interest.own_revision
            if mine and mine <= revision and present.get(interest.own_key) != mine:
                interest.on_own_deleted(revision)

    def note_acquired(self, revision: int) -> None:
        """A local lock whose key was created at `revision` holds the lock: nothing is below it."""
        self.cleared_below = max(self.cleared_below, revision)

    def begin_acquire(self) -> None:
        self.acquiring += 1

    def end_acquire(self) -> None:
        self.acquiring -= 1
        if not self.acquiring:
            self.recent.clear()
            self._forgotten = 0

    def _dispatch(self, key: bytes, revision: int) -> None:
        self.events += 1
        if self.acquiring:
            self.recent.append((revision, key))
            if len(self.recent) > _RECENT:
                dropped, self.recent = self.recent[: _RECENT // 2], self.recent[_RECENT // 2 :]
                self._forgotten = max(self._forgotten, dropped[-1][0])
        owner = self._own.get(key)
        if owner is not None:
            owner.on_own_deleted(revision)
        for interest in list(self._by_key.get(key, ())):
            if interest.waiting_on[key] < revision:  # not a deletion of an older incarnation
                self._done_waiting(interest, key)

    def _done_waiting(self, interest: Interest, key: bytes) -> None:
        """The key interest waited for is gone: one fewer to wait for."""
        del interest.waiting_on[key]
        self._stop_waiting(interest, key)
        if len(interest.waiting_on) == interest.slack:  # exactly once: the deletion that lets it in
            interest.turn.set()

    async def close(self) -> None:
        self._closed = True
        self.watcher.cancel()
        # The watcher's callbacks are this object's methods: left in place, the two would make a cycle
        # that only the cyclic GC frees, one for every name whose watcher expires.
        self.watcher.on_events = self.watcher.on_failed = self.watcher.on_created = None
        task = self._resyncing
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


class QueueRegistry:
    """The NameWatches of one client, keyed by lock name (a stable identity: one per name, never per call).

    A name's watcher lingers for `linger` seconds after its last lock leaves, so a name locked again and
    again (the usual pattern) keeps one watcher instead of creating and cancelling one per acquisition.
    """

    def __init__(self, client: CoreClient, linger: float = LINGER) -> None:
        self.client = client
        self.linger = linger
        self.names: dict[str, NameWatch] = {}
        client._add_close_hook(self.close)

    def get(self, name: str, prefix: bytes) -> NameWatch:
        nw = self.names.get(name)
        if nw is None:
            nw = self.names[name] = NameWatch(self.client, name, prefix, self._idle)
        elif nw.expiry is not None:
            nw.expiry.cancel()
            nw.expiry = None
        return nw

    def _idle(self, nw: NameWatch) -> None:
        if self.names.get(nw.name) is not nw:
            return
        if nw.expiry is not None:
            nw.expiry.cancel()
        nw.expiry = asyncio.get_running_loop().call_later(self.linger, self._expire, nw)

    def _expire(self, nw: NameWatch) -> None:
        nw.expiry = None
        if nw.interests or self.names.get(nw.name) is not nw or self.client.closed:
            return
        del self.names[nw.name]
        self.client._spawn_owned(nw.close(), f"lock-queue-close:{nw.name}")

    async def close(self) -> None:
        """CoreClient closing: cancel every linger timer and close every watcher now."""
        watches, self.names = list(self.names.values()), {}
        for nw in watches:
            if nw.expiry is not None:
                nw.expiry.cancel()
                nw.expiry = None
            await nw.close()


__all__ = ["Interest", "NameWatch", "QueueRegistry"]
