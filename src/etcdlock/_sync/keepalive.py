"""`SyncKeepAlive`: a lease kept alive by the client, seen from threads (`lost` is a threading.Event)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from etcdlock._core.lease import KeepAlive
from etcdlock._sync.portal import Portal


class SyncKeepAlive:
    """Handle of one lease the client keeps alive; see `etcdlock.KeepAlive` for the meaning of each member.

    Made on the loop thread (it registers for the loss there). Lost callbacks run on the loop thread."""

    def __init__(self, portal: Portal, keeper: KeepAlive) -> None:
        self._portal = portal
        self._keeper = keeper
        self._lost = threading.Event()
        keeper.add_lost_callback(self._on_lost)  # at once if already lost

    def _on_lost(self, reason: str) -> None:
        self._lost.set()

    @property
    def id(self) -> int:
        """The lease's ID."""
        return self._keeper.id

    @property
    def ttl(self) -> int:
        """The lease's TTL in seconds, as granted."""
        return self._keeper.ttl

    @property
    def lost(self) -> threading.Event:
        """Set once the lease is lost (revoked, expired, or not renewed before its local deadline); never
        on stop()."""
        return self._lost

    @property
    def lost_reason(self) -> str | None:
        """Why the lease was lost (None while it is not)."""
        return self._keeper.lost_reason

    @property
    def renewals(self) -> int:
        """Renewals etcd answered so far."""
        return self._keeper.renewals

    @property
    def active(self) -> bool:
        """Still kept alive: neither lost nor stopped."""
        return self._portal.run(lambda: self._keeper.active)

    def remaining(self) -> float:
        """Seconds until the local deadline (negative once passed)."""
        return self._portal.run(self._keeper.remaining)

    def check(self) -> bool:
        """True while the lease is alive by the local deadline, checked now (fires `lost` if it passed)."""
        return self._portal.run(self._keeper.check)

    def add_lost_callback(self, fn: Callable[[str], None]) -> None:
        """fn(reason) runs once, on the loop thread, when the lease is lost (at once if it already is)."""
        self._portal.run(lambda: self._keeper.add_lost_callback(fn))

    def remove_lost_callback(self, fn: Callable[[str], None]) -> None:
        self._portal.run(lambda: self._keeper.remove_lost_callback(fn))

    def declare_lost(self, reason: str) -> None:
        """The lease is known gone by other means: lost, now."""
        self._portal.run(lambda: self._keeper.declare_lost(reason))

    def stop(self) -> None:
        """Stop renewing (does not revoke). Idempotent."""
        self._portal.run(self._keeper.stop)

    def __repr__(self) -> str:
        return f"<SyncKeepAlive {self._keeper!r}>"


__all__ = ["SyncKeepAlive"]
