"""etcdlock: distributed locks on etcd that never leak, never lie about who holds a lock, hand over fast."""

from etcdlock._client import Client
from etcdlock._core.client import Resources
from etcdlock._core.connection import TLSConfig
from etcdlock._core.errors import (
    AuthError,
    ClientClosedError,
    CompactedError,
    ConfigError,
    ConnectionFailedError,
    EtcdError,
    EtcdTimeoutError,
    LeaseNotFoundError,
    PermissionDeniedError,
    ServerError,
    TTLBelowMinimumError,
    WatchError,
    WatchOverflowError,
)
from etcdlock._core.lease import KeepAlive
from etcdlock._core.txn import Compare, Op
from etcdlock._core.types import (
    DeleteResult,
    EventType,
    GetResult,
    Header,
    KeyValue,
    LeaseGrant,
    LeaseTimeToLive,
    Member,
    PutResult,
    Status,
    TxnResult,
    WatchEvent,
)
from etcdlock._core.watch import Watcher
from etcdlock._recipes.errors import AlreadyHeldError, LockError, LockLost, LockTimeout, NotAcquiredError
from etcdlock._recipes.lock import Lock
from etcdlock._recipes.session import Session
from etcdlock._recipes.status import LockHolder, LockStatus
from etcdlock._sync import SyncClient, SyncKeepAlive, SyncLock, SyncSession, SyncWatch

__version__ = "0.1.0"

__all__ = [
    "AlreadyHeldError",
    "AuthError",
    "Client",
    "ClientClosedError",
    "CompactedError",
    "Compare",
    "ConfigError",
    "ConnectionFailedError",
    "DeleteResult",
    "EtcdError",
    "EtcdTimeoutError",
    "EventType",
    "GetResult",
    "Header",
    "KeepAlive",
    "KeyValue",
    "LeaseGrant",
    "LeaseNotFoundError",
    "LeaseTimeToLive",
    "Lock",
    "LockError",
    "LockHolder",
    "LockLost",
    "LockStatus",
    "LockTimeout",
    "Member",
    "NotAcquiredError",
    "Op",
    "PermissionDeniedError",
    "PutResult",
    "Resources",
    "ServerError",
    "Session",
    "Status",
    "SyncClient",
    "SyncKeepAlive",
    "SyncLock",
    "SyncSession",
    "SyncWatch",
    "TLSConfig",
    "TTLBelowMinimumError",
    "TxnResult",
    "WatchError",
    "WatchEvent",
    "WatchOverflowError",
    "Watcher",
    "__version__",
]
