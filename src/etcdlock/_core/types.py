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
    cluster_id: int
    member_id: int
    revision: int
    raft_term: int

    @classmethod
    def from_pb(cls, pb: rpc_pb2.ResponseHeader) -> Header:
        return cls(pb.cluster_id, pb.member_id, pb.revision, pb.raft_term)


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_pb(cls, pb: kv_pb2.KeyValue) -> KeyValue:
        return cls(pb.key, pb.value, pb.create_revision, pb.mod_revision, pb.version, pb.lease)


@dataclass(frozen=True, slots=True)
class GetResult:
    header: Header
    kvs: list[KeyValue]
    more: bool
    count: int

    @property
    def revision(self) -> int:
        return self.header.revision

    def first(self) -> KeyValue | None:
        return self.kvs[0] if self.kvs else None


@dataclass(frozen=True, slots=True)
class PutResult:
    header: Header
    prev_kv: KeyValue | None

    @property
    def revision(self) -> int:
        return self.header.revision


@dataclass(frozen=True, slots=True)
class DeleteResult:
    header: Header
    deleted: int
    prev_kvs: list[KeyValue]

    @property
    def revision(self) -> int:
        return self.header.revision


@dataclass(frozen=True, slots=True)
class TxnResult:
    header: Header
    succeeded: bool
    responses: list[GetResult | PutResult | DeleteResult | TxnResult] = field(default_factory=list)

    @property
    def revision(self) -> int:
        return self.header.revision


class EventType(Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    header: Header
    id: int
    ttl: int
    # Loop time when the grant first went out on the wire (after any wait for a place among the client's
    # requests in flight): etcd cannot have started the lease's TTL before it. 0.0 if unknown.
    sent_at: float = 0.0


@dataclass(frozen=True, slots=True)
class LeaseTimeToLive:
    header: Header
    id: int
    ttl: int  # -1 when the lease does not exist
    granted_ttl: int
    keys: list[bytes]


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]
    is_learner: bool


@dataclass(frozen=True, slots=True)
class Status:
    header: Header
    version: str
    db_size: int
    leader: int
    raft_index: int
    raft_term: int
    endpoint: str
