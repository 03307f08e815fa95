"""The asyncio etcd client: one object owning the connection, the keepalive stream and the watch streams."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, Unpack

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
    """What a client holds right now. Everything here must drop to zero after close()."""

    channels: int
    watch_streams: int
    watch_streams_closing: int
    watchers: int
    keepalive_streams: int
    keepalive_leases: int
    tasks: list[str]

    def total(self) -> int:
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
        return self._conn.endpoints

    @property
    def current_endpoint(self) -> str:
        return self._conn.current_endpoint

    @property
    def default_timeout(self) -> float:
        return self._conn.default_timeout

    async def connect(self, timeout: float | None = None) -> Self:
        """Check that an endpoint answers (and credentials work) so problems show up here, not later."""
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
        channels. Idempotent; shielded from the caller's cancellation."""
        if self._closed:
            return
        self._closed = True
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
        return self._closed

    # ---- KV ----

    async def get(
        self, key: Key, *, timeout: float | None = None, **options: Unpack[RangeOptions]
    ) -> GetResult:
        """Read a key, a prefix (prefix=True) or a range (range_end=...)."""
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
        return await self._kv.compact(revision, physical=physical, timeout=timeout)

    # ---- leases ----

    async def grant(self, ttl: int, *, lease_id: int = 0, timeout: float | None = None) -> LeaseGrant:
        grant = await self._lease.grant(ttl, lease_id=lease_id, timeout=timeout)
        self._revision_seen = max(self._revision_seen, grant.header.revision)
        return grant

    async def revoke(self, lease_id: int, *, timeout: float | None = None) -> Header:
        return await self._lease.revoke(lease_id, timeout=timeout)

    async def time_to_live(
        self, lease_id: int, *, keys: bool = False, timeout: float | None = None
    ) -> LeaseTimeToLive:
        return await self._lease.time_to_live(lease_id, keys=keys, timeout=timeout)

    async def leases(self, *, timeout: float | None = None) -> list[int]:
        return await self._lease.leases(timeout=timeout)

    def keep_alive(self, lease_id: int, ttl: int, *, granted_at: float | None = None) -> KeepAlive:
        """Renew the lease on the client's one keepalive stream until ``handle.stop()`` or loss."""
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
        """``async for event in client.watch(key, ...)``: events from start_revision (0 = from now)."""
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
