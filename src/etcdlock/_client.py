"""The public asyncio client: the core client plus the lock recipes."""

from __future__ import annotations

from etcdlock._core.client import CoreClient
from etcdlock._diagnostics.debug_server import DebugServer
from etcdlock._recipes.lock import Lock
from etcdlock._recipes.session import DEFAULT_TTL, Session


class Client(CoreClient):
    """Asyncio etcd client with locks. See `etcdlock._core.client.Client` for KV, lease and watch."""

    def lock(
        self,
        name: str,
        *,
        ttl: int = DEFAULT_TTL,
        timeout: float | None = None,
        session: Session | None = None,
        cancel_on_loss: bool = False,
    ) -> Lock:
        """``async with client.lock("jobs/42", ttl=10, timeout=5) as held:`` — runs the body only while
        holding the lock; raises LockTimeout after `timeout` seconds (None: wait forever).

        Without `session=` the lock's key goes on the client's default session for `ttl` (one lease
        shared by the client's locks, started on first use, revoked at close); pass `session=` to choose
        the lease yourself.
        """
        return Lock(self, name, ttl=ttl, timeout=timeout, session=session, cancel_on_loss=cancel_on_loss)

    async def try_lock(
        self, name: str, *, ttl: int = DEFAULT_TTL, session: Session | None = None
    ) -> Lock | None:
        """The lock if it is free right now, else None — without waiting and without leaving a key."""
        lock = Lock(self, name, ttl=ttl, session=session)
        return lock if await lock.try_acquire() else None

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
