"""The sessions behind `client.lock(name)` when no session is given: one lease for all of a client's locks.

Go users share one session (one lease) across their locks, and so does this client by default: a lock
cycle is then two RPCs (the acquire Txn and the guarded delete), not a lease grant, a keepalive and a
revoke on top. Sessions are per TTL asked for, started on first use, kept alive on the client's one
keepalive stream and revoked when the client closes.

One session holds one key per lock name (NAME/<lease hex>), so two locks of one name at once in this
process need two sessions: a lock takes the first session of its TTL on which its name is free, and a new
session is started when every one has it taken. Each such lock then queues in etcd on a key of its own,
like a lock of any other process (FIFO, its own fencing token, woken by its predecessor's deletion). The
sessions beyond the first are revoked once they have been idle for `linger` seconds.

A session that is lost (revoked, expired, past its local deadline) fires `lost` on every lock on it and is
never used again; the next lock starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from etcdlock._core.errors import ClientClosedError
from etcdlock._core.tasks import shielded
from etcdlock._recipes.session import CLEANUP_TIMEOUT, Session

if TYPE_CHECKING:
    from etcdlock._recipes.state import RecipeClient

LINGER = 1.0  # seconds an extra session outlives its last lock


@dataclass(eq=False)
class _Start:
    """A session being started, and the lock names already waiting for it (one each)."""

    task: asyncio.Task[Session]
    names: set[str] = field(default_factory=set)


class SessionPool:
    """The default sessions of one client, by TTL."""

    def __init__(self, client: RecipeClient, linger: float = LINGER) -> None:
        self._client = client
        self._linger = linger
        self._sessions: dict[int, list[Session]] = {}
        self._starting: dict[int, list[_Start]] = {}
        self._retiring: dict[Session, asyncio.TimerHandle] = {}
        self.started = 0  # sessions started, for tests and diagnosis
        client._add_close_hook(self.close)

    async def claim(self, name: str, ttl: int) -> Session:
        """A live session of `ttl` with `name` claimed on it for the caller (Session.claim)."""
        while True:
            for session in self._live(ttl):
                if not session.holds(name):
                    session.claim(name)
                    self._keep(session)
                    return session
            start = next((s for s in self._starting.get(ttl, ()) if name not in s.names), None)
            if start is None:
                start = self._start(ttl)
            start.names.add(name)
            try:
                # Shielded: other locks wait for the same start; a cancelled caller only stops waiting.
                await asyncio.shield(start.task)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if start.task.cancelled() and task is not None and not task.cancelling():
                    raise ClientClosedError(
                        "the etcdlock client was closed while a session started"
                    ) from None
                raise
            finally:
                start.names.discard(name)

    def sessions(self) -> list[Session]:
        return [s for pool in self._sessions.values() for s in pool]

    def _live(self, ttl: int) -> list[Session]:
        pool = self._sessions.get(ttl, [])
        lost = [s for s in pool if s.closed or s.lost.is_set()]
        for session in lost:
            pool.remove(session)
            self._forget(session)
        return pool

    def _start(self, ttl: int) -> _Start:
        start = _Start(self._client._spawn_owned(self._run_start(ttl), f"default-session:{ttl}s"))
        self._starting.setdefault(ttl, []).append(start)
        start.task.add_done_callback(lambda _: self._started(ttl, start))
        return start

    async def _run_start(self, ttl: int) -> Session:
        session = Session(self._client, ttl)
        try:
            await session.start()
        except BaseException:
            await shielded(session.close(), CLEANUP_TIMEOUT)
            raise
        session.on_idle = self._idle
        self._sessions.setdefault(ttl, []).append(session)
        self.started += 1
        return session

    def _started(self, ttl: int, start: _Start) -> None:
        starting = self._starting.get(ttl, [])
        with contextlib.suppress(ValueError):
            starting.remove(start)
        if not starting:
            self._starting.pop(ttl, None)
        if not start.task.cancelled():
            start.task.exception()  # retrieved here; every waiter gets it from its own await

    # ---- retiring idle sessions ----

    def _idle(self, session: Session) -> None:
        pool = self._sessions.get(session.ttl, [])
        if session.lost.is_set() or session.closed:
            if session in pool:
                pool.remove(session)
            self._forget(session)
        elif pool and pool[0] is not session and session not in self._retiring:
            loop = asyncio.get_running_loop()
            self._retiring[session] = loop.call_later(self._linger, self._retire, session)

    def _keep(self, session: Session) -> None:
        timer = self._retiring.pop(session, None)
        if timer is not None:
            timer.cancel()

    def _retire(self, session: Session) -> None:
        self._retiring.pop(session, None)
        pool = self._sessions.get(session.ttl, [])
        if session.busy or session not in pool or self._client.closed:
            return
        pool.remove(session)
        self._forget(session)

    def _forget(self, session: Session) -> None:
        """A session leaves the pool: revoke its lease in the background (shielded, own deadline)."""
        self._keep(session)
        session.on_idle = None
        if not session.closed:
            self._client._spawn_owned(session.close(), "default-session-close")

    async def close(self) -> None:
        """CoreClient closing: revoke every default session's lease (each shielded, own deadline)."""
        for timer in self._retiring.values():
            timer.cancel()
        self._retiring.clear()
        sessions, self._sessions = self.sessions(), {}
        for starts in self._starting.values():
            for start in starts:
                start.task.cancel()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


__all__ = ["SessionPool"]
