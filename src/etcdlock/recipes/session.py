"""A session: one lease, kept alive on the client's shared keepalive stream, revoked when the session ends.

Locks hang their keys on a session's lease, so ending the session (or losing it) ends every lock on it.
A session whose start fails half-way revokes the lease it was granted: nothing is left behind.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from etcdlock._wire import rpc_pb2 as pb
from etcdlock.core.client import Client
from etcdlock.core.errors import ConfigError, EtcdError
from etcdlock.core.lease import KeepAlive, check_ttl
from etcdlock.core.tasks import shielded
from etcdlock.core.types import LeaseGrant

log = logging.getLogger("etcdlock.session")

DEFAULT_TTL = 10
# Cleanup (revoke) gets its own deadline, independent of whatever deadline the caller was under.
CLEANUP_TIMEOUT = 5.0


class Session:
    """``async with Session(client, ttl=10) as session:`` — a lease kept alive until the block ends."""

    def __init__(self, client: Client, ttl: int = DEFAULT_TTL) -> None:
        self._client = client
        self.ttl = check_ttl(ttl)
        self.lease_id = 0
        self._keeper: KeepAlive | None = None
        self._closed = False
        # Lock names this session holds or is acquiring: a second acquire of the same name would be the
        # same etcd key, so it is refused (locks are not reentrant).
        self.names: set[str] = set()
        # Prebuilt acquire requests per lock name: identical for every acquisition on this lease.
        self.requests: dict[str, pb.TxnRequest] = {}

    @property
    def client(self) -> Client:
        return self._client

    @property
    def keeper(self) -> KeepAlive:
        if self._keeper is None:
            raise ConfigError("the session is not started: use `async with Session(...)` or await start()")
        return self._keeper

    @property
    def lost(self) -> asyncio.Event:
        """Set once the lease is gone (revoked, expired, or not renewed before its local deadline)."""
        return self.keeper.lost

    @property
    def lost_reason(self) -> str | None:
        return self._keeper.lost_reason if self._keeper else None

    async def start(self, timeout: float | None = None) -> Session:
        if self._keeper is not None or self._closed:
            raise ConfigError("a session can be started only once")
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        # The grant runs in a task of its own: if we are cancelled while it is in flight, it is let finish
        # and the lease it got is revoked, so a cancelled start leaves no lease behind.
        granting = loop.create_task(
            self._client.grant(self.ttl, timeout=timeout), name="etcdlock:lease-grant"
        )
        try:
            grant = await asyncio.shield(granting)
        except asyncio.CancelledError:
            await shielded(self._undo_grant(granting), CLEANUP_TIMEOUT)
            raise
        self.lease_id = grant.id
        try:
            self._keeper = self._client.keep_alive(grant.id, grant.ttl, granted_at=sent_at)
        except BaseException:
            await shielded(self._revoke(), CLEANUP_TIMEOUT)
            raise
        return self

    async def _undo_grant(self, granting: asyncio.Task[LeaseGrant]) -> None:
        try:
            grant = await granting
        except Exception:
            return  # no lease was granted
        self.lease_id = grant.id
        await self._revoke()
        self._closed = True

    async def close(self) -> None:
        """Stop the keepalive and revoke the lease (shielded, own deadline). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._keeper is not None:
            self._keeper.stop()
        if self.lease_id:
            await shielded(self._revoke(), CLEANUP_TIMEOUT)

    async def _revoke(self) -> None:
        try:
            await self._client.revoke(self.lease_id, timeout=CLEANUP_TIMEOUT)
        except EtcdError as e:
            # Already gone (expired/revoked) is fine; anything else: the lease expires on its own in TTL.
            log.info("revoking lease %x: %s", self.lease_id, e)

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> Session:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Session lease={self.lease_id:x} ttl={self.ttl}{' closed' if self._closed else ''}>"


__all__ = ["CLEANUP_TIMEOUT", "DEFAULT_TTL", "Session"]
