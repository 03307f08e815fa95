"""`SyncWatch`: one watch as a blocking iterator of events; leaving the `with` (or close()) ends it."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType

from etcdlock._core.types import WatchEvent
from etcdlock._core.watch import Watcher
from etcdlock._sync.portal import Portal


class SyncWatch:
    """``with client.watch(key, prefix=True) as events: for event in events: ...``

    See `etcdlock.Watcher` for the meaning of each member. The watch is started when made, so it sees every
    event from its start revision even before the `with`. A SyncWatch that is garbage-collected cancels
    its watch."""

    def __init__(self, portal: Portal, watcher: Watcher) -> None:
        self._portal = portal
        self._watcher = watcher
        self._events = portal.wrap_iter(watcher.next_event)  # next_event is safe to cancel

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        return next(self._events)

    def next_event(self) -> WatchEvent:
        """The next event (blocking); raises the watch's error, or StopIteration once it was cancelled."""
        return next(self._events)

    def next(self, timeout: float) -> WatchEvent:
        """The next event, or TimeoutError after `timeout` seconds (the watch stays open)."""
        return self._events.next(timeout)

    def wait_created(self) -> int:
        """Wait until etcd confirmed the watch; returns the revision in the create reply."""
        return self._portal.call(self._watcher.wait_created())

    def start(self) -> None:
        """Start the watch (it already is, from when it was made; idempotent)."""
        self._portal.run(self._watcher.start)

    def cancel(self) -> None:
        """End the watch (idempotent): the stream sends the WatchCancelRequest. Nothing to do once the
        client is closed (its watches ended with it)."""
        if not self._watcher.done:
            self._portal.call_unless_closed(_cancel(self._watcher))

    def close(self) -> None:
        """The same as cancel(), under the name iterators are closed by."""
        self.cancel()

    @property
    def done(self) -> bool:
        return self._watcher.done

    @property
    def buffered(self) -> int:
        """Events received and not yet taken."""
        return self._watcher.buffered

    def __enter__(self) -> SyncWatch:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()

    def __del__(self) -> None:
        # Finalizers may run on any thread, the loop's included: hand the cancel over, never wait for it.
        if not self._watcher.done:
            self._portal.call_soon(self._watcher.cancel)


async def _cancel(watcher: Watcher) -> None:
    watcher.cancel()


__all__ = ["SyncWatch"]
