"""What etcd says of a recipe's name right now: its kind, who holds it and who waits, in queue order.

`client.lock_status(name)` reads the keys under NAME/ in one Range (by create revision) and tells the recipe
from the keys alone, as any process (ours, Go's, etcdctl's) leaves them:

  * keys NAME/read/<id> or NAME/write/<id>: a read/write lock (contrib/recipes RWMutex). The readers below
    the first writer hold together, or the first writer alone; the rest wait.
  * keys NAME/<hex> whose values are all the same decimal number: a semaphore of that limit. The first
    `limit` keys hold; the rest wait.
  * keys NAME/<hex> with values: an election (concurrency.Election, etcdctl elect). The first key is the
    leader, its value the leader's proposal; the rest are candidates.
  * keys NAME/<hex> without values: a lock (concurrency.Mutex, etcdctl lock). The first key holds.

The keys cannot tell everything: an election whose candidates all propose the same number reads as a
semaphore, one whose candidates propose nothing as a lock (who holds is the same either way). The TTLs left
on the keys' leases come from LeaseTimeToLive right after the Range, one call per lease, all at once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from etcdlock._core.errors import ConfigError
from etcdlock._core.types import KeyValue
from etcdlock._recipes.mutex import check_name, is_lock_key
from etcdlock._recipes.state import RecipeClient

Kind = Literal["lock", "election", "semaphore", "rwlock"]
KINDS: tuple[Kind, ...] = ("lock", "election", "semaphore", "rwlock")

# A read/write lock's key: ours end in the lease's hex, Go's RWMutex's in a UnixNano time (decimal).
_RW_SUFFIX = re.compile(rb"[0-9a-f]+")
_LOCK_KEY = re.compile(rb"^(?P<name>.+)/(?P<lease>[0-9a-f]+)$")
_RW_KEY = re.compile(rb"^(?P<name>.+)/(?:read|write)/[0-9a-f]+$")


@dataclass(frozen=True, slots=True)
class LockHolder:
    """One key in a queue: a holder's, or a waiter's."""

    key: str  # NAME/<lease hex> (a read/write lock's: NAME/read/<id>, NAME/write/<id>)
    lease: int  # the lease the key is on (0: none)
    ttl_left: int  # seconds left on that lease when asked; -1 if it is gone (or the key has none)
    token: int  # the key's create_revision: the holder's fencing token, a waiter's place in the queue
    value: bytes = b""  # the key's value: an election candidate's proposal, a semaphore's limit

    @property
    def mode(self) -> str | None:
        """A read/write lock's key: "read" or "write"; None for the other recipes."""
        parts = self.key.rsplit("/", 2)
        return parts[1] if len(parts) == 3 and parts[1] in ("read", "write") else None


@dataclass(frozen=True, slots=True)
class LockStatus:
    """A recipe's queue as read at `revision`: `holder` None when nobody holds it (then no one waits).

    `holder` is the first holder (a lock's, an election's leader, the oldest of several); `holders` every
    one of them: several for a semaphore (up to `limit`) or for the readers of a read/write lock."""

    name: str
    holder: LockHolder | None
    waiters: tuple[LockHolder, ...]  # in queue order: the next holder first
    revision: int  # the etcd revision the queue was read at
    kind: Kind = "lock"  # what the keys say: "lock", "election", "semaphore" or "rwlock"
    holders: tuple[LockHolder, ...] = ()  # every holder, `holder` first (given only `holder`: just it)
    limit: int | None = None  # a semaphore's limit, as its keys say; None for the other kinds

    def __post_init__(self) -> None:
        if self.holder is not None and not self.holders:
            object.__setattr__(self, "holders", (self.holder,))


async def lock_status(client: RecipeClient, name: str, *, timeout: float | None = None) -> LockStatus:
    """The kind, holders and waiters of `name` now. `timeout` bounds each call to etcd (the client's
    timeout by default). Raises ConfigError for a bad name, EtcdError if etcd fails."""
    return await recipe_status(client, name, timeout=timeout)


async def recipe_status(
    client: RecipeClient, name: str, *, kind: Kind | None = None, timeout: float | None = None
) -> LockStatus:
    """lock_status(), told the kind (None: from the keys). A name can have both a read/write lock's keys
    and another recipe's (NAME/read/... besides NAME/<hex>): kind="rwlock" reads the first, another
    kind the second; None the second if there are any."""
    check_name(name)
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    prefix = (name + "/").encode()
    r = await client.get(prefix, prefix=True, sort_order="ascend", sort_target="create", timeout=timeout)
    direct = [kv for kv in r.kvs if is_lock_key(prefix, kv.key)]
    if kind is None:
        kind = "rwlock" if not direct and any(_is_rw_key(prefix, kv.key) for kv in r.kvs) else None
    limit = None
    if kind == "rwlock":
        queue = [kv for kv in r.kvs if _is_rw_key(prefix, kv.key)]
        held = _rw_holders(queue, prefix)
    else:
        queue = direct
        kind = kind or _kind_of([kv.value for kv in queue])
        if kind == "semaphore":
            # The oldest key's limit is the one in force (keys with another are refused by acquirers).
            limit = int(queue[0].value) if queue and queue[0].value.isdigit() else None
        held = min(len(queue), limit or 1)
    entries = await _entries(client, queue, timeout)
    holders, waiters = entries[:held], entries[held:]
    return LockStatus(name, holders[0] if holders else None, waiters, r.header.revision, kind, holders, limit)


def _kind_of(values: Sequence[bytes]) -> Kind:
    """A queue of NAME/<hex> keys: which recipe its values say it is."""
    if values and values[0].isdigit() and int(values[0]) >= 1 and all(v == values[0] for v in values):
        return "semaphore"
    return "election" if any(values) else "lock"


def _is_rw_key(prefix: bytes, key: bytes) -> bool:
    rest = key[len(prefix) :] if key.startswith(prefix) else b""
    mode, _, suffix = rest.partition(b"/")
    return mode in (b"read", b"write") and _RW_SUFFIX.fullmatch(suffix) is not None


def _rw_holders(queue: Sequence[KeyValue], prefix: bytes) -> int:
    """How many of the queue (by create revision) hold: the first writer alone, or the readers before it."""
    writer = prefix + b"write/"
    for i, kv in enumerate(queue):
        if kv.key.startswith(writer):
            return i or 1
    return len(queue)


async def _entries(
    client: RecipeClient, queue: Sequence[KeyValue], timeout: float | None
) -> tuple[LockHolder, ...]:
    leases = sorted({kv.lease for kv in queue if kv.lease})
    replies = await asyncio.gather(*(client.time_to_live(lease, timeout=timeout) for lease in leases))
    ttls = {lease: reply.ttl for lease, reply in zip(leases, replies, strict=True)}
    return tuple(_entry(kv, ttls.get(kv.lease, -1)) for kv in queue)


def _entry(kv: KeyValue, ttl_left: int) -> LockHolder:
    return LockHolder(kv.key.decode(errors="replace"), kv.lease, ttl_left, kv.create_revision, kv.value)


@dataclass(frozen=True, slots=True)
class NameScan:
    names: list[str]  # names found with keys NAME/<hex> (a lock, an election or a semaphore), sorted
    keys_read: int
    complete: bool  # False: more keys under the prefix were left unread (the limit)
    rwlocks: list[str] = field(
        default_factory=list
    )  # names found with keys NAME/read/<id> or NAME/write/<id>


async def lock_names(
    client: RecipeClient, prefix: str, *, limit: int | None = None, timeout: float | None = None
) -> NameScan:
    """The names of the recipes with a key under `prefix`, reading at most `limit` keys (None: all).

    A lock's, an election's or a semaphore's key here is NAME/<hex> on the lease that hex names, so that
    other keys that merely end in hex digits are not taken for theirs. A read/write lock's key is
    NAME/read/<id> or NAME/write/<id> on a lease (Go's ids are times, not the lease): its name is NAME,
    never "NAME/read". Raises ConfigError for a limit below 1."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a whole number >= 1 or None, got {limit!r}")
    r = await client.get(prefix, prefix=True, keys_only=True, limit=limit or 0, timeout=timeout)
    names: set[str] = set()
    rwlocks: set[str] = set()
    for kv in r.kvs:
        rw = _RW_KEY.match(kv.key)
        if rw is not None and kv.lease != 0:
            rwlocks.add(rw["name"].decode(errors="replace"))
            continue
        m = _LOCK_KEY.match(kv.key)
        if m is not None and kv.lease != 0 and int(m["lease"], 16) == kv.lease:
            names.add(m["name"].decode(errors="replace"))
    return NameScan(
        sorted(n for n in names if _is_lock_name(n)),
        len(r.kvs),
        not r.more,
        sorted(n for n in rwlocks if _is_lock_name(n)),
    )


def _is_lock_name(name: str) -> bool:
    """Could a recipe of this library have this name? (A key like "a//1f" looks like one of lock "a/".)"""
    try:
        check_name(name)
    except ConfigError:
        return False
    return True


__all__ = [
    "KINDS",
    "Kind",
    "LockHolder",
    "LockStatus",
    "NameScan",
    "lock_names",
    "lock_status",
    "recipe_status",
]
