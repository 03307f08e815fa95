"""The asyncio etcd client: one object owning the connection, the keepalive stream and the watch streams."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, Unpack

from etcdlock._core import fork
from etcdlock._core.batch import TxnBatcher
from etcdlock._core.connection import Connection, TLSConfig
from etcdlock._core.errors import EtcdError
from etcdlock._core.kv import KV, RangeOptions
from etcdlock._core.lease import DEFAULT_LEASE_MARGIN, KeepAlive, Leases, check_lease_margin
from etcdlock._core.tasks import TaskOwner
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
from etcdlock._core.watch import DEFAULT_MAX_BUFFER, Watcher, Watches
from etcdlock._wire import methods
from etcdlock._wire import rpc_pb2 as pb


@dataclass(frozen=True)
class Resources:
    """What a client holds right now (`resources()`). Everything here drops to zero after `close()`."""

    channels: int
    """gRPC channels open: at most one per endpoint."""
    watch_streams: int
    """Watch streams open: 0 or 1 (all watchers share one)."""
    watch_streams_closing: int
    """Watch streams whose last watcher left, still closing."""
    watchers: int
    """Watchers live on the watch streams (the client's own included, e.g. those of lock names)."""
    keepalive_streams: int
    """Keepalive streams open: 0 or 1 (all leases kept alive share one)."""
    keepalive_leases: int
    """Leases kept alive by the client."""
    tasks: list[str]
    """Names of the background tasks the client owns."""

    def total(self) -> int:
        """Everything above added up (0 for a closed client).

        Returns:
            The sum of the counts, with one per task.
        """
        return (
            self.channels
            + self.watch_streams
            + self.watch_streams_closing
            + self.watchers
            + self.keepalive_streams
            + self.keepalive_leases
            + len(self.tasks)
        )


class CoreClient:
    """Asyncio etcd v3 client.

    ``async with Client(["127.0.0.1:2379"]) as client: ...``. Every call takes ``timeout`` (seconds; the
    client's ``timeout`` by default) and fails over to the next endpoint when one is unavailable.

    ``lease_margin`` (seconds, default 1): every lease this client keeps alive counts as lost this much
    before the earliest moment etcd may expire it, because a renewal answered by a leader that was already
    deposed extends nothing (at most half the TTL).

    Errors every call can raise, besides those it names: `ConnectionFailedError` (no endpoint answered
    within the timeout), `EtcdTimeoutError` (no answer within the timeout; a write may have been
    applied), `AuthError`, `PermissionDeniedError`, `ServerError` (any other error from etcd) and
    `ClientClosedError`; `ConfigError` for bad arguments, before anything is sent. All are `EtcdError`.
    """

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
        """Make a client; nothing is connected until the first call (``async with`` checks at once).

        Args:
            endpoints: etcd members, ``"host:port"`` each (or one string); ``http://`` and ``https://``
                prefixes are accepted, ``https://`` meaning TLS verified against the system's roots when
                ``tls`` is not given. Calls go to one endpoint and move to the next when it fails.
            timeout: The default timeout of every call, in seconds.
            username: User to authenticate as, on a server with auth enabled (with ``password``).
            password: That user's password.
            tls: Certificates for TLS (server verification, and client certificates for mTLS).
            watch_buffer: Events a watcher buffers for a slow consumer before it is ended with
                `WatchOverflowError` (the default of `watch()`'s ``max_buffer``).
            lease_margin: Seconds before the earliest moment etcd may expire a lease that this client
                counts it lost (capped at half the lease's TTL).

        Raises:
            ConfigError: a bad endpoint, timeout or margin, only one of username and password, or TLS
                files that cannot be read or do not go together.
        """
        self._conn = Connection(
            endpoints, tls=tls, username=username, password=password, default_timeout=timeout
        )
        self._tasks = TaskOwner("client")
        self._kv = KV(self._conn)
        self._batcher = TxnBatcher(self._conn, self._tasks)
        # The highest revision a grant or a recipe's Txn has seen: a revision etcd had committed, so any
        # later write of this client lands above it (a new lock queue's watch starts there to cover the
        # key its lock is about to create).
        self._revision_seen = 0
        self._leases: Leases | None = None
        self._watches: Watches | None = None
        self._watch_buffer = watch_buffer
        self._lease_margin = check_lease_margin(lease_margin)
        self._closed = False
        self._close_hooks: list[Callable[[], Awaitable[None]]] = []

    # The keepalive manager and the watch hub hold asyncio primitives, so they are made inside the loop.
    @property
    def _lease(self) -> Leases:
        if self._leases is None:
            self._leases = Leases(self._conn, self._tasks, self._lease_margin)
        return self._leases

    @property
    def _watch(self) -> Watches:
        if self._watches is None:
            self._watches = Watches(self._conn, self._tasks, self._watch_buffer)
        return self._watches

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoints, as ``"host:port"``, in order, without duplicates."""
        return self._conn.endpoints

    @property
    def current_endpoint(self) -> str:
        """The endpoint calls go to now (it moves on when one fails)."""
        return self._conn.current_endpoint

    @property
    def default_timeout(self) -> float:
        """The timeout of calls that are not given one, in seconds."""
        return self._conn.default_timeout

    async def connect(self, timeout: float | None = None) -> Self:
        """Check that an endpoint answers (and credentials work) so problems show up here, not later.

        ``async with`` does this on entry (and closes the client if it fails).

        Args:
            timeout: Seconds to wait (the client's default if None).

        Returns:
            The client itself.

        Raises:
            ConnectionFailedError: no endpoint answered.
            EtcdTimeoutError: no answer within the timeout.
            AuthError: the credentials were refused.
            EtcdError: any other failure: `PermissionDeniedError`, `ClientClosedError`, `ServerError`.
        """
        await self.status(timeout=timeout)
        return self

    async def __aenter__(self) -> Self:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop keepalives (leases are not revoked: their owners do that), end watches and tasks, close
        channels. Idempotent; shielded from the caller's cancellation.

        The client's default sessions (those of locks taken without ``session=``) are revoked first;
        a session made with `session()` is not, so close it before (its lease otherwise expires at its
        TTL). Watchers still iterating end with `ClientClosedError`, and so does every later call.
        """
        if self._closed:
            return
        self._closed = True
        if fork.forked_since(self._conn.born):
            return  # inherited across fork(): nothing of it can run here (its loop, gRPC); see fork.py
        await asyncio.shield(self._close())

    def _add_close_hook(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `await hook()` first thing in close() (for recipes that own state tied to this client)."""
        self._close_hooks.append(hook)

    async def _close(self) -> None:
        hooks, self._close_hooks = self._close_hooks, []
        for hook in hooks:
            try:
                await hook()
            except Exception:
                logging.getLogger("etcdlock._client").exception("close hook failed")
        if self._leases is not None:
            await self._leases.keepalive.close()
        if self._watches is not None:
            await self._watches.close()
        await self._tasks.cancel_all()
        self._batcher.close()
        await self._conn.close()

    @property
    def closed(self) -> bool:
        """True once `close()` was called."""
        return self._closed

    # ---- KV ----

    async def get(
        self, key: Key, *, timeout: float | None = None, **options: Unpack[RangeOptions]
    ) -> GetResult:
        """Read a key, a prefix (prefix=True) or a range (range_end=...).

        The options, all keyword arguments:

        - ``prefix`` (bool): every key starting with ``key``.
        - ``range_end`` (str | bytes): the keys from ``key`` up to, not including, this one.
        - ``limit`` (int): at most this many keys (0: no limit).
        - ``revision`` (int): read the store as it was at this revision (0: now).
        - ``sort_order`` (``"none"``, ``"ascend"``, ``"descend"``) and ``sort_target`` (``"key"``,
          ``"version"``, ``"create"``, ``"mod"``, ``"value"``).
        - ``keys_only`` (bool): no values. ``count_only`` (bool): only the count.
        - ``serializable`` (bool): let the member answer from its own copy, without asking a quorum
          (faster, may be stale).
        - ``min_create_revision``, ``max_create_revision``, ``min_mod_revision``, ``max_mod_revision``
          (int): only keys within these revision bounds (0: no bound).

        Args:
            key: The key, or the prefix with ``prefix=True`` (str is encoded as UTF-8). With
                ``prefix=True`` an empty key reads every key.
            timeout: Seconds for the call (the client's default if None).
            **options: The options above.

        Returns:
            The keys read, their count, and the revision they were read at.

        Raises:
            ConfigError: a bad key or option (an empty key without ``prefix``, both ``prefix`` and
                ``range_end``, a negative limit or revision, an unknown sort).
            CompactedError: ``revision`` was compacted away.
            ConnectionFailedError: no endpoint answered within the timeout.
            EtcdTimeoutError: no answer within the timeout.
            EtcdError: any other failure: `AuthError`, `PermissionDeniedError`, `ClientClosedError`,
                `ServerError`.
        """
        return await self._kv.get(key, timeout=timeout, **options)

    async def put(
        self,
        key: Key,
        value: str | bytes,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> PutResult:
        """Write a key.

        Args:
            key: The key (str is encoded as UTF-8).
            value: The value (str is encoded as UTF-8).
            lease: Attach the key to this lease, so it is deleted when the lease ends (0: none).
            prev_kv: Return the key as it was before, in `PutResult.prev_kv`.
            timeout: Seconds for the call (the client's default if None).

        Returns:
            The revision of the write (and the previous key, if asked for).

        Raises:
            ConfigError: a bad key, value or lease.
            LeaseNotFoundError: ``lease`` does not exist (expired or revoked); nothing was written.
            ConnectionFailedError: no endpoint answered within the timeout.
            EtcdTimeoutError: no answer within the timeout (the write may have been applied).
            EtcdError: any other failure: `AuthError`, `PermissionDeniedError`, `ClientClosedError`,
                `ServerError`.
        """
        return await self._kv.put(key, value, lease=lease, prev_kv=prev_kv, timeout=timeout)

    async def delete(
        self,
        key: Key,
        *,
        prefix: bool = False,
        range_end: Key | None = None,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> DeleteResult:
        """Delete a key, a prefix or a range.

        Args:
            key: The key, or the prefix with ``prefix=True`` (str is encoded as UTF-8). With
                ``prefix=True`` an empty key deletes every key.
            prefix: Delete every key starting with ``key``.
            range_end: Delete the keys from ``key`` up to (not including) this one.
            prev_kv: Return the deleted keys, in `DeleteResult.prev_kvs`.
            timeout: Seconds for the call (the client's default if None).

        Returns:
            How many keys were deleted, and the revision after the delete.

        Raises:
            ConfigError: a bad key, or both ``prefix`` and ``range_end``.
            ConnectionFailedError: no endpoint answered within the timeout.
            EtcdTimeoutError: no answer within the timeout (the delete may have been applied).
            EtcdError: any other failure: `AuthError`, `PermissionDeniedError`, `ClientClosedError`,
                `ServerError`.
        """
        return await self._kv.delete(
            key, prefix=prefix, range_end=range_end, prev_kv=prev_kv, timeout=timeout
        )

    async def txn(
        self,
        compare: list[Compare],
        success: list[Op],
        failure: list[Op] | None = None,
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        """Run a transaction: if every condition holds, the ``success`` operations, else the ``failure``
        ones, atomically.

        Args:
            compare: The conditions (`Compare`); an empty list always holds.
            success: The operations (`Op`) run when every condition holds.
            failure: The operations run otherwise (none by default).
            timeout: Seconds for the call (the client's default if None).

        Returns:
            Which branch ran (`TxnResult.succeeded`) and the result of each of its operations.

        Raises:
            ConfigError: an entry that is not a `Compare` or an `Op`.
            LeaseNotFoundError: a put in the branch that ran names a lease that does not exist; nothing
                was applied.
            ConnectionFailedError: no endpoint answered within the timeout.
            EtcdTimeoutError: no answer within the timeout (the transaction may have been applied).
            ServerError: etcd refused the transaction (e.g. the same key written twice in it).
            EtcdError: any other failure: `AuthError`, `PermissionDeniedError`, `ClientClosedError`.
        """
        return await self._kv.txn(compare, success, failure, timeout=timeout)

    async def _txn_batched(
        self,
        request: pb.TxnRequest,
        conflict: bytes,
        order: bytes,
        *,
        timeout: float | None = None,
    ) -> pb.TxnResponse:
        """A prebuilt Txn for the recipes' hot path, answered as the raw reply. It may share one RPC with
        concurrent requests (see batch.py): never with one of the same conflict key; requests of one order
        key are applied one after the other, in call order."""
        reply = await self._batcher.txn(request, conflict, order, timeout)
        self._revision_seen = max(self._revision_seen, reply.header.revision)
        return reply

    async def compact(self, revision: int, *, physical: bool = False, timeout: float | None = None) -> Header:
        """Discard the history before ``revision``: reads and watches at older revisions fail afterwards.

        Args:
            revision: The oldest revision to keep.
            physical: Return only once the space was freed on the member, not just scheduled.
            timeout: Seconds for the call (the client's default if None).

        Returns:
            The reply's header.

        Raises:
            CompactedError: ``revision`` was already compacted.
            ServerError: ``revision`` is newer than the store's (code ``OUT_OF_RANGE``).
            ConnectionFailedError: no endpoint answered within the timeout.
            EtcdTimeoutError: no answer within the timeout.
            EtcdError: any other failure: `AuthError`, `PermissionDeniedError`, `ClientClosedError`.
        """
        return await self._kv.compact(revision, physical=physical, timeout=timeout)

    # ---- leases ----

    async def grant(self, ttl: int, *, lease_id: int = 0, timeout: float | None = None) -> LeaseGrant:
        """Grant a lease. It expires ``ttl`` seconds after its last renewal (see `keep_alive()`).

        Args:
            ttl: Seconds; etcd raises a TTL below its minimum lease TTL to that minimum (see
                `LeaseGrant.ttl`).
            lease_id: The ID to give the lease (0: etcd chooses).
            timeout: Seconds for the call (the client's default if None).

        Returns:
            The lease's ID and the TTL granted.

        Raises:
            ConfigError: ``ttl`` is not a whole number of seconds from 1 to 9,000,000,000.
            ServerError: etcd refused the grant (e.g. a lease with ``lease_id`` exists already).
            ConnectionFailedError: no endpoint answered within the timeout.
            EtcdTimeoutError: no answer within the timeout (the lease may have been granted).
            EtcdError: any other failure: `AuthError`, `PermissionDeniedError`, `ClientClosedError`.
        """
        grant = await self._lease.grant(ttl, lease_id=lease_id, timeout=timeout)
        self._revision_seen = max(self._revision_seen, grant.header.revision)
        return grant

    async def revoke(self, lease_id: int, *, timeout: float | None = None) -> Header:
        """Revoke a lease: it ends now, and every key attached to it is deleted.

        Args:
            lease_id: The lease.
            timeout: Seconds for the call (the client's default if None).

        Returns:
            The reply's header (its revision is after the deletes).

        Raises:
            LeaseNotFoundError: the lease does not exist (expired, revoked, never granted).
            ConnectionFailedError: no endpoint answered within the timeout.
            EtcdTimeoutError: no answer within the timeout (the lease may have been revoked).
            EtcdError: any other failure: `AuthError`, `PermissionDeniedError`, `ClientClosedError`,
                `ServerError`.
        """
        return await self._lease.revoke(lease_id, timeout=timeout)

    async def time_to_live(
        self, lease_id: int, *, keys: bool = False, timeout: float | None = None
    ) -> LeaseTimeToLive:
        """Ask etcd how long a lease has left.

        Args:
            lease_id: The lease.
            keys: Also list the keys attached to it.
            timeout: Seconds for the call (the client's default if None).

        Returns:
            The seconds left (-1 when the lease does not exist: no error is raised), the TTL granted,
            and the keys if asked for.

        Raises:
            ConnectionFailedError: no endpoint answered within the timeout.
            EtcdTimeoutError: no answer within the timeout.
            EtcdError: any other failure: `AuthError`, `PermissionDeniedError`, `ClientClosedError`,
                `ServerError`.
        """
        return await self._lease.time_to_live(lease_id, keys=keys, timeout=timeout)

    async def leases(self, *, timeout: float | None = None) -> list[int]:
        """List every lease on the cluster (not only this client's).

        Args:
            timeout: Seconds for the call (the client's default if None).

        Returns:
            The IDs of the leases that exist.

        Raises:
            ConnectionFailedError: no endpoint answered within the timeout.
            EtcdTimeoutError: no answer within the timeout.
            EtcdError: any other failure: `AuthError`, `PermissionDeniedError`, `ClientClosedError`,
                `ServerError`.
        """
        return await self._lease.leases(timeout=timeout)

    def keep_alive(self, lease_id: int, ttl: int, *, granted_at: float | None = None) -> KeepAlive:
        """Renew the lease on the client's one keepalive stream until ``handle.stop()`` or loss.

        Renewals go out about three times per TTL. The handle's `KeepAlive.lost` fires when etcd answers
        that the lease is gone (TTL 0) or when its local deadline passes without a trusted renewal; a lost
        lease is not renewed again. Call it inside the event loop that uses the client.

        Args:
            lease_id: The lease (as granted by `grant()`).
            ttl: Its TTL in seconds, as granted (`LeaseGrant.ttl`).
            granted_at: The event loop's time (``loop.time()``) when the grant was sent: the lease is
                then trusted until that + TTL (less the client's ``lease_margin``) and first renewed
                about a third of the TTL later. If None, nothing is known of the lease: it is renewed at
                once (which also tells whether it exists).

        Returns:
            The handle: `KeepAlive.lost`, `KeepAlive.stop()`, and the local deadline.

        Raises:
            ConfigError: a bad TTL, or the lease is already kept alive by this client.
            ClientClosedError: the client is closed.
        """
        return self._lease.keep_alive(lease_id, ttl, granted_at=granted_at)

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
    ) -> Watcher:
        """``async for event in client.watch(key, ...)``: events from start_revision (0 = from now).

        Nothing is sent until the watcher is iterated (or entered with ``async with``); leaving the loop
        by any path ends the watch. Every watcher of the client shares one stream; when the stream or its
        member fails, the watcher resumes elsewhere from its next revision (nothing lost or repeated).

        Args:
            key: The key, or the prefix with ``prefix=True`` (str is encoded as UTF-8). With
                ``prefix=True`` an empty key watches every key.
            prefix: Watch every key starting with ``key``.
            range_end: Watch the keys from ``key`` up to (not including) this one.
            start_revision: The first revision to report (0: changes from now on); older changes still in
                etcd's history are replayed.
            no_put: Do not report puts.
            no_delete: Do not report deletes.
            prev_kv: Report each key as it was before the change (`WatchEvent.prev_kv`).
            progress_notify: Ask etcd to report progress on a quiet watch (it keeps the resume point
                current; no events are produced).
            max_buffer: Events buffered for a slow consumer before the watcher is ended with
                `WatchOverflowError` (the client's ``watch_buffer`` if None).

        Returns:
            The watcher: an async iterator of `WatchEvent`, and an async context manager.

        Raises:
            ConfigError: a bad key, both ``prefix`` and ``range_end``, a negative start revision, or a
                ``max_buffer`` below 1. Later, while iterating: `CompactedError` (``start_revision``
                was compacted away), `WatchOverflowError`, `WatchError` (etcd ended the watch) and
                `ClientClosedError`.
        """
        return self._watch.watch(
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

    # ---- cluster ----

    async def status(self, *, timeout: float | None = None) -> Status:
        """The status of the member calls go to now (it moves on when one fails).

        Args:
            timeout: Seconds for the call (the client's default if None).

        Returns:
            The member's version, database size, leader, raft index and term, and its endpoint.

        Raises:
            ConnectionFailedError: no endpoint answered within the timeout.
            EtcdTimeoutError: no answer within the timeout.
            AuthError: the credentials were refused.
            EtcdError: any other failure: `PermissionDeniedError`, `ClientClosedError`, `ServerError`.
        """
        reply = await self._conn.unary(methods.STATUS, pb.StatusRequest(), timeout)
        return Status(
            Header.from_pb(reply.header),
            reply.version,
            reply.dbSize,
            reply.leader,
            reply.raftIndex,
            reply.raftTerm,
            self._conn.current_endpoint,
        )

    async def member_list(self, *, timeout: float | None = None) -> list[Member]:
        """The members of the cluster.

        Args:
            timeout: Seconds for the call (the client's default if None).

        Returns:
            One entry per member: its ID, name, peer and client URLs.

        Raises:
            ConnectionFailedError: no endpoint answered within the timeout.
            EtcdTimeoutError: no answer within the timeout.
            EtcdError: any other failure: `AuthError`, `PermissionDeniedError`, `ClientClosedError`,
                `ServerError`.
        """
        reply = await self._conn.unary(methods.MEMBER_LIST, pb.MemberListRequest(), timeout)
        return [
            Member(m.ID, m.name, list(m.peerURLs), list(m.clientURLs), m.isLearner) for m in reply.members
        ]

    @property
    def _requests_throttled(self) -> int:
        """Requests etcd refused with "too many requests" (not applied) and this client sent again."""
        return self._conn.throttled

    @property
    def _keepalive_renewals_sent(self) -> int:
        return self._leases.keepalive.renewals_sent if self._leases is not None else 0

    def _spawn_owned(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a background task owned by this client (for recipes): named, listed in resources(),
        cancelled and awaited by close()."""
        return self._tasks.spawn(coro, name)

    # ---- diagnostics ----

    def resources(self) -> Resources:
        """What the client holds right now: channels, streams, watchers, leases kept alive, tasks.

        Returns:
            A snapshot; every count is 0 after `close()`.
        """
        w = self._watches
        ka = self._leases.keepalive if self._leases is not None else None
        return Resources(
            channels=self._conn.channel_count(),
            watch_streams=w.stream_count() if w else 0,
            watch_streams_closing=w.closing_count() if w else 0,
            watchers=w.watcher_count() if w else 0,
            keepalive_streams=ka.streams_open if ka else 0,
            keepalive_leases=len(ka.lease_ids()) if ka else 0,
            tasks=self._tasks.names(),
        )


__all__ = ["CoreClient", "EtcdError", "Resources"]
