"""Leader election: Go's concurrency.Election protocol, so Go services and `etcdctl elect` take part.

The wire contract we share with Go (and `etcdctl elect`): a candidate's key is NAME/<lowercase hex of its
lease id>, its value the candidate's proposal, on its lease; the leader is the candidate with the lowest
create_revision. It is the mutex's queue (mutex.py) with a value, so campaigning, waiting, loss and
resigning are the shared queue's (contender.py); leadership is waited for on the live watch, from the
revision after the read (Go waits from a past revision, answered on etcd's 100 ms sync tick).

  * `proclaim(value)` puts a new value on our key only while it is still the one we created (guarded by
    our create revision), as Go's Proclaim does: a deposed leader gets LockLost, never a silent write.
  * `leader()` reads the lowest candidate key; `observe()` lists the candidates, then watches NAME/ from
    the list's revision + 1 on the client's shared watch stream and yields each new leader or value. A
    failover resumes the watch where it was (watch.py); a compaction makes it list again, and only a
    leader that differs from the last one yielded is yielded: no repeats, and never a stale leader.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Unpack

from etcdlock._core.errors import CompactedError, ConfigError, WatchOverflowError
from etcdlock._core.txn import Op
from etcdlock._core.types import EventType, KeyValue, WatchEvent
from etcdlock._core.watch import Watcher
from etcdlock._recipes.contender import QueueSpec
from etcdlock._recipes.holdable import Holdable, HoldOptions
from etcdlock._recipes.mutex import check_name, is_lock_key, queue_spec
from etcdlock._recipes.session import DEFAULT_TTL, Session
from etcdlock._recipes.state import RecipeClient

# Candidates read per page by leader(); more pages only when keys of nested names come first.
_PAGE = 16


@dataclass(frozen=True, slots=True)
class Leader:
    """An election's leader as etcd says: its proposal (the value of its key), key and token."""

    name: str
    """The election's name."""
    key: str
    """The leader's key, NAME/<lease hex>."""
    value: bytes
    """The leader's proposal (or the value it proclaimed since), as stored."""
    token: int
    """The leader's key's create_revision: its fencing token (a new leader's is higher)."""
    lease: int
    """The lease the leader's key is on."""
    revision: int
    """The etcd revision at which this was the leader."""

    @property
    def proposal(self) -> str:
        """The value as text (UTF-8; bytes that are not are replaced)."""
        return self.value.decode(errors="replace")


def check_proposal(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    raise ConfigError(f"an election proposal must be str or bytes, not {type(value).__name__}")


class Term(Holdable):
    """A candidacy in an election: ``async with election.campaign("node-1") as term:`` runs the body while
    we lead; leaving the block resigns. Reusable like a Lock: acquiring it again campaigns again (with the
    value last proclaimed).

    While leading, `key`, `token` (the fencing token), `lease`, `lost`, `ensure_held()`, `is_owner()`,
    `txn()` and `add_lost_callback()` are those of the current term, as on a Lock.
    """

    def __init__(
        self, client: RecipeClient, name: str, proposal: bytes, **options: Unpack[HoldOptions]
    ) -> None:
        super().__init__(client, name, **options)
        self._value = proposal

    def _spec(self) -> QueueSpec:
        return queue_spec("election", self.name, self._value)

    @property
    def value(self) -> bytes:
        """Our proposal: what we campaign with, and what we proclaimed last."""
        return self._value

    async def proclaim(self, value: str | bytes, *, timeout: float | None = None) -> None:
        """Announce a new value as leader (observers see it), only while we still lead.

        Raises LockLost if we no longer lead (nothing was written), NotAcquiredError if we do not hold a
        term, ConfigError for a value that is not str or bytes, EtcdError if etcd fails."""
        data = check_proposal(value)
        contender = self.contender
        await contender.txn([], [Op.put(contender.key, data, lease=contender.lease)], timeout=timeout)
        self._value = data
        self._spec_cache = None  # a later campaign of this term puts the value proclaimed last

    async def resign(self) -> None:
        """Give up leadership (or the candidacy): our key is deleted if it is still ours. Idempotent."""
        await self.release()


class Election:
    """An election on NAME: campaign for it, read its leader, observe its leaders."""

    def __init__(self, client: RecipeClient, name: str) -> None:
        self._client = client
        self.name = check_name(name, "election")
        """The election's name: its candidates' keys are NAME/<lease hex>."""
        self._prefix = (self.name + "/").encode()

    def campaign(
        self,
        proposal: str | bytes,
        *,
        ttl: int = DEFAULT_TTL,
        timeout: float | None = None,
        session: Session | None = None,
        cancel_on_loss: bool = False,
    ) -> Term:
        """A candidacy with `proposal` (nothing is sent yet): ``async with election.campaign("node-1",
        timeout=30) as term:`` returns once we lead, or raises LockTimeout after `timeout` seconds (None:
        wait as long as it takes) with our candidacy withdrawn; ``await term.acquire()`` returns False
        instead. Leaving the block resigns. Without `session=` the key goes on the client's default session
        for `ttl`. cancel_on_loss=True cancels the body when leadership is lost (the block then raises
        LockLost). Raises ConfigError for a bad proposal, ttl or timeout."""
        return Term(
            self._client,
            self.name,
            check_proposal(proposal),
            ttl=ttl,
            timeout=timeout,
            session=session,
            cancel_on_loss=cancel_on_loss,
        )

    async def leader(self, *, timeout: float | None = None) -> Leader | None:
        """The current leader (None if there is no candidate), as etcd says now (a linearizable read).
        Raises EtcdError if etcd fails; `timeout` bounds each call."""
        max_revision = 0
        revision = 0
        while True:
            r = await self._client.get(
                self._prefix,
                prefix=True,
                sort_order="ascend",
                sort_target="create",
                min_create_revision=max_revision + 1 if max_revision else 0,
                limit=_PAGE,
                revision=revision,
                timeout=timeout,
            )
            revision = revision or r.header.revision
            for kv in r.kvs:
                if is_lock_key(self._prefix, kv.key):
                    return self._leader(kv, revision)
            if not r.more or not r.kvs:
                return None
            max_revision = r.kvs[-1].create_revision  # only nested names' keys so far: page on

    async def observe(self) -> AsyncGenerator[Leader, None]:
        """Each new leader, and each value a leader proclaims, from the current one on (``async for
        leader in election.observe():``). Waits while there is no leader. Runs on the client's shared
        watch stream; it resumes by itself after a failover, and lists the candidates again after a
        compaction, without repeating a leader or yielding a stale one. Leaving the loop ends the watch
        (at once with ``async with contextlib.aclosing(election.observe()) as leaders:``, else when the
        event loop finalizes the generator)."""
        last: tuple[bytes, int, bytes] | None = None
        while True:
            listed = await self._client.get(self._prefix, prefix=True)
            candidates = {kv.key: kv for kv in listed.kvs if is_lock_key(self._prefix, kv.key)}
            now = self._lowest(candidates, listed.header.revision)
            if now is not None and _identity(now) != last:
                last = _identity(now)
                yield now
            watcher = self._client.watch(self._prefix, prefix=True, start_revision=listed.header.revision + 1)
            try:
                async for batch in _by_revision(watcher):
                    _apply(candidates, batch, functools.partial(is_lock_key, self._prefix))
                    now = self._lowest(candidates, batch[-1].revision)
                    if now is not None and _identity(now) != last:
                        last = _identity(now)
                        yield now
            except (CompactedError, WatchOverflowError):
                continue  # what happened meanwhile is gone from etcd's history: list again
            finally:
                watcher.cancel()
            return  # the watch ended (cancelled): so does the observation

    def _lowest(self, candidates: dict[bytes, KeyValue], revision: int) -> Leader | None:
        if not candidates:
            return None
        return self._leader(min(candidates.values(), key=lambda kv: kv.create_revision), revision)

    def _leader(self, kv: KeyValue, revision: int) -> Leader:
        return Leader(
            self.name, kv.key.decode(errors="replace"), kv.value, kv.create_revision, kv.lease, revision
        )

    def __repr__(self) -> str:
        return f"<Election {self.name!r}>"


def _identity(leader: Leader) -> tuple[bytes, int, bytes]:
    return (leader.key.encode(), leader.token, leader.value)


async def _by_revision(watcher: Watcher) -> AsyncIterator[list[WatchEvent]]:
    """The events of one revision at a time (one Txn can delete a leader and change another key: only
    the state after the whole revision is a state etcd was in)."""
    batch: list[WatchEvent] = []
    iterator = aiter(watcher)
    while True:
        try:
            if batch and not watcher.buffered:
                yield batch
                batch = []
            event = await anext(iterator)
        except StopAsyncIteration:
            if batch:
                yield batch
            return
        if batch and event.revision != batch[-1].revision:
            yield batch
            batch = []
        batch.append(event)


def _apply(
    candidates: dict[bytes, KeyValue], events: Iterable[WatchEvent], is_candidate: Callable[[bytes], bool]
) -> None:
    for event in events:
        if not is_candidate(event.kv.key):
            continue
        if event.type is EventType.DELETE:
            candidates.pop(event.kv.key, None)
        else:
            candidates[event.kv.key] = event.kv


__all__ = ["Election", "Leader", "Term"]
