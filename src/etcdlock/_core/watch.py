"""Watches: many watchers over one shared gRPC Watch stream.

The stream registry is keyed by a *stable* identity (`STREAM_KEY`, the same for every watcher of a client),
never by anything derived from one call, its timeout or its task: that was the bug that leaked a gRPC stream
per lock attempt in the Go client this project was born from. The stream exists while it has watchers and
closes when the last one leaves.

Per stream there is one runner task (opens the call, writes requests, resumes after failures; see
core/stream.py) and one reader task (the only one that reads the call). etcd answers a stream's creates in
the order they were sent, so each create reply pairs with the oldest create in flight; up to CREATE_WINDOW
are in flight at once. A consumer never blocks the reader: each watcher has a bounded buffer and a watcher
that overflows it is ended with WatchOverflowError. On a stream failure every live watcher is re-created on
a new stream (moving to another endpoint if needed) from its last delivered revision + 1, so nothing is
lost or repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Final

from etcdlock._core.connection import Connection
from etcdlock._core.errors import (
    ClientClosedError,
    CompactedError,
    ConfigError,
    WatchError,
    WatchOverflowError,
)
from etcdlock._core.flag import Flag
from etcdlock._core.stream import BidiStream
from etcdlock._core.tasks import TaskOwner
from etcdlock._core.types import EventType, Key, KeyValue, WatchEvent, key_range, to_bytes
from etcdlock._wire import methods
from etcdlock._wire import rpc_pb2 as pb

log = logging.getLogger("etcdlock.watch")

STREAM_KEY: Final = "watch"
DEFAULT_MAX_BUFFER: Final = 10_000

_NEW, _STARTED, _DONE = "new", "started", "done"
_seq = itertools.count()


class Watcher:
    """One watch. Iterate it (``async for event in watcher``) or use it as an async context manager.

    Leaving the iteration by any path (break, exception, cancellation, a timeout around the consumer) ends the
    watch and sends a WatchCancelRequest.

    Made by `watch()`. As a context manager (``async with client.watch(k) as w:``) the watch is created
    on entry and ended on exit, and events are read with `next_event()`. Iterating raises the error the
    watch ended with: `CompactedError` when its start revision was compacted away,
    `WatchOverflowError` when the consumer fell behind, `WatchError` when etcd ended it, and
    `ClientClosedError` when the client was closed.
    """

    def __init__(
        self,
        hub: Watches,
        key: bytes,
        range_end: bytes,
        start_revision: int,
        *,
        no_put: bool,
        no_delete: bool,
        prev_kv: bool,
        progress_notify: bool,
        max_buffer: int,
    ) -> None:
        self._hub = hub
        self.key = key
        """The key watched (the first key of the range)."""
        self.range_end = range_end
        """The end of the range watched (not included); empty for a single key."""
        self.start_revision = start_revision
        """The revision asked for at the start (0: from the creation on)."""
        self.no_put = no_put
        """Puts are not reported."""
        self.no_delete = no_delete
        """Deletes are not reported."""
        self.prev_kv = prev_kv
        """Events carry the key as it was before the change."""
        self.progress_notify = progress_notify
        """etcd was asked to report progress on a quiet watch."""
        self.max_buffer = max_buffer
        """Events buffered for a slow consumer before the watch is ended with `WatchOverflowError`."""
        self.seq = next(_seq)
        """Creation order, for re-creating watchers in order. @private"""
        # The next revision this watcher must see; 0 = "from now" until the server confirms creation.
        self.next_revision = start_revision
        """The next revision this watcher reports (0 until etcd confirmed a watch from now): where a new
        watch would resume it."""
        self.watch_id: int | None = None
        """etcd's ID of the watch on the current stream, None until created (and while resuming)."""
        self.created = Flag()  # set once etcd confirmed the watch
        """Set once etcd confirmed the watch; wait with `wait_created()`. @private"""
        self.created_revision = 0
        """The store's revision when etcd confirmed the watch (0 until then)."""
        self.state = _NEW
        """new, started or done. @private"""
        self._stream: _WatchStream | None = None
        # Set by an owner that consumes events synchronously on the stream's reader (no buffer, no task hop);
        # it must be quick and must not raise. Errors still surface through next_event()/wait_created().
        self.on_events: Callable[[list[WatchEvent]], None] | None = None
        """Hook for the lock recipes. @private"""
        # Likewise for an owner with no task waiting on this watcher: told once of the creation (with the
        # create reply's revision) and once of the error the watch ended with (not of cancel()).
        self.on_created: Callable[[int], None] | None = None
        """Hook for the lock recipes. @private"""
        self.on_failed: Callable[[BaseException], None] | None = None
        """Hook for the lock recipes. @private"""
        self._buffer: deque[WatchEvent] | None = None  # made on the first buffered event
        self._signal = Flag()
        self._error: BaseException | None = None

    # ---- consumer side ----

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[WatchEvent]:
        owned = self.state == _NEW
        self.start()
        try:
            while True:
                yield await self.next_event()
        except StopAsyncIteration:
            return
        finally:
            if owned:
                self.cancel()

    async def next_event(self) -> WatchEvent:
        """The next event; raises the watcher's error, or StopAsyncIteration once it was cancelled.

        Waits until an event comes (bound it with ``asyncio.timeout()`` if needed). Call `start()` first,
        or use the watcher as a context manager.

        Returns:
            The oldest event not read yet.

        Raises:
            StopAsyncIteration: the watch was cancelled.
            CompactedError: the watch's start revision was compacted away.
            WatchOverflowError: the consumer fell more than `max_buffer` events behind.
            WatchError: etcd refused or ended the watch.
            ClientClosedError: the client was closed.
        """
        while not self._buffer:
            if self._error is not None:
                raise self._error
            if self.state == _DONE:
                raise StopAsyncIteration
            self._signal.clear()
            await self._signal.wait()
        assert self._buffer is not None
        return self._buffer.popleft()

    async def wait_created(self) -> int:
        """Wait until etcd confirmed the watch; returns the revision in the create reply.

        Every change after that revision will be reported (for a watch from now). Call `start()` first,
        or use the watcher as a context manager.

        Returns:
            The store's revision when etcd confirmed the watch.

        Raises:
            WatchError: the watch was cancelled before it was created, or etcd refused it.
            CompactedError: the watch's start revision was compacted away.
            ClientClosedError: the client was closed.
        """
        while not self.created.is_set():
            if self._error is not None:
                raise self._error
            if self.state == _DONE:
                raise WatchError("watch was cancelled before it was created")
            self._signal.clear()
            if self.created.is_set():
                break
            await self._signal.wait()
        return self.created_revision

    async def __aenter__(self) -> Watcher:
        self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()

    def start(self) -> None:
        """Create the watch on the client's watch stream (idempotent; iterating or entering does it).

        The watch is then live until `cancel()`, whoever reads it.
        """
        if self.state == _NEW:
            self.state = _STARTED
            self._hub._attach(self)

    def cancel(self) -> None:
        """End the watch (sync, idempotent): the stream sends the WatchCancelRequest."""
        if self.state == _DONE:
            return
        was_started = self.state == _STARTED
        self.state = _DONE
        self._signal.set()
        if was_started:
            self._hub._detach(self)

    @property
    def done(self) -> bool:
        """True once the watch ended: cancelled, or failed (events still buffered can be read)."""
        return self.state == _DONE

    @property
    def buffered(self) -> int:
        """Events received and not read yet."""
        return len(self._buffer) if self._buffer is not None else 0

    # ---- stream side ----

    def _on_created(self, watch_id: int, revision: int) -> None:
        self.watch_id = watch_id
        if self.next_revision == 0:
            self.next_revision = revision + 1
        first = not self.created.is_set()
        if first:
            self.created_revision = revision
            self.created.set()
        self._signal.set()
        if first and self.on_created is not None:
            self.on_created(revision)

    def _deliver(self, events: list[WatchEvent]) -> bool:
        """Buffer events; False when the buffer would overflow (the watcher is then failed)."""
        if events[0].revision < self.next_revision:
            # The watch starts one revision early (see create_request): what came before is known.
            events = [e for e in events if e.revision >= self.next_revision]
            if not events:
                return True
        if self.on_events is not None:
            self.next_revision = events[-1].revision + 1
            self.on_events(events)
            return True
        if self._buffer is None:
            self._buffer = deque()
        if len(self._buffer) + len(events) > self.max_buffer:
            self._fail(
                WatchOverflowError(
                    f"watch on {self.key!r}: consumer fell {len(self._buffer)} events behind "
                    f"(max_buffer={self.max_buffer}); the watch was ended"
                )
            )
            return False
        self._buffer.extend(events)
        self.next_revision = events[-1].revision + 1
        self._signal.set()
        return True

    def _progress(self, revision: int) -> None:
        # A progress notification promises every event up to `revision` was sent.
        self.next_revision = max(self.next_revision, revision + 1)

    def _fail(self, error: BaseException) -> None:
        failed = self._error is None and self.state != _DONE
        if failed:
            self._error = error
        self.state = _DONE
        self._signal.set()
        if failed and self.on_failed is not None:
            self.on_failed(error)

    def create_request(self) -> pb.WatchRequest:
        """The WatchCreateRequest that (re)creates this watch from its next revision. @private"""
        filters = []
        if self.no_put:
            filters.append(pb.WatchCreateRequest.NOPUT)
        if self.no_delete:
            filters.append(pb.WatchCreateRequest.NODELETE)
        # One revision early: etcd drops the tombstones at its compaction revision itself, so a watch
        # starting exactly there would miss those deletions without a word. From one revision before,
        # such a compaction is reported (CompactedError), and the event already seen is dropped.
        start = self.next_revision - 1 if self.next_revision > 1 else self.next_revision
        return pb.WatchRequest(
            create_request=pb.WatchCreateRequest(
                key=self.key,
                range_end=self.range_end,
                start_revision=start,
                progress_notify=self.progress_notify,
                filters=filters,
                prev_kv=self.prev_kv,
                fragment=True,
            )
        )

    def __repr__(self) -> str:
        return f"<Watcher {self.key!r} id={self.watch_id} {self.state} next_rev={self.next_revision}>"


def _event(e: Any) -> WatchEvent:
    return WatchEvent(
        EventType.DELETE if e.type == 1 else EventType.PUT,
        KeyValue.from_pb(e.kv),
        KeyValue.from_pb(e.prev_kv) if e.HasField("prev_kv") else None,
    )


def _cancel_request(watch_id: int) -> pb.WatchRequest:
    return pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=watch_id))


# A stream with watchers that has been silent this long is asked for a progress report; if that goes
# unanswered too, the member is cut off or hung (a black hole raises no error for about a minute in gRPC),
# and the watchers resume on another member from their next revision.
PROBE_IDLE = 5.0
# Creates in flight on one stream at once. One at a time made 10,000 new watchers take 10,000 round trips
# in a row; a bound keeps one stream's burst from flooding etcd's receive loop.
CREATE_WINDOW = 64
PROBE_TIMEOUT = 3.0


def _progress_request() -> pb.WatchRequest:
    return pb.WatchRequest(progress_request=pb.WatchProgressRequest())


class _WatchStream(BidiStream):
    """One gRPC Watch stream and the watchers multiplexed on it (see core/stream.py for how it stays
    connected)."""

    def __init__(self, hub: Watches, key: str) -> None:
        super().__init__(hub._conn, hub._tasks, methods.WATCH, leader=True, name="watch", log=log)
        self._hub = hub
        self.key = key
        self.by_id: dict[int, Watcher] = {}
        self.pending: deque[Watcher] = deque()  # waiting to be created, in order
        # Creates sent, replies not yet seen, in order: etcd answers a stream's creates in the order sent.
        self.inflight: deque[Watcher] = deque()
        self.abandoned: set[Watcher] = set()  # left while in flight: their reply is answered with a cancel
        self.cancelling: set[int] = set()  # cancel sent, canceled reply not yet seen
        self._outbox: deque[pb.WatchRequest] = deque()
        self._fragments: dict[int, list[WatchEvent]] = {}
        self.closing = False
        self.probe_sent_at: float | None = None
        self.probes_sent = 0
        self.cancels_sent = 0
        self.fragments_received = 0
        self.runner = hub._tasks.spawn(self._run(), "watch-stream")

    # ---- membership ----

    def add(self, w: Watcher) -> None:
        self.pending.append(w)
        self.wake()

    def remove(self, w: Watcher) -> None:
        if w.watch_id is not None and self.by_id.get(w.watch_id) is w:
            del self.by_id[w.watch_id]
            self.cancel_id(w.watch_id)
        elif w in self.inflight:
            self.abandoned.add(w)
        else:
            with contextlib.suppress(ValueError):
                self.pending.remove(w)
        self.wake()

    def cancel_id(self, watch_id: int) -> None:
        if watch_id not in self.cancelling:
            self.cancelling.add(watch_id)
            self._outbox.append(_cancel_request(watch_id))
            self.wake()

    def is_empty(self) -> bool:
        return not self.by_id and not self.pending and len(self.abandoned) == len(self.inflight)

    def live_watchers(self) -> int:
        return len(self.by_id) + len(self.pending) + len(self.inflight) - len(self.abandoned)

    def close(self) -> None:
        self.closing = True
        self.wake()

    # ---- the stream's hooks ----

    async def _run(self) -> None:
        unexpected: WatchError | None = None
        try:
            await self.run()
        except Exception as e:
            # A fault nobody foresaw must not leave watchers waiting on a stream that is gone: they are
            # failed, and their owners start over.
            log.exception("watch stream at %s failed unexpectedly", self.endpoint)
            unexpected = WatchError(f"the watch stream at {self.endpoint} failed: {e!r}")
        finally:
            closed = ClientClosedError("the etcdlock client was closed while watching")
            for w in [*self.by_id.values(), *self.pending, *self.inflight]:
                if self._hub._closed:
                    w._fail(closed)
                elif unexpected is not None:
                    w._fail(unexpected)
            self._hub._stream_finished(self)

    def needed(self) -> bool:
        return not self.closing

    def on_open(self, now: float) -> None:
        self.probe_sent_at = None

    def on_drop(self) -> None:
        self._requeue()

    def has_work(self) -> bool:
        return bool(self._outbox) or (bool(self.pending) and len(self.inflight) < CREATE_WINDOW)

    async def send(self, call: Any, now: float) -> None:
        while self._outbox:
            await call.write(self._outbox[0])
            self._outbox.popleft()
            self.cancels_sent += 1
        while self.pending and len(self.inflight) < CREATE_WINDOW:
            w = self.pending.popleft()
            if w.done:
                continue
            self.inflight.append(w)
            await call.write(w.create_request())
        if self.probe_sent_at is None and self.by_id and now - self.last_reply_at >= PROBE_IDLE:
            self.probe_sent_at = now
            self.probes_sent += 1
            await call.write(_progress_request())

    def on_reply(self, reply: Any) -> None:
        self.probe_sent_at = None
        self._dispatch(reply)

    def distrust(self, now: float) -> str | None:
        if self.probe_sent_at is not None and now - self.probe_sent_at >= PROBE_TIMEOUT:
            return f"did not answer a progress request in {PROBE_TIMEOUT:g}s"
        return None

    def next_check(self, now: float) -> float | None:
        """Seconds until the probe needs looking at (None: no watchers, nothing to check)."""
        if self.probe_sent_at is not None:
            return max(0.0, self.probe_sent_at + PROBE_TIMEOUT - now)
        if self.by_id:
            return max(0.0, self.last_reply_at + PROBE_IDLE - now)
        return None

    def _requeue(self) -> None:
        """After a failure: every live watcher is created again from its next revision, in original order."""
        live = list(self.by_id.values())
        live.extend(w for w in self.inflight if w not in self.abandoned)
        live.extend(self.pending)
        for w in live:
            w.watch_id = None
        self.by_id.clear()
        self.cancelling.clear()
        self._outbox.clear()
        self._fragments.clear()
        self.inflight.clear()
        self.abandoned.clear()
        self.pending = deque(sorted((w for w in live if not w.done), key=lambda w: w.seq))

    def _dispatch(self, resp: Any) -> None:
        wid = resp.watch_id
        if resp.created:
            w = self.inflight.popleft() if self.inflight else None
            abandoned = w is not None and w in self.abandoned
            if w is not None:
                self.abandoned.discard(w)
            self.wake()
            if resp.canceled:
                if w is not None and not abandoned:
                    w._fail(self._create_error(w, resp))
                self._hub._maybe_close(self)
                return
            if w is None or abandoned or w.done:
                self.cancel_id(wid)
                self._hub._maybe_close(self)
                return
            self.by_id[wid] = w
            w._on_created(wid, resp.header.revision)
            if not resp.events:
                return
        w2 = self.by_id.get(wid)
        if resp.canceled:
            self.cancelling.discard(wid)
            self._fragments.pop(wid, None)
            if w2 is not None:
                del self.by_id[wid]
                w2._fail(self._cancel_error(w2, resp))
                w2._stream = None
                self._hub._maybe_close(self)
            return
        if w2 is None:
            # Events for a watch we don't know (or already cancelled): make sure the server stops sending.
            if wid not in self.cancelling and wid >= 0:
                self.cancel_id(wid)
            return
        events = [_event(e) for e in resp.events]
        if resp.fragment:
            self.fragments_received += 1
            self._fragments.setdefault(wid, []).extend(events)
            return
        if wid in self._fragments:
            events = self._fragments.pop(wid) + events
        if not events:
            w2._progress(resp.header.revision)
            return
        if not w2._deliver(events):
            del self.by_id[wid]
            self.cancel_id(wid)
            w2._stream = None
            self._hub._maybe_close(self)

    @staticmethod
    def _create_error(w: Watcher, resp: Any) -> BaseException:
        if resp.compact_revision:
            return CompactedError(
                f"watch on {w.key!r} from revision {w.next_revision}: revision compacted "
                f"(oldest available {resp.compact_revision})",
                compact_revision=resp.compact_revision,
            )
        return WatchError(f"etcd refused the watch on {w.key!r}: {resp.cancel_reason or 'no reason given'}")

    @staticmethod
    def _cancel_error(w: Watcher, resp: Any) -> BaseException:
        if resp.compact_revision:
            return CompactedError(
                f"watch on {w.key!r}: revision {w.next_revision} was compacted "
                f"(oldest available {resp.compact_revision})",
                compact_revision=resp.compact_revision,
            )
        return WatchError(f"etcd cancelled the watch on {w.key!r}: {resp.cancel_reason or 'no reason given'}")


class Watches:
    """Creates watchers and owns the watch stream registry of one client."""

    def __init__(self, conn: Connection, tasks: TaskOwner, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self._conn = conn
        self._tasks = tasks
        self.max_buffer = max_buffer
        self._streams: dict[str, _WatchStream] = {}
        self._closing: set[_WatchStream] = set()
        self._closed = False
        conn.add_failure_listener(self._endpoint_failed)

    def _endpoint_failed(self, endpoint: str) -> None:
        for stream in self._streams.values():
            stream.endpoint_failed(endpoint)

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
        k, end = key_range(
            to_bytes(key), prefix, None if range_end is None else to_bytes(range_end, "range_end")
        )
        if isinstance(start_revision, bool) or not isinstance(start_revision, int) or start_revision < 0:
            raise ConfigError(f"start_revision must be an int >= 0, got {start_revision!r}")
        buf = self.max_buffer if max_buffer is None else max_buffer
        if not isinstance(buf, int) or buf < 1:
            raise ConfigError(f"max_buffer must be a positive int, got {buf!r}")
        return Watcher(
            self,
            k,
            end,
            start_revision,
            no_put=no_put,
            no_delete=no_delete,
            prev_kv=prev_kv,
            progress_notify=progress_notify,
            max_buffer=buf,
        )

    @staticmethod
    def _stream_key(w: Watcher) -> str:
        """Which stream a watcher goes on. Constant by design: anything taken from the call (its key, its
        timeout, its task) would give every call a stream of its own, never shared and never reused."""
        return STREAM_KEY

    def _attach(self, w: Watcher) -> None:
        if self._closed:
            w._fail(ClientClosedError("the etcdlock client is closed"))
            return
        key = self._stream_key(w)
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _WatchStream(self, key)
        w._stream = stream
        stream.add(w)

    def _detach(self, w: Watcher) -> None:
        stream, w._stream = w._stream, None
        if stream is not None:
            stream.remove(w)
            self._maybe_close(stream)

    def _maybe_close(self, stream: _WatchStream) -> None:
        """The last watcher left: retire the stream (etcd frees every watcher on it when it closes)."""
        if stream.is_empty() and self._streams.get(stream.key) is stream:
            del self._streams[stream.key]
            self._closing.add(stream)
            stream.close()

    def _stream_finished(self, stream: _WatchStream) -> None:
        self._closing.discard(stream)
        if self._streams.get(stream.key) is stream:
            del self._streams[stream.key]

    # ---- introspection ----

    def stream_count(self) -> int:
        return len(self._streams)

    def closing_count(self) -> int:
        return len(self._closing)

    def watcher_count(self) -> int:
        return sum(s.live_watchers() for s in self._streams.values())

    async def close(self) -> None:
        self._closed = True
        streams = [*self._streams.values(), *self._closing]
        self._streams.clear()
        for s in streams:
            s.close()
        runners = [s.runner for s in streams if not s.runner.done()]
        if runners:
            await asyncio.wait(runners, timeout=5.0)
