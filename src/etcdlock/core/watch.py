"""Watches: many watchers over one shared gRPC Watch stream.

The stream registry is keyed by a *stable* identity (`STREAM_KEY`, the same for every watcher of a client),
never by anything derived from one call, its timeout or its task: that was the bug that leaked a gRPC stream
per lock attempt in the Go client this project was born from. The stream exists while it has watchers and
closes when the last one leaves.

Per stream there is one runner task (opens the call, writes requests, resumes after failures) and one reader
task (the only one that reads the call). Creates go out one at a time, so each create reply pairs with the
oldest create in flight. A consumer never blocks the reader: each watcher has a bounded buffer and a watcher
that overflows it is ended with WatchOverflowError. On a stream failure every live watcher is re-created on a
new stream (moving to another endpoint if needed) from its last delivered revision + 1, so nothing is lost or
repeated.
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

import grpc
import grpc.aio

from etcdlock._wire import methods
from etcdlock._wire import rpc_pb2 as pb
from etcdlock.core.connection import Connection
from etcdlock.core.errors import (
    ClientClosedError,
    CompactedError,
    ConfigError,
    WatchError,
    WatchOverflowError,
)
from etcdlock.core.tasks import TaskOwner, backoff
from etcdlock.core.types import EventType, Key, KeyValue, WatchEvent, key_range, to_bytes

log = logging.getLogger("etcdlock.watch")

STREAM_KEY: Final = "watch"
DEFAULT_MAX_BUFFER: Final = 10_000

_NEW, _STARTED, _DONE = "new", "started", "done"
_seq = itertools.count()


class Watcher:
    """One watch. Iterate it (``async for event in watcher``) or use it as an async context manager.

    Leaving the iteration by any path (break, exception, cancellation, a timeout around the consumer) ends the
    watch and sends a WatchCancelRequest.
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
        self.range_end = range_end
        self.start_revision = start_revision
        self.no_put = no_put
        self.no_delete = no_delete
        self.prev_kv = prev_kv
        self.progress_notify = progress_notify
        self.max_buffer = max_buffer
        self.seq = next(_seq)
        # The next revision this watcher must see; 0 = "from now" until the server confirms creation.
        self.next_revision = start_revision
        self.watch_id: int | None = None
        self.created = asyncio.Event()
        self.created_revision = 0
        self.state = _NEW
        self._stream: _WatchStream | None = None
        # Set by an owner that consumes events synchronously on the stream's reader (no buffer, no task hop);
        # it must be quick and must not raise. Errors still surface through next_event()/wait_created().
        self.on_events: Callable[[list[WatchEvent]], None] | None = None
        self._buffer: deque[WatchEvent] = deque()
        self._signal = asyncio.Event()
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
        """The next event; raises the watcher's error, or StopAsyncIteration once it was cancelled."""
        while not self._buffer:
            if self._error is not None:
                raise self._error
            if self.state == _DONE:
                raise StopAsyncIteration
            self._signal.clear()
            await self._signal.wait()
        return self._buffer.popleft()

    async def wait_created(self) -> int:
        """Wait until etcd confirmed the watch; returns the revision in the create reply."""
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
        return self.state == _DONE

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # ---- stream side ----

    def _on_created(self, watch_id: int, revision: int) -> None:
        self.watch_id = watch_id
        if self.next_revision == 0:
            self.next_revision = revision + 1
        if not self.created.is_set():
            self.created_revision = revision
            self.created.set()
        self._signal.set()

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
        if self._error is None and self.state != _DONE:
            self._error = error
        self.state = _DONE
        self._signal.set()

    def create_request(self) -> pb.WatchRequest:
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
PROBE_TIMEOUT = 3.0


def _progress_request() -> pb.WatchRequest:
    return pb.WatchRequest(progress_request=pb.WatchProgressRequest())


class _WatchStream:
    """One gRPC Watch stream and the watchers multiplexed on it."""

    def __init__(self, hub: Watches, key: str) -> None:
        self._hub = hub
        self.key = key
        self.by_id: dict[int, Watcher] = {}
        self.pending: deque[Watcher] = deque()  # waiting to be created, in order
        self.inflight: Watcher | None = None  # create sent, reply not yet seen
        self.inflight_abandoned = False
        self.cancelling: set[int] = set()  # cancel sent, canceled reply not yet seen
        self._outbox: deque[pb.WatchRequest] = deque()
        self._fragments: dict[int, list[WatchEvent]] = {}
        self._wake = asyncio.Event()
        self.closing = False
        self.abandon = False  # set when the connection gave up on this stream's endpoint
        self.last_reply_at = 0.0
        self.probe_sent_at: float | None = None
        self.probes_sent = 0
        self.endpoint = ""
        self.generations = 0
        self.cancels_sent = 0
        self.replies_since_open = 0
        self.fragments_received = 0
        self.runner = hub._tasks.spawn(self._run(), "watch-stream")

    # ---- membership ----

    def add(self, w: Watcher) -> None:
        self.pending.append(w)
        self._wake.set()

    def remove(self, w: Watcher) -> None:
        if w.watch_id is not None and self.by_id.get(w.watch_id) is w:
            del self.by_id[w.watch_id]
            self.cancel_id(w.watch_id)
        elif self.inflight is w:
            self.inflight_abandoned = True  # its create reply will be answered with a cancel
        else:
            with contextlib.suppress(ValueError):
                self.pending.remove(w)
        self._wake.set()

    def cancel_id(self, watch_id: int) -> None:
        if watch_id not in self.cancelling:
            self.cancelling.add(watch_id)
            self._outbox.append(_cancel_request(watch_id))
            self._wake.set()

    def is_empty(self) -> bool:
        inflight_live = self.inflight is not None and not self.inflight_abandoned
        return not self.by_id and not self.pending and not inflight_live

    def live_watchers(self) -> int:
        return (
            len(self.by_id) + len(self.pending) + (1 if self.inflight and not self.inflight_abandoned else 0)
        )

    def close(self) -> None:
        self.closing = True
        self._wake.set()

    def endpoint_failed(self, endpoint: str) -> None:
        if endpoint == self.endpoint:
            self.abandon = True
            self._wake.set()

    # ---- runner: open, write, resume ----

    async def _run(self) -> None:
        call: Any = None
        reader: asyncio.Task[Any] | None = None
        failures = 0
        unexpected: WatchError | None = None
        try:
            while not self.closing:
                if self.abandon and call is not None:
                    # Another call found this member unresponsive; this stream may be just as cut off
                    # without knowing it (a black hole sends no error). Resume elsewhere; nothing is lost.
                    log.info("leaving watch stream at %s: the member failed another call", self.endpoint)
                    call, reader = await self._restart(call, reader)
                    failures += 1
                self.abandon = False
                if reader is not None and reader.done():
                    exc = None if reader.cancelled() else reader.exception()
                    detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
                    log.info(
                        "watch stream at %s ended (%s); resuming %d watchers",
                        self.endpoint,
                        detail,
                        self.live_watchers(),
                    )
                    self._hub._conn.report_failure(self.endpoint)
                    call, reader = await self._restart(call, reader)
                    failures += 1
                if call is None:
                    if failures:
                        await self._backoff(backoff(failures))
                        if self.closing:
                            break
                    try:
                        self.endpoint, call = await self._hub._conn.open_stream(methods.WATCH, leader=True)
                    except ClientClosedError:
                        break
                    except Exception as e:
                        log.info("cannot open watch stream: %s", e)
                        failures += 1
                        continue
                    self.generations += 1
                    self.replies_since_open = 0
                    self.last_reply_at, self.probe_sent_at = asyncio.get_running_loop().time(), None
                    reader = self._hub._tasks.spawn(self._read(call), "watch-reader")
                try:
                    while self._outbox:
                        await call.write(self._outbox[0])
                        self._outbox.popleft()
                        self.cancels_sent += 1
                    while self.inflight is None and self.pending:
                        w = self.pending.popleft()
                        if w.done:
                            continue
                        self.inflight, self.inflight_abandoned = w, False
                        await call.write(w.create_request())
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as e:
                    # The call is broken; its reader sees that too. Wait for it, then resume above.
                    log.info("watch stream write failed: %s", e)
                    if reader is not None:
                        await asyncio.wait([reader])
                    continue
                if reader is not None and reader.done():
                    continue
                now = asyncio.get_running_loop().time()
                if self.probe_sent_at is not None and now - self.probe_sent_at >= PROBE_TIMEOUT:
                    log.info(
                        "watch stream at %s did not answer a progress request in %gs; resuming elsewhere",
                        self.endpoint,
                        PROBE_TIMEOUT,
                    )
                    self._hub._conn.report_failure(self.endpoint)
                    call, reader = await self._restart(call, reader)
                    failures += 1
                    continue
                if self.probe_sent_at is None and self.by_id and now - self.last_reply_at >= PROBE_IDLE:
                    self.probe_sent_at = now
                    self.probes_sent += 1
                    try:
                        await call.write(_progress_request())
                    except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as e:
                        log.info("watch stream write failed: %s", e)
                        continue
                await self._pause(self._next_probe_check(now), reader)
                if self.replies_since_open:
                    failures = 0  # the stream works again: reset the backoff
        except Exception as e:
            # A fault nobody foresaw must not leave watchers waiting on a stream that is gone: they are
            # failed, and their owners start over.
            log.exception("watch stream at %s failed unexpectedly", self.endpoint)
            unexpected = WatchError(f"the watch stream at {self.endpoint} failed: {e!r}")
        finally:
            await self._drop(call, reader)
            closed = ClientClosedError("the etcdlock client was closed while watching")
            for w in [*self.by_id.values(), *self.pending, *([self.inflight] if self.inflight else [])]:
                if self._hub._closed:
                    w._fail(closed)
                elif unexpected is not None:
                    w._fail(unexpected)
            self._hub._stream_finished(self)

    def _requeue(self) -> None:
        """After a failure: every live watcher is created again from its next revision, in original order."""
        live = list(self.by_id.values())
        if self.inflight is not None and not self.inflight_abandoned:
            live.append(self.inflight)
        live.extend(self.pending)
        for w in live:
            w.watch_id = None
        self.by_id.clear()
        self.cancelling.clear()
        self._outbox.clear()
        self._fragments.clear()
        self.inflight, self.inflight_abandoned = None, False
        self.pending = deque(sorted((w for w in live if not w.done), key=lambda w: w.seq))

    def _next_probe_check(self, now: float) -> float | None:
        """Seconds until the probe needs looking at (None: no watchers, nothing to check)."""
        if self.probe_sent_at is not None:
            return max(0.0, self.probe_sent_at + PROBE_TIMEOUT - now)
        if self.by_id:
            return max(0.0, self.last_reply_at + PROBE_IDLE - now)
        return None

    async def _backoff(self, seconds: float) -> None:
        """Wait before reopening a failed stream: the full time (unlike _pause, which returns at once while
        watchers wait to be created, and so would spin), unless the stream is closed meanwhile."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while not self.closing and (left := until - loop.time()) > 0:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._wake.wait()

    async def _pause(self, seconds: float | None, reader: asyncio.Task[Any] | None = None) -> None:
        self._wake.clear()
        if self.closing or self._outbox or (self.inflight is None and self.pending):
            return
        if reader is not None and reader.done():
            return
        if seconds is None:
            await self._wake.wait()
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._wake.wait()

    async def _restart(self, call: Any, reader: asyncio.Task[Any] | None) -> tuple[None, None]:
        """Give up this call; every live watcher is created again, on the next stream, from its next
        revision."""
        dropped = await self._drop(call, reader)
        self._requeue()
        return dropped

    async def _drop(self, call: Any, reader: asyncio.Task[Any] | None) -> tuple[None, None]:
        if call is not None:
            call.cancel()
        if reader is not None:
            with contextlib.suppress(BaseException):
                await reader
        return None, None

    # ---- reader: the only task that reads the call ----

    async def _read(self, call: Any) -> None:
        try:
            loop = asyncio.get_running_loop()
            async for resp in call:
                self.replies_since_open += 1
                self.last_reply_at, self.probe_sent_at = loop.time(), None
                self._dispatch(resp)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # call.cancel() by our runner: a normal end.
        finally:
            self._wake.set()
        if not self.closing:
            raise WatchError(f"watch stream at {self.endpoint} was closed by the server")

    def _dispatch(self, resp: Any) -> None:
        wid = resp.watch_id
        if resp.created:
            w, abandoned = self.inflight, self.inflight_abandoned
            self.inflight, self.inflight_abandoned = None, False
            self._wake.set()
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
