"""A session: one lease, kept alive on the client's shared keepalive stream, revoked when the session ends.

Locks hang their keys on a session's lease, so ending the session (or losing it) ends every lock on it.
A session whose start fails half-way revokes the lease it was granted: nothing is left behind. So does a
session whose TTL the server raised (etcd silently raises a TTL below its minimum lease TTL): it raises
TTLBelowMinimumError rather than hold a lease that outlives what was asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from etcdlock._core.errors import (
    ConfigError,
    ConnectionFailedError,
    EtcdError,
    EtcdTimeoutError,
    LeaseNotFoundError,
    ServerError,
    TTLBelowMinimumError,
)
from etcdlock._core.lease import KeepAlive, check_ttl
from etcdlock._core.tasks import shielded
from etcdlock._core.text import quoted
from etcdlock._core.types import LeaseGrant
from etcdlock._recipes.errors import AlreadyHeldError, LockLost
from etcdlock._wire import rpc_pb2 as pb

if TYPE_CHECKING:
    from etcdlock._recipes.state import RecipeClient

log = logging.getLogger("etcdlock.session")

_LEASE_EXISTS = "lease already exists"

DEFAULT_TTL = 10
_REQUESTS_KEPT = 1024
# Cleanup (revoke) gets its own deadline, independent of whatever deadline the caller was under.
CLEANUP_TIMEOUT = 5.0


class Session:
    """``async with Session(client, ttl=10) as session:`` — a lease kept alive until the block ends.

    Usually made with ``client.session(ttl)``. Locks taken with ``session=`` put their keys on its lease,
    so several locks share one lease and one renewal; ending the session (or losing its lease) ends every
    lock on it. A name can be locked only once at a time on one session (`AlreadyHeldError`).
    """

    def __init__(self, client: RecipeClient, ttl: int = DEFAULT_TTL) -> None:
        """Make a session; its lease is granted by `start()` (or ``async with``).

        Args:
            client: The client whose lease and keepalive stream it uses.
            ttl: The lease's TTL in seconds: how long the session's locks outlive a crashed process.

        Raises:
            ConfigError: ``ttl`` is not a whole number of seconds from 1 to 9,000,000,000.
        """
        self._client = client
        self.ttl = check_ttl(ttl)
        """The lease's TTL in seconds."""
        self.lease_id = 0
        """The lease's ID (0 until started)."""
        self._keeper: KeepAlive | None = None
        self._closed = False
        # Lock names this session holds or is acquiring: a second acquire of the same name would be the
        # same etcd key, so it is refused (locks are not reentrant).
        self._names: set[str] = set()
        # Prebuilt acquire requests per lock name (identical for every acquisition on this lease), for the
        # names used most recently: a long-lived session locking ever new names must not grow without end.
        self._requests: OrderedDict[str, pb.TxnRequest] = OrderedDict()
        self.on_idle: Callable[[Session], None] | None = None  # called when its last name is let go
        """Hook for the client's session pool. @private"""

    @property
    def client(self) -> RecipeClient:
        """The client the session belongs to."""
        return self._client

    # ---- the lock names on this lease ----

    def claim(self, name: str) -> None:
        """Reserve `name` for one lock on this session; AlreadyHeldError if it is taken (same key).

        For the lock recipes: @private
        """
        if self._closed or (self._keeper is not None and self._keeper.lost.is_set()):
            raise LockLost(f"session lease {self.lease_id:x} is gone ({self.lost_reason or 'closed'})")
        if name in self._names:
            raise AlreadyHeldError(
                f"lock {quoted(name)} is already held or being acquired on this session (lease "
                f"{self.lease_id:x}); etcd locks are not reentrant"
            )
        self._names.add(name)

    def unclaim(self, name: str) -> None:
        """Let `name` go again. For the lock recipes: @private"""
        self._names.discard(name)
        if not self._names and self.on_idle is not None:
            self.on_idle(self)

    def holds(self, name: str) -> bool:
        """Whether a lock on this name is held, or being acquired, on this session.

        Args:
            name: The lock's name.

        Returns:
            True while that lock's key is (or is about to be) on this session's lease.
        """
        return name in self._names

    @property
    def busy(self) -> int:
        """How many lock names are claimed on this session."""
        return len(self._names)

    def acquire_request(self, name: str, build: Callable[[], pb.TxnRequest]) -> pb.TxnRequest:
        """The prebuilt acquire request of `name` on this lease (built once, kept for recent names).

        For the lock recipes: @private
        """
        request = self._requests.get(name)
        if request is None:
            request = self._requests[name] = build()
            if len(self._requests) > _REQUESTS_KEPT:
                self._requests.popitem(last=False)
        else:
            self._requests.move_to_end(name)
        return request

    @property
    def keeper(self) -> KeepAlive:
        """The lease's keepalive handle (its local deadline, `KeepAlive.remaining()`, ...).

        Raises:
            ConfigError: the session was not started.
        """
        if self._keeper is None:
            raise ConfigError("the session is not started: use `async with Session(...)` or await start()")
        return self._keeper

    @property
    def lost(self) -> asyncio.Event:
        """Set once the lease is gone (revoked, expired, or not renewed before its local deadline).

        Raises:
            ConfigError: the session was not started.
        """
        return self.keeper.lost

    @property
    def lost_reason(self) -> str | None:
        """Why the lease was lost; None while it is not (and before the session started)."""
        return self._keeper.lost_reason if self._keeper else None

    async def start(self, timeout: float | None = None) -> Session:
        """Grant the lease and keep it alive on the client's keepalive stream.

        If the start fails or is cancelled half-way, the lease it was granted is revoked: nothing is
        left behind.

        Args:
            timeout: Seconds for the grant (the client's default if None).

        Returns:
            The session itself.

        Raises:
            ConfigError: the session was already started (a session starts only once).
            TTLBelowMinimumError: etcd's minimum lease TTL is above ``ttl``; the lease it granted was
                revoked again.
            ConnectionFailedError: no endpoint answered within the timeout.
            EtcdTimeoutError: no answer within the timeout.
            ClientClosedError: the client is closed.
        """
        if self._keeper is not None or self._closed:
            raise ConfigError("a session can be started only once")
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        # The grant runs in a task of its own: if we are cancelled while it is in flight, it is let finish
        # and the lease it got is revoked, so a cancelled start leaves no lease behind.
        # The lease ID is chosen here, not by etcd: when a grant's reply is lost (the member died after
        # applying it, a timeout) the ID is still known, so the lease can be revoked at once instead of
        # lingering for its TTL.
        lease_id = secrets.randbits(63) or 1
        granting = loop.create_task(self._grant(lease_id, timeout), name="etcdlock:lease-grant")
        try:
            grant = await asyncio.shield(granting)
        except asyncio.CancelledError:
            await shielded(self._undo_grant(granting, lease_id), CLEANUP_TIMEOUT)
            raise
        except (EtcdTimeoutError, ConnectionFailedError):
            # Maybe granted, maybe not: revoke the ID in the background (etcd says "not found" if it never
            # was), so the caller gets its error now and no lease is left either way.
            self._closed = True
            self._client._spawn_owned(self._revoke_unconfirmed(lease_id), "revoke-unconfirmed-lease")
            raise
        self.lease_id = grant.id
        if grant.ttl > self.ttl:
            # etcd raised a TTL below its minimum lease TTL without a word: the lease (and every lock on it)
            # would outlive what was asked for by that much after a crash. Give the lease back and refuse.
            endpoint = self._client.current_endpoint
            self._closed = True  # nothing more to do for close(): the revoke below runs to its end anyway
            await shielded(self._revoke(), CLEANUP_TIMEOUT)
            raise TTLBelowMinimumError(
                f"ttl={self.ttl} s is below the minimum lease TTL of etcd at {endpoint} ({grant.ttl} s, "
                f"1.5 x its election timeout): etcd granted {grant.ttl} s instead, so lease "
                f"{grant.id:x} was revoked again; use ttl >= {grant.ttl}",
                ttl=self.ttl,
                minimum=grant.ttl,
            )
        try:
            # From when the grant went out, not from when it was asked for: it may have waited for a place
            # among the client's requests in flight (thousands of sessions started at once).
            granted_at = max(sent_at, grant.sent_at)
            self._keeper = self._client.keep_alive(grant.id, grant.ttl, granted_at=granted_at)
        except BaseException:
            await shielded(self._revoke(), CLEANUP_TIMEOUT)
            raise
        return self

    async def _grant(self, lease_id: int, timeout: float | None) -> LeaseGrant:
        try:
            return await self._client.grant(self.ttl, lease_id=lease_id, timeout=timeout)
        except ServerError as e:
            if _LEASE_EXISTS not in str(e):
                raise
        # The client retried the grant on another member after the first try's reply was lost, and the
        # first try had gone through: the lease is ours. Its TTL is the one etcd granted.
        ttl = await self._client.time_to_live(lease_id, timeout=timeout)
        return LeaseGrant(header=ttl.header, id=lease_id, ttl=ttl.granted_ttl)

    async def _undo_grant(self, granting: asyncio.Task[LeaseGrant], lease_id: int) -> None:
        try:
            grant = await granting
        except (EtcdTimeoutError, ConnectionFailedError):
            grant = None  # maybe granted: revoke the ID we asked for
        except Exception:
            return  # refused: no lease was granted
        self.lease_id = grant.id if grant is not None else lease_id
        await self._revoke()
        self._closed = True

    async def _revoke_unconfirmed(self, lease_id: int) -> None:
        with contextlib.suppress(EtcdError):
            await self._client.revoke(lease_id, timeout=CLEANUP_TIMEOUT)

    async def close(self) -> None:
        """Stop the keepalive and revoke the lease (shielded, own deadline). Idempotent.

        Every key on the lease (the session's locks) is deleted with it. A revoke that cannot get
        through in time is logged and counted, not raised: the lease then expires at its TTL. If the caller
        is cancelled meanwhile, the revoke still runs to its end before the cancellation goes on.
        """
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
        except LeaseNotFoundError:
            pass  # already gone (expired, or revoked by someone else)
        except EtcdError as e:
            # Retried within its deadline and still not through: the lease expires on its own at its TTL.
            self._client._recipes.stats.revoke_failures += 1
            log.warning("could not revoke lease %x (%s); it expires at its TTL", self.lease_id, e)

    @property
    def closed(self) -> bool:
        """True once the session was closed (or its start failed)."""
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
