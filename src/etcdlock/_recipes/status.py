"""What etcd says of a lock right now: who holds it and who waits, in queue order (`client.lock_status`).

A lock's queue is its keys NAME/<hex> in create-revision order (the protocol of mutex.py): the lowest one
holds the lock, every other waits for the keys below it. The queue is read in one Range; the TTLs left on
the keys' leases come from LeaseTimeToLive right after, one call per lease, all at once.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from etcdlock._core.errors import ConfigError
from etcdlock._core.types import KeyValue
from etcdlock._recipes.mutex import check_name, is_lock_key
from etcdlock._recipes.state import RecipeClient

_LOCK_KEY = re.compile(rb"^(?P<name>.+)/(?P<lease>[0-9a-f]+)$")


@dataclass(frozen=True, slots=True)
class LockHolder:
    """One key in a lock's queue: the holder's, or a waiter's."""

    key: str  # NAME/<lease hex>
    lease: int  # the lease the key is on (0: none)
    ttl_left: int  # seconds left on that lease when asked; -1 if it is gone (or the key has none)
    token: int  # the key's create_revision: the holder's fencing token, a waiter's place in the queue


@dataclass(frozen=True, slots=True)
class LockStatus:
    """A lock's queue as read at `revision`: `holder` None when nobody holds it (then no one waits)."""

    name: str
    holder: LockHolder | None
    waiters: tuple[LockHolder, ...]  # in queue order: the next holder first
    revision: int  # the etcd revision the queue was read at


async def lock_status(client: RecipeClient, name: str, *, timeout: float | None = None) -> LockStatus:
    """The holder and waiters of lock `name` now. `timeout` bounds each call to etcd (the client's
    timeout by default). Raises ConfigError for a bad name, EtcdError if etcd fails."""
    check_name(name)
    prefix = (name + "/").encode()
    r = await client.get(
        prefix, prefix=True, keys_only=True, sort_order="ascend", sort_target="create", timeout=timeout
    )
    queue = [kv for kv in r.kvs if is_lock_key(prefix, kv.key)]
    leases = sorted({kv.lease for kv in queue if kv.lease})
    replies = await asyncio.gather(*(client.time_to_live(lease, timeout=timeout) for lease in leases))
    ttls = {lease: reply.ttl for lease, reply in zip(leases, replies, strict=True)}
    entries = tuple(_entry(kv, ttls.get(kv.lease, -1)) for kv in queue)
    return LockStatus(name, entries[0] if entries else None, entries[1:], r.header.revision)


def _entry(kv: KeyValue, ttl_left: int) -> LockHolder:
    return LockHolder(kv.key.decode(errors="replace"), kv.lease, ttl_left, kv.create_revision)


@dataclass(frozen=True, slots=True)
class NameScan:
    names: list[str]  # lock names found, sorted
    keys_read: int
    complete: bool  # False: more keys under the prefix were left unread (the limit)


async def lock_names(
    client: RecipeClient, prefix: str, *, limit: int | None = None, timeout: float | None = None
) -> NameScan:
    """The names of the locks with a key under `prefix`, reading at most `limit` keys (None: all).

    A lock key here is NAME/<hex> on the lease that hex names, so that other keys that merely end in
    hex digits are not taken for locks. Raises ConfigError for a limit below 1."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a whole number >= 1 or None, got {limit!r}")
    r = await client.get(prefix, prefix=True, keys_only=True, limit=limit or 0, timeout=timeout)
    names: set[str] = set()
    for kv in r.kvs:
        m = _LOCK_KEY.match(kv.key)
        if m is not None and kv.lease != 0 and int(m["lease"], 16) == kv.lease:
            names.add(m["name"].decode(errors="replace"))
    return NameScan(sorted(n for n in names if _is_lock_name(n)), len(r.kvs), not r.more)


def _is_lock_name(name: str) -> bool:
    """Could a lock of this library have this name? (A key like "a//1f" looks like one of lock "a/".)"""
    try:
        check_name(name)
    except ConfigError:
        return False
    return True


__all__ = ["LockHolder", "LockStatus", "NameScan", "lock_names", "lock_status"]
