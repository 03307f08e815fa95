"""The sync API: the same async core, run on one event-loop thread that this client owns.

    with SyncClient(["127.0.0.1:2379"]) as client:
        with client.lock("jobs/42", ttl=10, timeout=5) as held:
            ...                      # held.lost is a threading.Event

Every call is handed to the loop thread and waited for. If the calling thread is interrupted
(KeyboardInterrupt or any exception while waiting), the operation is cancelled on the loop and its shielded
cleanup runs to the end before the exception propagates, so an interrupted acquire leaves no key behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

from etcdlock._client import Client
from etcdlock._core.client import Resources
from etcdlock._core.connection import TLSConfig
from etcdlock._core.errors import ClientClosedError
from etcdlock._core.kv import RangeOptions
from etcdlock._core.lease import DEFAULT_LEASE_MARGIN
from etcdlock._core.txn import Compare, Op
from etcdlock._core.types import (
    DeleteResult,
    GetResult,
    Header,
    Key,
    LeaseGrant,
    LeaseTimeToLive,
    PutResult,
    Status,
    TxnResult,
    WatchEvent,
)
from etcdlock._core.watch import Watcher
from etcdlock._recipes.errors import LockTimeout
from etcdlock._recipes.lock import Lock
from etcdlock._recipes.session import DEFAULT_TTL

T = TypeVar("T")

# How long an interrupted call may take to wind down (its cleanup has its own, shorter, deadline).
_CANCEL_GRACE = 10.0


class SyncClient:
    """Blocking etcd client with locks; see `etcdlock.Client` for the meaning of every method."""

    def __init__(
        self,
        endpoints: Sequence[str] | str = ("127.0.0.1:2379",),
        *,
        timeout: float = 5.0,
        username: str | None = None,
        password: str | None = None,
        tls: TLSConfig | None = None,
        lease_margin: float = DEFAULT_LEASE_MARGIN,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="etcdlock-loop", daemon=True)
        self._thread.start()
        self._closed = False

        async def make() -> Client:
            return await Client(
                endpoints,
                timeout=timeout,
                username=username,
                password=password,
                tls=tls,
                lease_margin=lease_margin,
            ).connect()

        try:
            self._client = self._call(make())
        except BaseException:
            self._stop_loop()
            raise

    # ---- plumbing ----

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                "SyncClient methods cannot be called from its own loop thread (e.g. a lost callback)"
            )
        if self._closed and not self._loop.is_running():
            coro.close()
            raise ClientClosedError("the etcdlock SyncClient is closed")
        finished = threading.Event()

        async def run() -> T:
            try:
                return await coro
            finally:
                finished.set()  # only after the coroutine's own (shielded) cleanup has run

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            return future.result()
        except BaseException:
            if not future.done():
                # Interrupted while waiting: cancel on the loop, and wait for its cleanup to finish
                # (a cancelled concurrent future reports "done" at once, long before that).
                future.cancel()
                finished.wait(_CANCEL_GRACE)
            raise

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            # As asyncio.run does: whatever is still pending on our loop (grpc keeps small internal tasks
            # per call) is cancelled and awaited, so nothing is destroyed while pending.
            with contextlib.suppress(BaseException):
                asyncio.run_coroutine_threadsafe(_drain(), self._loop).result(timeout=_CANCEL_GRACE)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=_CANCEL_GRACE)
        if not self._loop.is_closed() and not self._thread.is_alive():
            self._loop.close()

    def close(self) -> None:
        """Close the client and stop its loop thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if hasattr(self, "_client"):
                self._call(self._client.close())
        finally:
            self._stop_loop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def async_client(self) -> Client:
        """The underlying asyncio client (use it only on this client's loop thread)."""
        return self._client

    @property
    def loop_thread(self) -> threading.Thread:
        return self._thread

    # ---- KV / lease / cluster ----

    def get(self, key: Key, *, timeout: float | None = None, **options: Unpack[RangeOptions]) -> GetResult:
        return self._call(self._client.get(key, timeout=timeout, **options))

    def put(
        self,
        key: Key,
        value: str | bytes,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> PutResult:
        return self._call(self._client.put(key, value, lease=lease, prev_kv=prev_kv, timeout=timeout))

    def delete(
        self,
        key: Key,
        *,
        prefix: bool = False,
        range_end: Key | None = None,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> DeleteResult:
        return self._call(
            self._client.delete(key, prefix=prefix, range_end=range_end, prev_kv=prev_kv, timeout=timeout)
        )

    def txn(
        self,
        compare: list[Compare],
        success: list[Op],
        failure: list[Op] | None = None,
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        return self._call(self._client.txn(compare, success, failure, timeout=timeout))

    def compact(self, revision: int, *, physical: bool = False, timeout: float | None = None) -> Header:
        return self._call(self._client.compact(revision, physical=physical, timeout=timeout))

    def grant(self, ttl: int, *, timeout: float | None = None) -> LeaseGrant:
        return self._call(self._client.grant(ttl, timeout=timeout))

    def revoke(self, lease_id: int, *, timeout: float | None = None) -> Header:
        return self._call(self._client.revoke(lease_id, timeout=timeout))

    def time_to_live(
        self, lease_id: int, *, keys: bool = False, timeout: float | None = None
    ) -> LeaseTimeToLive:
        return self._call(self._client.time_to_live(lease_id, keys=keys, timeout=timeout))

    def leases(self, *, timeout: float | None = None) -> list[int]:
        return self._call(self._client.leases(timeout=timeout))

    def status(self, *, timeout: float | None = None) -> Status:
        return self._call(self._client.status(timeout=timeout))

    def resources(self) -> Resources:
        async def snapshot() -> Resources:
            return self._client.resources()

        return self._call(snapshot())

    # ---- watch ----

    def watch(self, key: Key, **options: Any) -> SyncWatch:
        """``with client.watch(key, prefix=True) as events: for event in events: ...``"""

        async def make() -> Watcher:
            w = self._client.watch(key, **options)
            w.start()
            return w

        return SyncWatch(self, self._call(make()))

    # ---- locks ----

    def lock(
        self,
        name: str,
        *,
        ttl: int = DEFAULT_TTL,
        timeout: float | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> SyncLock:
        """``with client.lock(name, ttl=10, timeout=5) as held:``. on_lost(reason) runs on the loop thread."""

        async def make() -> Lock:
            return self._client.lock(name, ttl=ttl, timeout=timeout)

        return SyncLock(self, self._call(make()), on_lost)

    def try_lock(
        self, name: str, *, ttl: int = DEFAULT_TTL, on_lost: Callable[[str], None] | None = None
    ) -> SyncLock | None:
        """The lock if it is free right now, else None, without waiting and without leaving a key."""

        async def attempt() -> Lock | None:
            return await self._client.try_lock(name, ttl=ttl)

        lock = self._call(attempt())
        if lock is None:
            return None
        held = SyncLock(self, lock, on_lost)
        held._watch_loss()
        return held


async def _drain() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


class SyncLock:
    """A lock as seen from threads: `lost` is a threading.Event."""

    def __init__(self, client: SyncClient, lock: Lock, on_lost: Callable[[str], None] | None) -> None:
        self._client = client
        self._lock = lock
        self._on_lost = on_lost
        self.lost = threading.Event()

    @property
    def name(self) -> str:
        return self._lock.name

    @property
    def key(self) -> str:
        return self._lock.key

    @property
    def token(self) -> int:
        return self._lock.token

    @property
    def lease(self) -> int:
        return self._lock.lease

    @property
    def lost_reason(self) -> str | None:
        return self._lock.lost_reason

    @property
    def held(self) -> bool:
        return self._lock.held

    def is_owner(self) -> Compare:
        return self._lock.is_owner()

    def ensure_held(self) -> None:
        """Raise LockLost unless the lock is still mine at this moment (see Lock.ensure_held)."""

        self._client._call(self._lock.ensure_held())

    def txn(
        self,
        compare: list[Compare],
        success: list[Op],
        failure: list[Op] | None = None,
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        return self._client._call(self._lock.txn(compare, success, failure, timeout=timeout))

    def acquire(self) -> SyncLock:
        if not self._client._call(self._lock.acquire()):
            raise LockTimeout(f"lock {self.name!r} not acquired within its timeout; nothing was left behind")
        self._watch_loss()
        return self

    def _watch_loss(self) -> None:
        def fire(reason: str) -> None:
            self.lost.set()
            if self._on_lost is not None:
                self._on_lost(reason)

        async def register() -> None:
            self._lock.add_lost_callback(fire)

        self._client._call(register())

    def release(self) -> None:
        self._client._call(self._lock.release())

    def __enter__(self) -> SyncLock:
        return self.acquire()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class SyncWatch:
    """Blocking iterator over a watch; closing it (or leaving the `with`) cancels the watch."""

    def __init__(self, client: SyncClient, watcher: Watcher) -> None:
        self._client = client
        self._watcher = watcher

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        try:
            return self._client._call(self._watcher.next_event())
        except StopAsyncIteration:
            raise StopIteration from None

    def next(self, timeout: float) -> WatchEvent:
        """The next event, or TimeoutError after `timeout` seconds (the watch stays open)."""

        async def bounded() -> WatchEvent:
            async with asyncio.timeout(timeout):
                return await self._watcher.next_event()

        return self._client._call(bounded())

    def close(self) -> None:
        if not self._watcher.done and self._client._loop.is_running():
            with contextlib.suppress(RuntimeError):
                self._client._loop.call_soon_threadsafe(self._watcher.cancel)

    def __enter__(self) -> SyncWatch:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


__all__ = ["SyncClient", "SyncLock", "SyncWatch"]
