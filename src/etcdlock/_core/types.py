"""Plain result types returned by the client; no protobuf objects leak into the public API."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from etcdlock._wire import kv_pb2, rpc_pb2

Key = str | bytes


def to_bytes(value: Key, what: str = "key") -> bytes:
    """Keys and values may be given as str (UTF-8) or bytes; anything else is a clear error."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    from etcdlock._core.errors import ConfigError

    raise ConfigError(f"{what} must be str or bytes, not {type(value).__name__}")


def key_range(key: bytes, prefix: bool, range_end: bytes | None) -> tuple[bytes, bytes]:
    """(key, range_end) for etcd: a single key, a prefix, or an explicit range. The empty prefix means
    every key, which etcd spells key="\\0", range_end="\\0"."""
    if prefix and range_end is not None:
        from etcdlock._core.errors import ConfigError

        raise ConfigError("give either prefix=True or range_end, not both")
    if prefix:
        return (key or b"\x00"), prefix_end(key)
    if not key:
        from etcdlock._core.errors import ConfigError

        raise ConfigError("key must not be empty (use prefix=True with an empty key for every key)")
    return key, (range_end or b"")


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with prefix (etcd's convention)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    # All 0xff (or empty): etcd reads "\0" as "to the end of the keyspace".
    return b"\x00"


@dataclass(frozen=True, slots=True)
class Header:
    """The header etcd sends with every reply: who answered, and at which revision of the store."""

    cluster_id: int
    """ID of the cluster that answered."""
    member_id: int
    """ID of the member that answered."""
    revision: int
    """The store's revision when the request was served (after its own writes, for a write)."""
    raft_term: int
    """The raft term of the member that answered."""

    @classmethod
    def from_pb(cls, pb: rpc_pb2.ResponseHeader) -> Header:
        """Built from the wire message. @private"""
        return cls(pb.cluster_id, pb.member_id, pb.revision, pb.raft_term)


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd stores it: its value and its history in revisions."""

    key: bytes
    """The key."""
    value: bytes
    """The value (empty with ``keys_only=True``, and in a delete event)."""
    create_revision: int
    """Revision of the write that created this incarnation of the key (a lock's fencing token)."""
    mod_revision: int
    """Revision of the last write to the key."""
    version: int
    """Writes to the key since it was created (1 after the create; 0 for a deleted key)."""
    lease: int
    """ID of the lease the key is attached to, 0 for none."""

    @classmethod
    def from_pb(cls, pb: kv_pb2.KeyValue) -> KeyValue:
        """Built from the wire message. @private"""
        return cls(pb.key, pb.value, pb.create_revision, pb.mod_revision, pb.version, pb.lease)


@dataclass(frozen=True, slots=True)
class GetResult:
    """What `get()` (or `Op.get` in a transaction) read."""

    header: Header
    """Who answered, at which revision."""
    kvs: list[KeyValue]
    """The keys read, in the order asked for (empty with ``count_only=True``)."""
    more: bool
    """True when ``limit`` cut the answer short: more keys are in the range."""
    count: int
    """How many keys are in the range, whatever the ``limit``."""

    @property
    def revision(self) -> int:
        """The store's revision the read was served at (``header.revision``)."""
        return self.header.revision

    def first(self) -> KeyValue | None:
        """The first key read.

        Returns:
            The first entry of `kvs`, or None when nothing was found.
        """
        return self.kvs[0] if self.kvs else None


@dataclass(frozen=True, slots=True)
class PutResult:
    """What `put()` (or `Op.put` in a transaction) did."""

    header: Header
    """Who answered; ``header.revision`` is the revision of this write."""
    prev_kv: KeyValue | None
    """The key as it was before the put, when asked for with ``prev_kv=True`` and it existed."""

    @property
    def revision(self) -> int:
        """The revision of this write (``header.revision``)."""
        return self.header.revision


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """What `delete()` (or `Op.delete` in a transaction) did."""

    header: Header
    """Who answered; ``header.revision`` is the revision after the delete."""
    deleted: int
    """How many keys were deleted."""
    prev_kvs: list[KeyValue]
    """The deleted keys as they were, when asked for with ``prev_kv=True``."""

    @property
    def revision(self) -> int:
        """The store's revision after the delete (``header.revision``)."""
        return self.header.revision


@dataclass(frozen=True, slots=True)
class TxnResult:
    """What `txn()` did: which branch ran, and the result of each of its operations."""

    header: Header
    """Who answered; ``header.revision`` is the revision after the transaction."""
    succeeded: bool
    """True when every compare held (the success branch ran), False when the failure branch ran."""
    responses: list[GetResult | PutResult | DeleteResult | TxnResult] = field(default_factory=list)
    """One result per operation of the branch that ran, in order."""

    @property
    def revision(self) -> int:
        """The store's revision after the transaction (``header.revision``)."""
        return self.header.revision


class EventType(Enum):
    """What a watch event reports."""

    PUT = "put"
    """The key was created or written."""
    DELETE = "delete"
    """The key was deleted (or its lease expired or was revoked)."""


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change seen by a watcher."""

    type: EventType
    """A put or a delete."""
    kv: KeyValue
    """The key after the change (for a delete: the key and the delete's revision, no value)."""
    prev_kv: KeyValue | None
    """The key before the change, when watched with ``prev_kv=True`` and it existed."""

    @property
    def revision(self) -> int:
        """The revision of the change (``kv.mod_revision``)."""
        return self.kv.mod_revision


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """A lease etcd granted."""

    header: Header
    """Who answered, at which revision."""
    id: int
    """The lease's ID: attach keys to it with ``put(..., lease=id)``."""
    ttl: int
    """The TTL granted, in seconds: etcd raises a TTL below its minimum lease TTL to that minimum."""
    sent_at: float = 0.0
    """Loop time when the grant first went out on the wire (after any wait for a place among the client's
    requests in flight): etcd cannot have started the lease's TTL before it. 0.0 if unknown."""


@dataclass(frozen=True, slots=True)
class LeaseTimeToLive:
    """What etcd says about one lease."""

    header: Header
    """Who answered, at which revision."""
    id: int
    """The lease's ID."""
    ttl: int
    """Seconds the lease has left, -1 when the lease does not exist (expired, revoked, never granted)."""
    granted_ttl: int
    """The TTL the lease was granted with, in seconds."""
    keys: list[bytes]
    """The keys attached to the lease, when asked for with ``keys=True``."""


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the etcd cluster."""

    id: int
    """The member's ID."""
    name: str
    """The member's name (empty until a member added to the cluster has started)."""
    peer_urls: list[str]
    """URLs the other members reach it on."""
    client_urls: list[str]
    """URLs clients reach it on."""
    is_learner: bool
    """True for a learner (a non-voting member catching up)."""


@dataclass(frozen=True, slots=True)
class Status:
    """The status of the member that answered `status()`."""

    header: Header
    """Who answered, at which revision."""
    version: str
    """The member's etcd version, e.g. ``"3.4.23"``."""
    db_size: int
    """Size of the member's database file, in bytes."""
    leader: int
    """ID of the member it sees as the cluster's leader, 0 for none."""
    raft_index: int
    """The member's raft index."""
    raft_term: int
    """The member's raft term."""
    endpoint: str
    """The endpoint (``host:port``) that answered."""
