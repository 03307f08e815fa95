"""The lock queue as this client sees it: one watcher per lock name, shared by every local lock of that name.

A lock's waiting and its loss detection both come down to "tell me when these keys are deleted":
  * a waiter needs to know when every lock key below its own is gone (then the lock is its own);
  * a waiter or holder needs to know when its own key is gone (then the lock is lost).
One watcher on NAME/ (deletions only, started "from now" so etcd serves it live) answers both for all local
locks of NAME, with no watch created or cancelled per acquisition. Events of one watcher arrive in revision
order, so when the last key below mine is reported deleted, a deletion of my own key before it has already
been reported: "all keys below mine are gone and mine is not" needs no extra read.

Deletions that arrive before a waiter registers its keys (the watch event can overtake the reply of the read
that found them) are kept in `recent`, so registering never misses one. Only an acquisition in progress can
need them, so they are kept only while one is (`acquiring`), and dropped when the last one finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import deque
from collections.abc import Callable, Iterable

from etcdlock.core.client import Client
from etcdlock.core.errors import EtcdError
from etcdlock.core.types import WatchEvent
from etcdlock.core.watch import Watcher

log = logging.getLogger("etcdlock.queue")

_RECENT = 4096  # deletions remembered for late registrations
LINGER = 1.0  # seconds a name's watcher outlives its last lock


class Interest:
    """One local lock's stake in a name: the keys it waits on and its own key."""

    def __init__(self, own_key: bytes, on_own_deleted: Callable[[int], None]) -> None:
        self.own_key = own_key
        self.on_own_deleted = on_own_deleted
        self.waiting_on: set[bytes] = set()
        self.turn = asyncio.Event()  # set when waiting_on became empty
        self.stale = False  # the watcher restarted: what we know may be incomplete, read again


class NameWatch:
    """The shared deletion watcher of one lock name on one client."""

    def __init__(
        self, client: Client, name: str, prefix: bytes, on_empty: Callable[[NameWatch], None]
    ) -> None:
        self.client = client
        self.name = name
        self.prefix = prefix
        self._on_empty = on_empty
        self.interests: set[Interest] = set()
        self._by_key: dict[bytes, set[Interest]] = {}
        self._own: dict[bytes, Interest] = {}
        self.recent: deque[tuple[int, bytes]] = deque(maxlen=_RECENT)
        self.acquiring = 0  # local acquisitions between their first read and their outcome
        self.events = 0
        self.watcher = self._new_watcher()
        self._task = client.spawn_owned(self._supervise(), f"lock-queue:{name}")
        self.expiry: asyncio.TimerHandle | None = None

    def _new_watcher(self) -> Watcher:
        w = self.client.watch(self.prefix, prefix=True, no_put=True)
        # Deletions are handled right on the stream's reader: a release wakes the next holder with no
        # extra task switch in between.
        w.on_events = self._on_events
        w.start()
        return w

    def _on_events(self, events: list[WatchEvent]) -> None:
        for event in events:
            self._dispatch(event.kv.key, event.revision)

    async def created_revision(self) -> int:
        """The revision from which this watcher sees every deletion (waits for etcd's create reply)."""
        return await self.watcher.wait_created()

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

    def wait_for(self, interest: Interest, keys: Iterable[bytes], read_revision: int) -> bool:
        """Register the keys (read at read_revision) that must all be deleted before interest's turn.

        False if the deletions since read_revision are no longer all known (the caller reads again)."""
        if self.recent and len(self.recent) == self.recent.maxlen and self.recent[0][0] > read_revision:
            return False
        pending = set(keys)
        for rev, k in reversed(self.recent):
            if rev <= read_revision:
                break
            pending.discard(k)
        self._unwait(interest)
        interest.turn.clear()
        interest.waiting_on = pending
        for k in pending:
            self._by_key.setdefault(k, set()).add(interest)
        if not pending:
            interest.turn.set()
        return True

    def _unwait(self, interest: Interest) -> None:
        for k in interest.waiting_on:
            waiters = self._by_key.get(k)
            if waiters is not None:
                waiters.discard(interest)
                if not waiters:
                    del self._by_key[k]
        interest.waiting_on = set()

    # ---- watcher supervision ----

    async def _supervise(self) -> None:
        """Events arrive through _on_events; this only wakes up when the watcher ends."""
        while True:
            try:
                await self.watcher.next_event()
                continue  # not reached: with on_events set nothing is buffered
            except StopAsyncIteration:
                return  # closed
            except EtcdError as e:
                # Compaction on resume, overflow, server cancel: start over from now and have everyone
                # read again; nothing may be assumed about deletions we did not see.
                log.info("lock queue watch on %s ended (%s); restarting", self.name, e)
                self.watcher.cancel()
                self.watcher = self._new_watcher()
                for interest in list(self.interests):
                    interest.stale = True
                    self._unwait(interest)
                    interest.turn.set()

    def begin_acquire(self) -> None:
        self.acquiring += 1

    def end_acquire(self) -> None:
        self.acquiring -= 1
        if not self.acquiring:
            self.recent.clear()

    def _dispatch(self, key: bytes, revision: int) -> None:
        self.events += 1
        if self.acquiring:
            self.recent.append((revision, key))
        owner = self._own.get(key)
        if owner is not None:
            owner.on_own_deleted(revision)
        for interest in self._by_key.pop(key, ()):
            interest.waiting_on.discard(key)
            if not interest.waiting_on:
                interest.turn.set()

    async def close(self) -> None:
        self.watcher.cancel()
        task = self._task
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


class QueueRegistry:
    """The NameWatches of one client, keyed by lock name (a stable identity: one per name, never per call).

    A name's watcher lingers for `linger` seconds after its last lock leaves, so a name locked again and
    again (the usual pattern) keeps one watcher instead of creating and cancelling one per acquisition.
    """

    def __init__(self, client: Client, linger: float = LINGER) -> None:
        self.client = client
        self.linger = linger
        self.names: dict[str, NameWatch] = {}
        client.add_close_hook(self.close)

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
        self.client.spawn_owned(nw.close(), f"lock-queue-close:{nw.name}")

    async def close(self) -> None:
        """Client closing: cancel every linger timer and close every watcher now."""
        watches, self.names = list(self.names.values()), {}
        for nw in watches:
            if nw.expiry is not None:
                nw.expiry.cancel()
                nw.expiry = None
            await nw.close()


_registries: weakref.WeakKeyDictionary[Client, QueueRegistry] = weakref.WeakKeyDictionary()


def registry_for(client: Client) -> QueueRegistry:
    reg = _registries.get(client)
    if reg is None:
        reg = _registries[client] = QueueRegistry(client)
    return reg
