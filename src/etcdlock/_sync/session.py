"""`SyncSession`: one lease kept alive until the `with` ends, that several locks can share, from threads."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TYPE_CHECKING

from etcdlock._core.errors import ConfigError
from etcdlock._recipes.session import Session
from etcdlock._sync.keepalive import SyncKeepAlive
from etcdlock._sync.portal import Portal

if TYPE_CHECKING:
    from etcdlock._sync.client import SyncClient


class SyncSession:
    """``with client.session(ttl=10) as session:`` then ``client.lock(name, session=session)``.

    See `etcdlock.Session` for the meaning of each member; `lost` is a threading.Event."""

    def __init__(self, client: SyncClient, portal: Portal, session: Session) -> None:
        self._client = client
        self._portal = portal
        self._session = session
        self._keeper: SyncKeepAlive | None = None

    @property
    def async_session(self) -> Session:
        """The underlying asyncio session (use it only on the client's loop thread)."""
        return self._session

    @property
    def client(self) -> SyncClient:
        return self._client

    @property
    def ttl(self) -> int:
        """The session lease's TTL in seconds."""
        return self._session.ttl

    @property
    def lease_id(self) -> int:
        """The session's lease (0 until started)."""
        return self._session.lease_id

    def holds(self, name: str) -> bool:
        """Whether a lock on `name` is held or being acquired on this session."""
        return self._session.holds(name)

    @property
    def busy(self) -> int:
        """How many lock names are claimed on this session."""
        return self._session.busy

    @property
    def keeper(self) -> SyncKeepAlive:
        """The keepalive of the session's lease. ConfigError before start()."""
        if self._keeper is None:
            raise ConfigError("the session is not started: use `with client.session(...)` or start()")
        return self._keeper

    @property
    def lost(self) -> threading.Event:
        """Set once the lease is gone (revoked, expired, or not renewed before its local deadline)."""
        return self.keeper.lost

    @property
    def lost_reason(self) -> str | None:
        return self._session.lost_reason

    def start(self, timeout: float | None = None) -> SyncSession:
        """Grant the lease and keep it alive. Raises what `Session.start` raises (ConfigError when started
        twice, TTLBelowMinimumError, EtcdError); an interrupted start leaves no lease behind."""

        async def start() -> SyncKeepAlive:
            await self._session.start(timeout)
            return SyncKeepAlive(self._portal, self._session.keeper)

        async def close(_: SyncKeepAlive) -> None:
            await self._session.close()

        self._keeper = self._portal.call(start(), undo=close)
        return self

    def close(self) -> None:
        """Stop the keepalive and revoke the lease (shielded, own deadline). Idempotent."""
        self._portal.call_unless_closed(self._session.close())

    @property
    def closed(self) -> bool:
        return self._session.closed

    def __enter__(self) -> SyncSession:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SyncSession {self._session!r}>"


__all__ = ["SyncSession"]
