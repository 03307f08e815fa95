"""`SyncRWLock`: a read/write lock on NAME for threads.

    rw = client.rwlock("catalog", timeout=30)
    with rw.read():              # shared with other readers, in this process and elsewhere
        ...
    with rw.write():             # exclusive
        ...

Its read and write locks are SyncLocks whose acquisitions are the async RWLock's ReadLocks and WriteLocks
(made on the loop), so which keys wait for which is the async recipe's.
"""

from __future__ import annotations

from etcdlock._recipes.contender import check_timeout
from etcdlock._recipes.rwlock import RWLock
from etcdlock._sync.lock import SyncLock
from etcdlock._sync.portal import Portal


class SyncRWLock:
    """A read/write lock on NAME, for threads: ``with rw.read():`` shared, ``with rw.write():`` exclusive.
    See `etcdlock.RWLock`."""

    def __init__(self, portal: Portal, rwlock: RWLock, *, timeout: float | None) -> None:
        self._portal = portal
        self._rwlock = rwlock
        self._timeout = timeout

    @property
    def name(self) -> str:
        """The lock's name: readers' keys are NAME/read/<lease hex>, writers' NAME/write/<lease hex>."""
        return self._rwlock.name

    def read(self, *, timeout: float | None = None) -> SyncLock:
        """A read lock (nothing is sent yet), reusable like a SyncLock; `timeout` None: the
        SyncRWLock's. Raises ConfigError for a bad timeout."""
        check_timeout(timeout)
        wait = self._timeout if timeout is None else timeout
        return SyncLock(
            self._portal, self.name, lambda: self._rwlock.read(timeout=wait), timeout=wait, kind="read lock"
        )

    def write(self, *, timeout: float | None = None) -> SyncLock:
        """A write lock (nothing is sent yet), reusable like a SyncLock; `timeout` None: the
        SyncRWLock's. Raises ConfigError for a bad timeout."""
        check_timeout(timeout)
        wait = self._timeout if timeout is None else timeout
        return SyncLock(
            self._portal, self.name, lambda: self._rwlock.write(timeout=wait), timeout=wait, kind="write lock"
        )

    def __repr__(self) -> str:
        return f"<SyncRWLock {self.name!r}>"


__all__ = ["SyncRWLock"]
