"""The public asyncio client: the core client plus the lock recipes."""

from __future__ import annotations

from etcdlock._diagnostics.debug_server import DebugServer
from etcdlock._recipes.election import Election
from etcdlock._recipes.lock import Lock
from etcdlock._recipes.rwlock import RWLock
from etcdlock._recipes.semaphore import Semaphore
from etcdlock._recipes.session import DEFAULT_TTL, Session
from etcdlock._recipes.state import RecipeClient
from etcdlock._recipes.status import LockStatus, lock_status


class Client(RecipeClient):
    """Asyncio etcd client with locks. KV, lease and watch calls are listed with it."""

    def lock(
        self,
        name: str,
        *,
        ttl: int = DEFAULT_TTL,
        timeout: float | None = None,
        session: Session | None = None,
        cancel_on_loss: bool = False,
    ) -> Lock:
        """A lock on `name` (nothing is sent yet): ``async with client.lock("jobs/42", ttl=10, timeout=5)
        as held:`` runs the body only while holding it, and raises LockTimeout after `timeout` seconds
        (None: wait forever; 0: one attempt). ``await lock.acquire()`` returns False instead.

        The Lock object can be acquired again after each release, and shared by tasks (they take turns).
        Without `session=` the lock's key goes on the client's default session for `ttl` (one lease
        shared by the client's locks, started on first use, revoked at close); pass `session=` to choose
        the lease yourself. cancel_on_loss=True cancels the body's task when the lock is lost, and the
        `async with` raises LockLost. Raises ConfigError for a bad name, ttl or timeout, or a session of
        another client.
        """
        return Lock(self, name, ttl=ttl, timeout=timeout, session=session, cancel_on_loss=cancel_on_loss)

    async def try_lock(
        self, name: str, *, ttl: int = DEFAULT_TTL, session: Session | None = None
    ) -> Lock | None:
        """The lock, held, if it is free right now; else None, without waiting and without leaving a key.

        ``if held := await client.try_lock(name): async with held: ...``: the first `async with` on the
        result takes over this holding (it does not acquire again) and releases it on exit; or call
        ``await held.release()``. Raises ConfigError for a bad name or ttl, AlreadyHeldError if the name
        is held on the given session, EtcdError if etcd fails."""
        lock = Lock(self, name, ttl=ttl, session=session)
        return lock if await lock._try_lock() else None

    def election(self, name: str) -> Election:
        """The election on `name` (nothing is sent yet): ``async with client.election("svc/leader")
        .campaign("node-1") as term:`` runs the body while we lead; `leader()` reads the leader, and
        ``async for leader in election.observe():`` follows it. Wire-compatible with Go's
        concurrency.Election and `etcdctl elect`. Raises ConfigError for a bad name."""
        return Election(self, name)

    def semaphore(
        self,
        name: str,
        limit: int,
        *,
        ttl: int = DEFAULT_TTL,
        timeout: float | None = None,
        session: Session | None = None,
        cancel_on_loss: bool = False,
    ) -> Semaphore:
        """A semaphore on `name` with `limit` holders at most (nothing is sent yet): ``async with
        client.semaphore("pool", 4) as slot:``, FIFO, each holder with its own fencing token (`slot.token`).
        Every user of the name must give the same limit (else LimitMismatchError). Raises ConfigError for
        a bad name, limit, ttl or timeout."""
        return Semaphore(
            self, name, limit, ttl=ttl, timeout=timeout, session=session, cancel_on_loss=cancel_on_loss
        )

    def rwlock(
        self,
        name: str,
        *,
        ttl: int = DEFAULT_TTL,
        timeout: float | None = None,
        session: Session | None = None,
    ) -> RWLock:
        """A read/write lock on `name` (nothing is sent yet): ``async with rw.read():`` shared, ``async with
        rw.write():`` exclusive; queue order decides, so writers are not starved by readers.
        Wire-compatible with etcd's contrib/recipes RWMutex. Raises ConfigError for a bad name, ttl or
        timeout."""
        return RWLock(self, name, ttl=ttl, timeout=timeout, session=session)

    async def lock_status(self, name: str, *, timeout: float | None = None) -> LockStatus:
        """Who holds `name` and who waits for it, as etcd says now (keys of any client, of Go's Mutex,
        Election and RWMutex, of `etcdctl lock` and `etcdctl elect` too): the holder (None if free) and
        the waiters in queue order, each with its key, lease, the TTL left on that lease, its token
        (create revision) and its value. `kind` says what the keys are: "lock", "election" (`holder` is
        the leader, its `value` the proposal; the waiters are the other candidates), "semaphore" (`limit`
        from the keys' values, `holders` the first `limit` keys) or "rwlock" (keys NAME/read/...,
        NAME/write/...: `holders` the readers before the first writer, or that writer). `timeout` bounds
        each call to etcd. Raises ConfigError for a bad name, EtcdError if etcd fails."""
        return await lock_status(self, name, timeout=timeout)

    async def serve_debug(self, port: int = 0, host: str = "127.0.0.1") -> DebugServer:
        """Start the debug HTTP endpoint (/metrics, /debug/memory, /debug/gc, /debug/tasks,
        /debug/resources) on host:port (loopback by default; port 0 picks a free one). It closes with the
        client, or earlier with `await server.close()`."""
        server = await DebugServer(self, host, port).start()
        self._add_close_hook(server.close)
        return server

    def session(self, ttl: int = DEFAULT_TTL) -> Session:
        """``async with client.session(ttl) as s:`` — one lease that several locks can share."""
        return Session(self, ttl)


__all__ = ["Client"]
