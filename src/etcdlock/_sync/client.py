"""`SyncClient`: the asyncio `Client`, method for method, for threads.

    with SyncClient(["127.0.0.1:2379"]) as client:
        with client.lock("jobs/42", ttl=10, timeout=5) as held:
            ...                      # held.lost is a threading.Event

Every method has the parameters of its `Client` twin (tests/test_sync_parity.py holds them together) and
runs the same async core on the loop thread the client's portal owns. If the calling thread is interrupted
(KeyboardInterrupt or any exception while waiting), the operation is cancelled on the loop and its shielded
cleanup runs to the end before the exception propagates, so an interrupted acquire leaves no key behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self, Unpack

from etcdlock._client import Client
from etcdlock._core.client import Resources
from etcdlock._core.connection import TLSConfig
from etcdlock._core.kv import RangeOptions
from etcdlock._core.lease import DEFAULT_LEASE_MARGIN
from etcdlock._core.txn import Compare, Op
from etcdlock._core.types import (
    DeleteResult,
    GetResult,
    Header,
    Key,
    LeaseGrant,
    LeaseTimeToLive,
    Member,
    PutResult,
    Status,
    TxnResult,
)
from etcdlock._core.watch import DEFAULT_MAX_BUFFER, Watcher
from etcdlock._recipes.lock import Lock
from etcdlock._recipes.session import DEFAULT_TTL
from etcdlock._recipes.status import LockStatus
from etcdlock._sync.debug import SyncDebugServer
from etcdlock._sync.election import SyncElection
from etcdlock._sync.keepalive import SyncKeepAlive
from etcdlock._sync.lock import SyncLock
from etcdlock._sync.portal import Portal
from etcdlock._sync.rwlock import SyncRWLock
from etcdlock._sync.semaphore import SyncSemaphore
from etcdlock._sync.session import SyncSession
from etcdlock._sync.watch import SyncWatch


class SyncClient:
    """Blocking etcd client with locks; see `etcdlock.Client` for the meaning of every method.

    Unlike `Client`, it connects when made (ConnectionFailedError, AuthError, ... from the constructor).
    Callbacks (on_lost, add_lost_callback) run on the loop thread and must not call the client back."""

    def __init__(
        self,
        endpoints: Sequence[str] | str = ("127.0.0.1:2379",),
        *,
        timeout: float = 5.0,
        username: str | None = None,
        password: str | None = None,
        tls: TLSConfig | None = None,
        watch_buffer: int = DEFAULT_MAX_BUFFER,
        lease_margin: float = DEFAULT_LEASE_MARGIN,
    ) -> None:
        self._portal = Portal("etcdlock-loop")
        self._closed = False

        async def connected() -> Client:
            client = Client(
                endpoints,
                timeout=timeout,
                username=username,
                password=password,
                tls=tls,
                watch_buffer=watch_buffer,
                lease_margin=lease_margin,
            )
            try:
                return await client.connect()
            except BaseException:
                await client.close()
                raise

        try:
            self._client = self._portal.call(connected())
        except BaseException:
            self._portal.stop()
            raise

    # ---- life cycle ----

    @property
    def async_client(self) -> Client:
        """The underlying asyncio client (use it only on this client's loop thread)."""
        return self._client

    @property
    def loop_thread(self) -> threading.Thread:
        """The thread running this client's event loop (it ends with close())."""
        return self._portal.thread

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._client.endpoints

    @property
    def current_endpoint(self) -> str:
        return self._client.current_endpoint

    @property
    def default_timeout(self) -> float:
        return self._client.default_timeout

    def connect(self, timeout: float | None = None) -> Self:
        """Check that an endpoint answers (and credentials work); the constructor already did once."""
        self._portal.call(self._client.connect(timeout))
        return self

    def close(self) -> None:
        """Close the client (see Client.close) and stop its loop thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._portal.call(self._client.close())
        finally:
            self._portal.stop()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- KV ----

    def get(self, key: Key, *, timeout: float | None = None, **options: Unpack[RangeOptions]) -> GetResult:
        """Read a key, a prefix (prefix=True) or a range (range_end=...)."""
        return self._portal.call(self._client.get(key, timeout=timeout, **options))

    def put(
        self,
        key: Key,
        value: str | bytes,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> PutResult:
        return self._portal.call(self._client.put(key, value, lease=lease, prev_kv=prev_kv, timeout=timeout))

    def delete(
        self,
        key: Key,
        *,
        prefix: bool = False,
        range_end: Key | None = None,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> DeleteResult:
        return self._portal.call(
            self._client.delete(key, prefix=prefix, range_end=range_end, prev_kv=prev_kv, timeout=timeout)
        )

    def txn(
        self,
        compare: list[Compare],
        success: list[Op],
        failure: list[Op] | None = None,
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        return self._portal.call(self._client.txn(compare, success, failure, timeout=timeout))

    def compact(self, revision: int, *, physical: bool = False, timeout: float | None = None) -> Header:
        return self._portal.call(self._client.compact(revision, physical=physical, timeout=timeout))

    # ---- leases ----

    def grant(self, ttl: int, *, lease_id: int = 0, timeout: float | None = None) -> LeaseGrant:
        """Grant a lease of `ttl` seconds; lease_id=0 lets etcd choose its ID."""
        return self._portal.call(self._client.grant(ttl, lease_id=lease_id, timeout=timeout))

    def revoke(self, lease_id: int, *, timeout: float | None = None) -> Header:
        return self._portal.call(self._client.revoke(lease_id, timeout=timeout))

    def time_to_live(
        self, lease_id: int, *, keys: bool = False, timeout: float | None = None
    ) -> LeaseTimeToLive:
        return self._portal.call(self._client.time_to_live(lease_id, keys=keys, timeout=timeout))

    def leases(self, *, timeout: float | None = None) -> list[int]:
        return self._portal.call(self._client.leases(timeout=timeout))

    def keep_alive(self, lease_id: int, ttl: int, *, granted_at: float | None = None) -> SyncKeepAlive:
        """Renew the lease on the client's one keepalive stream until ``handle.stop()`` or loss.
        granted_at: time.monotonic() when the grant was sent (the loop's clock)."""

        def register() -> SyncKeepAlive:
            return SyncKeepAlive(self._portal, self._client.keep_alive(lease_id, ttl, granted_at=granted_at))

        return self._portal.run(register)

    # ---- watch ----

    def watch(
        self,
        key: Key,
        *,
        prefix: bool = False,
        range_end: Key | None = None,
        start_revision: int = 0,
        no_put: bool = False,
        no_delete: bool = False,
        prev_kv: bool = False,
        progress_notify: bool = False,
        max_buffer: int | None = None,
    ) -> SyncWatch:
        """``with client.watch(key, prefix=True) as events: for event in events: ...``: events from
        start_revision (0 = from now). The watch starts at once."""

        def started() -> Watcher:
            watcher = self._client.watch(
                key,
                prefix=prefix,
                range_end=range_end,
                start_revision=start_revision,
                no_put=no_put,
                no_delete=no_delete,
                prev_kv=prev_kv,
                progress_notify=progress_notify,
                max_buffer=max_buffer,
            )
            watcher.start()
            return watcher

        return SyncWatch(self._portal, self._portal.run(started))

    # ---- cluster ----

    def status(self, *, timeout: float | None = None) -> Status:
        return self._portal.call(self._client.status(timeout=timeout))

    def member_list(self, *, timeout: float | None = None) -> list[Member]:
        return self._portal.call(self._client.member_list(timeout=timeout))

    # ---- locks ----

    def lock_status(self, name: str, *, timeout: float | None = None) -> LockStatus:
        """Who holds `name` (a lock, an election, a semaphore or a read/write lock) and who waits for it
        (see Client.lock_status)."""
        return self._portal.call(self._client.lock_status(name, timeout=timeout))

    def lock(
        self,
        name: str,
        *,
        ttl: int = DEFAULT_TTL,
        timeout: float | None = None,
        session: SyncSession | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> SyncLock:
        """``with client.lock("jobs/42", ttl=10, timeout=5) as held:`` — runs the body only while holding the
        lock; raises LockTimeout after `timeout` seconds (None: wait forever). The SyncLock can be used
        again and again, from several threads (see SyncLock).

        Without `session=` the lock's key goes on the client's default session for `ttl`; pass `session=`
        to choose the lease yourself. on_lost(reason) runs on the loop thread whenever a hold is lost.
        Raises ConfigError for bad arguments (as Client.lock)."""
        on_session = session.async_session if session is not None else None

        def make() -> Lock:  # one async Lock per acquisition, made on the loop
            return self._client.lock(name, ttl=ttl, timeout=timeout, session=on_session)

        self._portal.run(make)  # it checks the arguments: bad input fails here, at once
        return SyncLock(self._portal, name, make, timeout=timeout, on_lost=on_lost)

    def try_lock(
        self,
        name: str,
        *,
        ttl: int = DEFAULT_TTL,
        session: SyncSession | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> SyncLock | None:
        """The lock if it is free right now, else None — without waiting and without leaving a key.
        The lock returned is held: release() it, or use it in `with` (which then releases it)."""
        lock = self.lock(name, ttl=ttl, session=session, on_lost=on_lost)
        return lock if lock.acquire(timeout=0) else None

    def election(self, name: str) -> SyncElection:
        """The election on `name` (nothing is sent yet): ``with client.election("svc/leader")
        .campaign("node-1") as term:`` runs the body while we lead; `leader()` reads the leader, and
        ``with election.observe() as leaders: for leader in leaders:`` follows it. Wire-compatible with
        Go's concurrency.Election and `etcdctl elect`. Raises ConfigError for a bad name."""
        return SyncElection(self._portal, self._client, self._portal.run(lambda: self._client.election(name)))

    def semaphore(
        self,
        name: str,
        limit: int,
        *,
        ttl: int = DEFAULT_TTL,
        timeout: float | None = None,
        session: SyncSession | None = None,
    ) -> SyncSemaphore:
        """A semaphore on `name` with `limit` holders at most (nothing is sent yet): ``with
        client.semaphore("pool", 4) as slot:``, from as many threads as you like (each its own slot),
        FIFO, each holder with its own fencing token (`slot.token`). Every user of the name must give the
        same limit (else LimitMismatchError). Raises ConfigError for a bad name, limit, ttl or timeout."""
        on_session = session.async_session if session is not None else None
        semaphore = self._portal.run(
            lambda: self._client.semaphore(name, limit, ttl=ttl, timeout=timeout, session=on_session)
        )
        return SyncSemaphore(self._portal, semaphore, timeout=timeout)

    def rwlock(
        self,
        name: str,
        *,
        ttl: int = DEFAULT_TTL,
        timeout: float | None = None,
        session: SyncSession | None = None,
    ) -> SyncRWLock:
        """A read/write lock on `name` (nothing is sent yet): ``with rw.read():`` shared, ``with
        rw.write():`` exclusive; queue order decides, so writers are not starved by readers.
        Wire-compatible with etcd's contrib/recipes RWMutex. Raises ConfigError for a bad name, ttl or
        timeout."""
        on_session = session.async_session if session is not None else None
        rwlock = self._portal.run(
            lambda: self._client.rwlock(name, ttl=ttl, timeout=timeout, session=on_session)
        )
        return SyncRWLock(self._portal, rwlock, timeout=timeout)

    def session(self, ttl: int = DEFAULT_TTL) -> SyncSession:
        """``with client.session(ttl) as s:`` — one lease that several locks can share."""
        # A session not started yet holds nothing of the loop's: made here, started by `with` or start().
        return SyncSession(self, self._portal, self._client.session(ttl))

    # ---- diagnostics ----

    def resources(self) -> Resources:
        return self._portal.run(self._client.resources)

    def serve_debug(self, port: int = 0, host: str = "127.0.0.1") -> SyncDebugServer:
        """Start the debug HTTP endpoint (see Client.serve_debug) on host:port, served by the loop thread.
        It closes with the client, or earlier with `server.close()`."""
        return SyncDebugServer(self._portal, self._portal.call(self._client.serve_debug(port, host)))


__all__ = ["SyncClient"]
