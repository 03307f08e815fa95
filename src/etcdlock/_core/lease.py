"""Leases: grant / revoke / inspect, and keepalive for any number of leases over ONE shared stream.

The keepalive stream has two tasks, both owned by the KeepAlive manager: a scheduler that sends renewals
(each lease at about a third of its TTL) and watches local deadlines, and the stream's single reader. A
lease is *lost* when a reply says TTL <= 0 (revoked or expired on the server) or when its local deadline
passes with no trusted renewal, measured on the monotonic clock from the renewal's send time.
A lost lease leaves the registry at once; nothing else ever removes it but `KeepAlive.stop()`.

A renewal is trusted only as far as its member is known to be the cluster's leader or in touch with it. A
leader cut off from the others keeps answering renewals until it notices and steps down (up to about two
of its election timeouts), while a new leader, elected meanwhile, keeps the lease only for TTL + its own
election timeout from its election: with a slower member than the rest, the client would believe in a
lease etcd has already expired. So with the renewals, the scheduler asks the same member a linearizable
read (which needs a quorum's answer), and a renewal moves the deadline only to
min(its send time, the send time of the latest read that member answered) + TTL - margin. A member that
cannot answer such a read is left, like one that stops answering renewals.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

from etcdlock._core.connection import Connection, translate
from etcdlock._core.errors import ConfigError, EtcdError, LeaseNotFoundError
from etcdlock._core.stream import BidiStream
from etcdlock._core.tasks import TaskOwner
from etcdlock._core.types import Header, LeaseGrant, LeaseTimeToLive
from etcdlock._wire import methods
from etcdlock._wire import rpc_pb2 as pb

log = logging.getLogger("etcdlock.lease")

# A read of one key nobody writes, linearizable (the default): answered only by a member in touch with a
# quorum. count_only: nothing comes back but the header.
_QUORUM_READ = pb.RangeRequest(key=b"\x00etcdlock/quorum-check", count_only=True)
CONFIRM_EVERY = 0.2  # seconds between quorum reads while renewals go out

# etcd refuses TTLs below its minimum (a few election timeouts) by raising them; we only reject nonsense.
MAX_TTL = 9_000_000_000

# How much sooner than the server may expire a lease the client counts it lost. A renewal is answered by the
# member the client talks to; if that member is a leader cut off from the others that has not stepped down
# yet, its answer extends nothing: the new leader keeps the lease for TTL + its election timeout from its
# election. A deposed leader keeps answering for up to about one election timeout longer than that when
# every member has the same election timeout (etcd's default is 1 s), so the default covers exactly that.
# Clusters whose members have longer or unequal election timeouts need a larger margin (see README).
DEFAULT_LEASE_MARGIN = 1.0


def check_lease_margin(margin: object) -> float:
    if isinstance(margin, bool) or not isinstance(margin, int | float):
        raise ConfigError(f"lease_margin must be a number of seconds, not {type(margin).__name__}")
    if not 0 <= margin < float("inf"):
        raise ConfigError(f"lease_margin must be a finite number of seconds >= 0, got {margin!r}")
    return float(margin)


def check_ttl(ttl: int) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise ConfigError(f"lease TTL must be a whole number of seconds, not {type(ttl).__name__}")
    if not 0 < ttl <= MAX_TTL:
        raise ConfigError(f"lease TTL must be between 1 and {MAX_TTL} seconds, got {ttl}")
    return ttl


class KeepAlive:
    """Handle of one lease kept alive by the client. Fires `lost` once, never un-fires.

    Made by `keep_alive()`. The lease is renewed on the client's one keepalive stream until `stop()`
    or until it is lost: etcd answered that it is gone (TTL 0), or its local deadline passed with no
    trusted renewal. The deadline is measured on the event loop's (monotonic) clock from the send time of
    the last renewal that the member answered and confirmed it reaches a quorum, less a margin.
    """

    def __init__(
        self, manager: KeepAliveManager, lease_id: int, ttl: int, granted_at: float, margin: float
    ) -> None:
        self._manager = manager
        self.id = lease_id
        """The lease's ID."""
        self.ttl = ttl
        """The lease's TTL in seconds, as granted."""
        # Never more than half the TTL, so a short lease still has room to be renewed.
        self.margin = min(margin, ttl / 2.0)
        """Seconds before the earliest moment etcd may expire the lease that it counts as lost (the
        client's ``lease_margin``, at most half the TTL)."""
        self.lost = asyncio.Event()
        """Set once the lease is lost (never cleared); not set by `stop()`."""
        self.lost_reason: str | None = None
        """Why the lease was lost, None while it is not."""
        self.renewals = 0
        """Renewals etcd answered."""
        # Local deadline: the server keeps the lease at least until (send time of the last trusted renewal
        # + TTL); we count it lost `margin` sooner. The grant went through the leader's log: trusted.
        self.expires_at = granted_at + ttl - self.margin
        """The local deadline, in the event loop's time (``loop.time()``): the lease counts as lost then
        unless a renewal moves it later."""
        self.next_send = granted_at + self.interval
        """When the next renewal is due (loop time). Scheduler state: @private"""
        self.sent_at: float | None = None
        """Send time of the renewal in flight, None if none. Scheduler state: @private"""
        # The latest answered renewal (send time, TTL granted), waiting to be trusted up to a quorum read.
        self.answered_at = -math.inf
        """Send time of the latest answered renewal. Scheduler state: @private"""
        self.answered_ttl = ttl
        """TTL in the latest renewal's answer. Scheduler state: @private"""
        self._callbacks: list[Callable[[str], None]] = []

    @property
    def interval(self) -> float:
        """Seconds between renewals: three within the part of the TTL the client trusts (at least 0.2)."""
        return max((self.ttl - self.margin) / 3.0, 0.2)

    @property
    def stall_after(self) -> float:
        """How long a renewal may go unanswered before the stream counts as stalled: half the renewal
        interval, so a retry on another member still lands well inside the TTL. @private"""
        return min(max(self.interval / 2.0, 0.5), 5.0)

    @property
    def active(self) -> bool:
        """True while the lease is being renewed: neither lost nor stopped."""
        return not self.lost.is_set() and self._manager.is_registered(self)

    def remaining(self) -> float:
        """Seconds until the local deadline (negative once passed).

        Returns:
            `expires_at` minus the event loop's time now.

        Raises:
            RuntimeError: called outside the event loop.
        """
        return self.expires_at - asyncio.get_running_loop().time()

    def check(self) -> bool:
        """True while the lease is alive by the local deadline, checked now, not at the next timer tick.

        After the process was stopped (SIGSTOP, a long GC pause, a blocked loop) the scheduler's timer has
        not run yet, but the clock has moved on: this fires `lost` at once if the deadline has passed.

        Returns:
            False once the lease is lost (`lost_reason` says why).

        Raises:
            RuntimeError: called outside the event loop.
        """
        if self.lost_reason is None and self.remaining() <= 0 and self._manager.is_registered(self):
            self._manager._lose(self, self._manager.expired_reason(self))
        return self.lost_reason is None

    def add_lost_callback(self, fn: Callable[[str], None]) -> None:
        """fn(reason) runs once when the lease is lost (at once if already lost). Not on stop().

        It runs in the event loop, inside the client's keepalive machinery: keep it quick. An exception
        it raises there is logged and does not stop the other callbacks (if the lease is already lost,
        it runs at once, here, and its exception reaches the caller).

        Args:
            fn: Called with the reason the lease was lost.
        """
        if self.lost_reason is not None:
            fn(self.lost_reason)
        else:
            self._callbacks.append(fn)

    def remove_lost_callback(self, fn: Callable[[str], None]) -> None:
        """Take back a callback added by `add_lost_callback()` (nothing happens if it is not there).

        Args:
            fn: The callback, as added.
        """
        with contextlib.suppress(ValueError):
            self._callbacks.remove(fn)

    def _fire_lost(self, reason: str) -> None:
        if self.lost_reason is not None:
            return
        self.lost_reason = reason
        self.lost.set()
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(reason)
            except Exception:  # a user callback must not break the keepalive loop
                log.exception("lease %x lost-callback failed", self.id)

    def declare_lost(self, reason: str) -> None:
        """The lease is known gone by other means (etcd answered "lease not found"): lost, now. @private"""
        self._manager._lose(self, reason)

    def stop(self) -> None:
        """Stop renewing (does not revoke). Idempotent.

        The lease then expires at its TTL unless revoked (`revoke()`); `lost` is not set and lost
        callbacks are dropped.
        """
        self._callbacks.clear()
        self._manager.unregister(self)

    def __repr__(self) -> str:
        state = f"lost: {self.lost_reason}" if self.lost_reason else "alive"
        return f"<KeepAlive lease={self.id:x} ttl={self.ttl} {state}>"


class KeepAliveManager(BidiStream):
    """Owns the one LeaseKeepAlive stream of a client and the registry of leases kept alive on it."""

    def __init__(self, conn: Connection, tasks: TaskOwner, margin: float = DEFAULT_LEASE_MARGIN) -> None:
        super().__init__(conn, tasks, methods.LEASE_KEEPALIVE, leader=False, name="lease-keepalive", log=log)
        self.margin = check_lease_margin(margin)
        self._registry: dict[int, KeepAlive] = {}
        # Thousands of leases on one stream: nothing here may look at every lease per renewal or per
        # registration. Renewals due and local deadlines are kept in heaps of (time, seq, lease); an entry
        # is stale (and skipped) once its lease left or its time moved.
        self._due: list[tuple[float, int, KeepAlive]] = []
        self._deadlines: list[tuple[float, int, KeepAlive]] = []
        self._seq = itertools.count()
        # Renewals sent and not answered yet, oldest first (lease id -> its keeper).
        self._outstanding: dict[int, KeepAlive] = {}
        self._runner: asyncio.Task[Any] | None = None
        self.renewals_sent = 0
        self.stalls = 0  # streams abandoned because renewals went unanswered
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._closed = False
        # Quorum confirmation of the stream's member (see the module docstring).
        self._confirmed_at = -math.inf  # send time of the latest linearizable read the member answered
        self._confirm_sent_at = -math.inf
        self._confirming: asyncio.Task[Any] | None = None
        self._unconfirmed: str | None = None  # the member failed a quorum read: leave it

    # ---- registry ----

    def register(self, lease_id: int, ttl: int, granted_at: float, *, renew_now: bool = False) -> KeepAlive:
        if self._closed:
            from etcdlock._core.errors import ClientClosedError

            raise ClientClosedError("the etcdlock client is closed")
        if lease_id in self._registry:
            raise ConfigError(f"lease {lease_id:x} is already kept alive by this client")
        keeper = KeepAlive(self, lease_id, ttl, granted_at, self.margin)
        if renew_now:
            keeper.next_send = granted_at
        self._registry[lease_id] = keeper
        self._schedule(keeper)
        heapq.heappush(self._deadlines, (keeper.expires_at, next(self._seq), keeper))
        self._arm_deadline(keeper.expires_at)
        if self._runner is None:
            self._runner = self._tasks.spawn(self._run(), "lease-keepalive")
        self.wake()
        return keeper

    def is_registered(self, keeper: KeepAlive) -> bool:
        return self._registry.get(keeper.id) is keeper

    def unregister(self, keeper: KeepAlive) -> None:
        if self._registry.get(keeper.id) is keeper:
            del self._registry[keeper.id]
            if self._outstanding.get(keeper.id) is keeper:
                del self._outstanding[keeper.id]
            self.wake()

    def _schedule(self, keeper: KeepAlive) -> None:
        heapq.heappush(self._due, (keeper.next_send, next(self._seq), keeper))

    # ---- local deadlines ----
    # A loop timer, not the stream's runner, declares leases lost: the runner may be held up in a stream
    # write to a member that stopped reading, and the loss must be on time regardless.

    def _arm_deadline(self, at: float) -> None:
        timer = self._deadline_timer
        if timer is not None and timer.when() <= at:
            return  # an earlier check is already due; it re-arms for the rest
        if timer is not None:
            timer.cancel()
        self._deadline_timer = asyncio.get_running_loop().call_at(at, self._expire_due)

    @staticmethod
    def expired_reason(keeper: KeepAlive) -> str:
        return f"no successful keepalive within the TTL ({keeper.ttl}s)"

    def _expire_due(self) -> None:
        """The earliest local deadline came: lose what expired; renewed leases go back with their new one."""
        self._deadline_timer = None
        now = asyncio.get_running_loop().time()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, keeper = heapq.heappop(heap)
            if not self.is_registered(keeper):
                continue
            if keeper.expires_at <= now:
                self._lose(keeper, self.expired_reason(keeper))
            else:  # renewed meanwhile: deadlines only move later
                heapq.heappush(heap, (keeper.expires_at, next(self._seq), keeper))
        if heap:
            self._arm_deadline(heap[0][0])

    def _lose(self, keeper: KeepAlive, reason: str) -> None:
        self.unregister(keeper)
        keeper._fire_lost(reason)

    def lease_ids(self) -> list[int]:
        return list(self._registry)

    @property
    def streams_open(self) -> int:
        return int(self.is_open)

    # ---- the stream (see core/stream.py for how it stays connected) ----

    async def _run(self) -> None:
        try:
            await self.run()
        finally:
            if self._runner is asyncio.current_task():
                self._runner = None
            # Registered again while we were closing down: hand over to a fresh runner.
            if self._registry and not self._closed and self._runner is None:
                self._runner = self._tasks.spawn(self._run(), "lease-keepalive")

    def needed(self) -> bool:
        return bool(self._registry) and not self._closed

    def on_open(self, now: float) -> None:
        self._confirmed_at = -math.inf
        unanswered, self._outstanding = self._outstanding, {}
        for keeper in unanswered.values():
            # Its renewal went down with the old stream: send it again now. The others keep their
            # schedule (a new lease is not renewed at once: its grant is fresh).
            keeper.sent_at = None
            keeper.next_send = now
            self._schedule(keeper)

    async def send(self, call: Any, now: float) -> None:
        due = self._due
        while due and due[0][0] <= now:
            t, _, keeper = heapq.heappop(due)
            if not self.is_registered(keeper) or keeper.next_send != t:
                continue  # left, or rescheduled (a resend after a new stream)
            if keeper.remaining() <= 0:
                self._lose(keeper, self.expired_reason(keeper))  # too late to renew: lost, on time
                continue
            # A renewal's deadline counts from its send time: record it before writing.
            keeper.sent_at = now
            keeper.next_send = now + keeper.interval
            self._outstanding.pop(keeper.id, None)
            self._outstanding[keeper.id] = keeper  # (re)inserted last: the dict stays oldest first
            self._schedule(keeper)
            await call.write(pb.LeaseKeepAliveRequest(ID=keeper.id))
            self.renewals_sent += 1
            self._confirm_quorum(self.endpoint, now)

    def on_reply(self, reply: Any) -> None:
        keeper = self._registry.get(reply.ID)
        if keeper is None:
            return  # stopped meanwhile
        if reply.TTL <= 0:
            self._lose(keeper, "lease expired or was revoked on the server (keepalive TTL=0)")
            return
        sent = keeper.sent_at if keeper.sent_at is not None else self.last_reply_at
        keeper.answered_at, keeper.answered_ttl = sent, reply.TTL
        self._trust(keeper)
        keeper.sent_at = None
        if self._outstanding.get(keeper.id) is keeper:
            del self._outstanding[keeper.id]
        keeper.renewals += 1

    def next_check(self, now: float) -> float | None:
        """Until the next renewal is due or the oldest unanswered one counts as stalled (deadlines have a
        timer of their own)."""
        t = self._due[0][0] if self._due else math.inf
        oldest = self._oldest_outstanding()
        if oldest is not None and oldest.sent_at is not None:
            t = min(t, oldest.sent_at + oldest.stall_after)
        return None if t == math.inf else t - now

    def distrust(self, now: float) -> str | None:
        """Why the stream's member is no longer trusted with renewals (counted as a stall), or None."""
        reason = None
        if self._unconfirmed == self.endpoint:
            reason = "could not confirm it reaches a quorum"
        elif self._stalled(now):
            # The member is cut off or hung (a black-holed connection raises no error for a long time):
            # move to another member before the TTL runs out.
            reason = "stopped answering renewals"
        if reason is not None:
            self._unconfirmed = None
            self.stalls += 1
        return reason

    def _oldest_outstanding(self) -> KeepAlive | None:
        return next(iter(self._outstanding.values()), None)

    def _stalled(self, now: float) -> bool:
        """The oldest unanswered renewal has waited longer than its stall_after and nothing at all came
        back meanwhile. Replies that still arrive, only behind a burst of thousands of renewals, mean the
        member is working."""
        k = self._oldest_outstanding()
        return (
            k is not None
            and k.sent_at is not None
            and now - k.sent_at >= k.stall_after
            and now - max(self.last_reply_at, k.sent_at) >= k.stall_after
        )

    # ---- quorum confirmation ----

    def _trust(self, keeper: KeepAlive) -> None:
        """Move keeper's deadline as far as its latest renewal is trusted."""
        trusted = min(keeper.answered_at, self._confirmed_at)
        if trusted > -math.inf:
            keeper.expires_at = max(keeper.expires_at, trusted + keeper.answered_ttl - keeper.margin)

    def _confirm_quorum(self, endpoint: str, renewal_sent: float) -> None:
        """Ask `endpoint` for a linearizable read sent no earlier than this renewal (one at a time, at most
        every CONFIRM_EVERY seconds: the deadline then lags the renewal by that much at most)."""
        if self._confirming is not None or renewal_sent - self._confirm_sent_at < CONFIRM_EVERY:
            return
        self._confirm_sent_at = renewal_sent
        self._confirming = self._tasks.spawn(self._confirm(endpoint, renewal_sent), "lease-quorum-read")

    async def _confirm(self, endpoint: str, sent: float) -> None:
        timeout = min((k.stall_after for k in self._registry.values()), default=1.0)
        try:
            await self._conn.unary_at(endpoint, methods.RANGE, _QUORUM_READ, timeout)
        except EtcdError as e:
            if endpoint == self.endpoint:
                log.info("quorum read at %s failed (%s): its renewals are not trusted", endpoint, e)
                self._unconfirmed = endpoint
                self.wake()
            return
        finally:
            self._confirming = None
        if endpoint != self.endpoint or sent <= self._confirmed_at:
            return
        self._confirmed_at = sent
        for keeper in self._registry.values():
            self._trust(keeper)

    async def close(self) -> None:
        """Stop keeping every lease alive (no revoke) and end the stream. Idempotent."""
        self._closed = True
        self._registry.clear()
        self._due.clear()
        self._deadlines.clear()
        self._outstanding.clear()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self._confirming is not None:
            self._confirming.cancel()
        self.wake()
        runner = self._runner
        if runner is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(runner), 5.0)


class Leases:
    """Lease RPCs plus the keepalive manager."""

    def __init__(self, conn: Connection, tasks: TaskOwner, margin: float = DEFAULT_LEASE_MARGIN) -> None:
        self._conn = conn
        self.keepalive = KeepAliveManager(conn, tasks, margin)

    async def grant(self, ttl: int, *, lease_id: int = 0, timeout: float | None = None) -> LeaseGrant:
        sends: list[float] = []
        reply = await self._conn.unary(
            methods.LEASE_GRANT,
            pb.LeaseGrantRequest(TTL=check_ttl(ttl), ID=lease_id),
            timeout,
            on_send=sends.append,
        )
        if reply.error:
            from etcdlock._core.errors import ServerError

            raise ServerError(f"lease grant failed: {reply.error}", code="LEASE_GRANT")
        # The first attempt's send: a retry may answer for a lease an earlier attempt already created.
        return LeaseGrant(Header.from_pb(reply.header), reply.ID, reply.TTL, sends[0])

    async def revoke(self, lease_id: int, *, timeout: float | None = None) -> Header:
        try:
            reply = await self._conn.unary(methods.LEASE_REVOKE, pb.LeaseRevokeRequest(ID=lease_id), timeout)
        except LeaseNotFoundError:
            raise LeaseNotFoundError(
                f"lease {lease_id:x} not found (expired or revoked)", lease_id=lease_id
            ) from None
        return Header.from_pb(reply.header)

    async def time_to_live(
        self, lease_id: int, *, keys: bool = False, timeout: float | None = None
    ) -> LeaseTimeToLive:
        reply = await self._conn.unary(
            methods.LEASE_TTL, pb.LeaseTimeToLiveRequest(ID=lease_id, keys=keys), timeout
        )
        return LeaseTimeToLive(
            Header.from_pb(reply.header), reply.ID, reply.TTL, reply.grantedTTL, list(reply.keys)
        )

    async def leases(self, *, timeout: float | None = None) -> list[int]:
        reply = await self._conn.unary(methods.LEASE_LEASES, pb.LeaseLeasesRequest(), timeout)
        return [s.ID for s in reply.leases]

    def keep_alive(self, lease_id: int, ttl: int, *, granted_at: float | None = None) -> KeepAlive:
        """Keep lease_id alive on the shared stream until stop() or loss. granted_at: monotonic (loop) time
        the grant was sent, which bounds the lease's life until the first renewal, due a renewal interval
        later. Without it nothing is known of the lease: it is renewed at once (which also tells whether it
        exists)."""
        check_ttl(ttl)
        now = asyncio.get_running_loop().time()
        keeper = self.keepalive.register(
            lease_id, ttl, now if granted_at is None else granted_at, renew_now=granted_at is None
        )
        return keeper


__all__ = [
    "DEFAULT_LEASE_MARGIN",
    "KeepAlive",
    "KeepAliveManager",
    "Leases",
    "check_lease_margin",
    "check_ttl",
    "translate",
]
