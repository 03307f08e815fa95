"""etcdlock: distributed locks on etcd that never leak, never lie about who holds a lock, hand over fast.

Start with `Client` (asyncio) or `SyncClient` (the same, blocking, on a thread of its own):

```python
async with Client(["127.0.0.1:2379"]) as client:
    async with client.lock("jobs/42", ttl=10, timeout=5.0) as held:
        await held.txn([], [Op.put("jobs/42/result", "done")])  # applied only while the lock is ours
```

- `Client`: an etcd v3 client (`Client.get`, `Client.put`, `Client.delete`, `Client.txn` with
  `Compare` and `Op`, leases with `Client.grant` and `Client.keep_alive`, `Client.watch`) with locks
  (`Client.lock`, `Client.try_lock`, `Client.session`).
- Results are plain frozen dataclasses (`GetResult`, `PutResult`, `WatchEvent`, ...); no protobuf
  object reaches your code.
- Every error is an `EtcdError`: `ConfigError` for bad input (nothing was sent), `ConnectionFailedError`,
  `EtcdTimeoutError`, ... and, for locks, `LockTimeout`, `LockLost`, `AlreadyHeldError`.
- `etcdlock.testing`: real etcd servers on loopback for tests, a fault-injecting proxy, and pytest
  fixtures (`etcdlock.testing.pytest_plugin`).

Everything importable from here is the public API; the packages whose names start with an underscore
are not.
"""

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
from etcdlock._diagnostics.debug_server import DebugServer
from etcdlock._recipes.election import Election, Leader, Term
from etcdlock._recipes.errors import (
    AlreadyHeldError,
    LimitMismatchError,
    LockError,
    LockLost,
    LockTimeout,
    NotAcquiredError,
)
from etcdlock._recipes.lock import Lock
from etcdlock._recipes.rwlock import ReadLock, RWLock, WriteLock
from etcdlock._recipes.semaphore import Semaphore, Slot
from etcdlock._recipes.session import Session
from etcdlock._recipes.status import LockHolder, LockStatus
from etcdlock._sync import (
    SyncClient,
    SyncDebugServer,
    SyncElection,
    SyncKeepAlive,
    SyncLock,
    SyncObservation,
    SyncRWLock,
    SyncSemaphore,
    SyncSession,
    SyncSlot,
    SyncTerm,
    SyncWatch,
)

# The one place the version is written: pyproject.toml reads it from here (statically, without importing).
__version__ = "0.1.0"
"""The package's version."""

__all__ = [
    "AlreadyHeldError",
    "AuthError",
    "Client",
    "ClientClosedError",
    "CompactedError",
    "Compare",
    "ConfigError",
    "ConnectionFailedError",
    "DebugServer",
    "DeleteResult",
    "Election",
    "EtcdError",
    "EtcdTimeoutError",
    "EventType",
    "GetResult",
    "Header",
    "KeepAlive",
    "KeyValue",
    "Leader",
    "LeaseGrant",
    "LeaseNotFoundError",
    "LeaseTimeToLive",
    "LimitMismatchError",
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
    "RWLock",
    "ReadLock",
    "Resources",
    "Semaphore",
    "ServerError",
    "Session",
    "Slot",
    "Status",
    "SyncClient",
    "SyncDebugServer",
    "SyncElection",
    "SyncKeepAlive",
    "SyncLock",
    "SyncObservation",
    "SyncRWLock",
    "SyncSemaphore",
    "SyncSession",
    "SyncSlot",
    "SyncTerm",
    "SyncWatch",
    "TLSConfig",
    "TTLBelowMinimumError",
    "Term",
    "TxnResult",
    "WatchError",
    "WatchEvent",
    "WatchOverflowError",
    "Watcher",
    "WriteLock",
    "__version__",
]
