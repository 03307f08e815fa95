"""A fault-injecting TCP proxy for tests: put it between a client and a server, then break the network.

Stdlib only, like the rest of :mod:`etcdlock.testing`.  Typical use::

    with FaultProxy(etcd.endpoints[0]) as proxy:
        client = Client([proxy.endpoint])
        proxy.blackhole()      # packets vanish: calls time out
        proxy.pass_through()   # connections that lived through the partition are reset; new ones work
        proxy.delay(0.2)       # every chunk, both ways, arrives 0.2 s late (order kept)
        proxy.reset()          # every connection gets a TCP RST, and so does every new one

The proxy runs its own asyncio loop in one daemon thread, so it keeps working while the test's own
loop is blocked, and its synchronous methods can be called from any thread (tests, checker threads).
A mode switch has taken effect on every existing connection by the time the method returns.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import enum
import errno
import logging
import math
import socket
import struct
import threading
from asyncio import trsock
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, Self, cast

__all__ = ["FaultProxy", "Mode"]

_log = logging.getLogger(__name__)

_LOOPBACK = "127.0.0.1"
# Bytes a delay queue may hold before the proxy stops reading from the sender: the sender then feels
# TCP back-pressure, as it would on a slow link, instead of the proxy buffering without bound.
_QUEUE_HIGH_WATER = 1024 * 1024
# How long a caller waits for the proxy thread to apply a mode switch; only hit if that thread is stuck.
_CALL_TIMEOUT = 10.0
_START_TIMEOUT = 10.0
_CLOSE_TIMEOUT = 10.0
# accept() errors that mean "out of fds/memory right now": retrying at once would spin.
_ACCEPT_BACKOFF_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_BACKOFF = 0.1


class Mode(enum.StrEnum):
    """What the proxy does to traffic. A StrEnum, so ``proxy.mode == "blackhole"`` works."""

    PASS_THROUGH = "pass_through"
    DELAY = "delay"
    BLACKHOLE = "blackhole"
    RESET = "reset"


def _set_linger_zero(sock: socket.socket | trsock.TransportSocket) -> None:
    # Linger on with timeout 0 makes close() send RST and drop unsent data: the peer sees
    # ECONNRESET at once instead of an orderly end of stream.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _rst_socket(sock: socket.socket) -> None:
    _set_linger_zero(sock)
    sock.close()


def _rst_transport(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        _set_linger_zero(sock)
    transport.abort()


def _parse_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"proxy target must be 'host:port' (port 1-65535), got {target!r}")
    return host, int(port)


class _Side(asyncio.Protocol):
    """One TCP connection of a proxied pair (the client's, or ours to the upstream)."""

    def __init__(self, conn: _Conn, name: str) -> None:
        self.conn = conn
        self.name = name
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.conn.side_made(self)

    def data_received(self, data: bytes) -> None:
        self.conn.flow_from(self).push(data)

    def eof_received(self) -> bool:
        self.conn.flow_from(self).push(None)
        # Keep our write half open: the other direction may still have data for this peer.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.side_lost(self, exc)

    def pause_writing(self) -> None:
        self.conn.flow_into(self).set_dst_paused(True)

    def resume_writing(self) -> None:
        self.conn.flow_into(self).set_dst_paused(False)


class _Flow:
    """One direction of a connection: a queue of (release time, chunk) so a delay never reorders data.

    A chunk of None stands for end-of-stream (the sender's FIN), which travels in order with the data.
    """

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.src: _Side | None = None
        self.dst: _Side | None = None
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.queued_bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        self.src_eof = False  # the sender's FIN arrived: its transport must never resume reading
        self.eof_sent = False
        self.src_paused = False
        self.dst_paused = False

    def push(self, data: bytes | None) -> None:
        conn = self.conn
        if data is None:
            self.src_eof = True
        else:
            conn.proxy.count_received(len(data))
        if conn.closing:
            return
        if conn.tainted:
            # A partition: the bytes (and a FIN) vanish, but the sender sees its writes succeed.
            if data is not None:
                conn.proxy.count_dropped(len(data))
            return
        release = conn.proxy.loop_time() + conn.proxy.current_delay
        self.queue.append((release, data))
        if data is not None:
            self.queued_bytes += len(data)
        self.pump()

    def pump(self) -> None:
        """Deliver every chunk whose time has come, in order; arm one timer for the next one."""
        if self.timer is not None or self.conn.closing:
            return  # the armed timer is for the head chunk; nothing behind it may overtake it
        dst = self.dst.transport if self.dst is not None else None
        if dst is None:
            self.update_reading()
            return  # the upstream connect (or client wrap) is not done yet: data waits in order
        if dst.is_closing():
            # Aborted, or its peer is gone and connection_lost is still on its way: writes would only
            # pile up warnings; side_lost will end the connection.
            self.drop()
            return
        now = self.conn.proxy.loop_time()
        while self.queue:
            release, data = self.queue[0]
            if release > now:
                self.timer = self.conn.proxy.call_at(release, self._on_timer)
                break
            self.queue.popleft()
            if data is None:
                self.eof_sent = True
                if dst.can_write_eof():
                    try:
                        dst.write_eof()
                    except OSError:
                        # The peer went away while the FIN waited out its delay (ENOTCONN): the socket is
                        # done, and its connection_lost ends this connection; nothing left to forward.
                        self.drop()
                        return
                self.conn.check_both_eof()
                if self.conn.closing:
                    return
            else:
                self.queued_bytes -= len(data)
                dst.write(data)
                self.conn.proxy.count_forwarded(len(data))
        self.update_reading()

    def _on_timer(self) -> None:
        self.timer = None
        self.pump()

    def set_dst_paused(self, paused: bool) -> None:
        self.dst_paused = paused
        self.update_reading()

    def update_reading(self) -> None:
        src = self.src.transport if self.src is not None else None
        if src is None or self.src_eof or self.conn.closing:
            return
        # A partitioned connection keeps reading (and dropping) so the sender never blocks.
        want_pause = not self.conn.tainted and (self.dst_paused or self.queued_bytes > _QUEUE_HIGH_WATER)
        if want_pause != self.src_paused:
            self.src_paused = want_pause
            if want_pause:
                src.pause_reading()
            else:
                src.resume_reading()

    def drop(self) -> int:
        """Forget queued data (partition or teardown); returns how many bytes were thrown away."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        dropped = self.queued_bytes
        self.queue.clear()
        self.queued_bytes = 0
        return dropped


class _Conn:
    """A proxied pair: the accepted client connection and our connection to the upstream.

    It is finished (and leaves the proxy's set) once set-up is over and every transport it made is lost,
    i.e. every socket it owned is closed.
    """

    def __init__(
        self, proxy: FaultProxy, *, source: str | None, tainted: bool, finished: asyncio.Future[None]
    ) -> None:
        self.proxy = proxy
        self.source = source  # who opened it, as the proxy's `identify` named it (None: not known)
        self.tainted = tainted  # lived through a blackhole: its byte stream is corrupt
        self.aborted = False
        self.closing = False
        self.setting_up = True
        self.live = 0
        self.finished = finished
        self.client: _Side | None = None
        self.upstream: _Side | None = None
        self.to_upstream = _Flow(self)
        self.to_client = _Flow(self)

    def flow_from(self, side: _Side) -> _Flow:
        return self.to_upstream if side is self.client else self.to_client

    def flow_into(self, side: _Side) -> _Flow:
        return self.to_client if side is self.client else self.to_upstream

    def sides(self) -> list[_Side]:
        return [s for s in (self.client, self.upstream) if s is not None]

    def side_made(self, side: _Side) -> None:
        self.live += 1
        if side.name == "client":
            self.client = side
            self.to_upstream.src = side
            self.to_client.dst = side
        else:
            self.upstream = side
            self.to_client.src = side
            self.to_upstream.dst = side
        if self.aborted:
            # Reset while this side was being connected: it must not outlive the reset.
            assert side.transport is not None
            _rst_transport(side.transport)
            return
        self.to_client.pump()
        self.to_upstream.pump()

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        self.live -= 1
        if not self.closing:
            orderly = exc is None and self.to_client.eof_sent and self.to_upstream.eof_sent
            # Mirror the failure onto the other peer: an RST (or a dead peer) becomes an RST there.
            self._shut(graceful=orderly, skip=side)
        self.maybe_finish()

    def check_both_eof(self) -> None:
        if self.to_client.eof_sent and self.to_upstream.eof_sent and not self.closing:
            # Both peers said goodbye and both FINs were passed on: close without an RST.
            self._shut(graceful=True)

    def taint(self) -> None:
        already = self.tainted
        self.tainted = True
        if already or self.closing:
            return
        for flow in (self.to_upstream, self.to_client):
            self.proxy.count_dropped(flow.drop())
            flow.update_reading()

    def abort(self) -> None:
        self.aborted = True
        self._shut(graceful=False)

    def _shut(self, *, graceful: bool, skip: _Side | None = None) -> None:
        self.closing = True
        for flow in (self.to_upstream, self.to_client):
            flow.drop()
        for side in self.sides():
            if side.transport is None or side is skip:
                continue
            if graceful:
                side.transport.close()
            else:
                _rst_transport(side.transport)

    def maybe_finish(self) -> None:
        if not self.setting_up and self.live == 0 and not self.finished.done():
            self.finished.set_result(None)
            self.proxy._forget(self)


class FaultProxy:
    """A TCP proxy on 127.0.0.1 that forwards to ``target`` ("host:port") and injects faults on demand.

    ``start()`` binds (a free port unless ``port`` is given) and starts the proxy thread; ``close()``
    resets every connection, closes every socket and joins the thread.  Also a context manager.

    Modes (switch any time; each applies to existing and new connections):

    * :meth:`pass_through` forwards bytes both ways;
    * :meth:`delay` forwards every chunk a fixed one-way delay late, order kept;
    * :meth:`blackhole` keeps connections open but drops every byte both ways (a partition); new
      connections are accepted and their bytes dropped (no upstream connection is made for them).
      Leaving blackhole resets every connection that lived through it, since its stream is corrupt;
    * :meth:`reset` aborts every connection with a TCP RST on both sides, and resets new ones right
      after accept.

    A client whose upstream cannot be reached (refused, or no answer within ``connect_timeout``) is
    reset, so it fails as quickly as it would against a dead server.

    Sources: ``identify(sock)`` names the process that opened each accepted connection (or returns
    None); it runs once per connection, in the proxy thread, before any byte is forwarded.
    :meth:`cut_off` then blackholes the connections of chosen sources only, as the blackhole mode does
    for all of them.
    """

    def __init__(
        self,
        target: str,
        *,
        port: int = 0,
        connect_timeout: float = 5.0,
        identify: Callable[[socket.socket], str | None] | None = None,
    ) -> None:
        self._target_host, self._target_port = _parse_target(target)
        if not 0 <= port < 65536:
            raise ValueError(f"port must be 0 (any free port) or 1-65535, got {port}")
        if not connect_timeout > 0 or not math.isfinite(connect_timeout):
            raise ValueError(f"connect_timeout must be a positive number of seconds, got {connect_timeout!r}")
        self._target = target
        self._requested_port = port
        self._connect_timeout = connect_timeout
        self._identify = identify
        self._port: int | None = None
        # Guards start/close and mode switches, so a switch never races the loop's shutdown.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._closed = False
        # Loop-thread state: only touched from inside the proxy's loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: set[_Conn] = set()
        # Written by the loop thread only; plain int/str reads are atomic, so other threads read freely.
        self._mode = Mode.PASS_THROUGH
        self._delay = 0.0
        self._cut: frozenset[str] = frozenset()
        self._accepted = 0
        self._upstream_failures = 0
        self._received = 0
        self._forwarded = 0
        self._dropped = 0

    # ---- public, synchronous, thread-safe ----

    @property
    def target(self) -> str:
        return self._target

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the proxy has no port until start()")
        return self._port

    @property
    def endpoint(self) -> str:
        return f"{_LOOPBACK}:{self.port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def cut_sources(self) -> frozenset[str]:
        """The sources whose connections are blackholed (see :meth:`cut_off`)."""
        return self._cut

    @property
    def delay_seconds(self) -> float:
        """The one-way delay in force (0 unless in delay mode)."""
        return self._delay

    @property
    def connections_accepted(self) -> int:
        """Client connections accepted so far, including ones reset at once."""
        return self._accepted

    @property
    def connections_open(self) -> int:
        """Proxied connections that still hold a socket (client or upstream side)."""
        return len(self._conns)

    @property
    def bytes_received(self) -> int:
        """Bytes read from either peer, both directions together (forwarded, queued or dropped)."""
        return self._received

    @property
    def bytes_forwarded(self) -> int:
        """Bytes delivered to a peer, both directions together."""
        return self._forwarded

    @property
    def bytes_dropped(self) -> int:
        """Bytes thrown away by blackhole mode (received, or queued when the partition began)."""
        return self._dropped

    @property
    def upstream_failures(self) -> int:
        """Client connections reset because the upstream could not be reached."""
        return self._upstream_failures

    def start(self) -> Self:
        with self._lock:
            if self._closed:
                raise RuntimeError("the proxy is closed; make a new one")
            if self._thread is not None:
                raise RuntimeError("the proxy is already started")
            # Bound here, in the caller's thread, so a taken port fails start() and `port` is known
            # as soon as start() returns.
            listener = socket.create_server((_LOOPBACK, self._requested_port), backlog=128)
            listener.setblocking(False)
            self._port = listener.getsockname()[1]
            thread = threading.Thread(
                target=self._thread_main, args=(listener,), name=f"etcdlock-proxy-{self._port}", daemon=True
            )
            self._thread = thread
            thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            self.close()
            raise RuntimeError(f"proxy thread did not start within {_START_TIMEOUT:g}s")
        if self._error is not None:
            self.close()
            raise RuntimeError(
                f"proxy on port {self._port} failed to start: {self._error!r}"
            ) from self._error
        return self

    def close(self) -> None:
        """Reset every connection, close every socket, stop and join the thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if thread is threading.current_thread():
            raise RuntimeError("FaultProxy.close() called from the proxy's own thread")
        if loop is not None and stop is not None:
            # The loop may already be gone if the thread died; then there is nothing to stop.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join(_CLOSE_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"proxy thread {thread.name} did not stop within {_CLOSE_TIMEOUT:g}s")

    def pass_through(self) -> None:
        """Forward bytes both ways without delay."""
        self._switch(Mode.PASS_THROUGH, 0.0)

    def delay(self, seconds: float) -> None:
        """Deliver every chunk ``seconds`` late in each direction (a round trip gains twice that)."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"delay must be a number of seconds, not {type(seconds).__name__}")
        if not seconds >= 0 or not math.isfinite(seconds):
            raise ValueError(f"delay must be a finite number of seconds >= 0, got {seconds!r}")
        self._switch(Mode.DELAY, float(seconds))

    def blackhole(self) -> None:
        """Drop every byte both ways, keeping connections open; leaving it resets those connections."""
        self._switch(Mode.BLACKHOLE, 0.0)

    def reset(self) -> None:
        """RST every connection (both sides) now, and every new one right after accept."""
        self._switch(Mode.RESET, 0.0)

    def cut_off(self, sources: Iterable[str]) -> None:
        """Blackhole the connections opened by these sources (named by ``identify``), existing and new,
        whatever the mode; a connection of a source no longer cut is reset, as on leaving blackhole.
        ``cut_off(())`` cuts nobody. Needs ``identify``."""
        if self._identify is None:
            raise RuntimeError("cut_off() needs a proxy made with identify=")
        cut = frozenset(sources)
        self._in_loop(lambda: self._set_cut(cut))

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        elif self._closed:
            raise RuntimeError("the proxy is closed; make a new one")
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "unbound"
        return f"<FaultProxy 127.0.0.1:{port} -> {self._target} mode={self._mode.value}>"

    # ---- called by _Conn/_Flow, in the loop thread ----

    def loop_time(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        assert self._loop is not None
        return self._loop.call_at(when, callback)

    @property
    def current_delay(self) -> float:
        return self._delay

    def count_received(self, n: int) -> None:
        self._received += n

    def count_forwarded(self, n: int) -> None:
        self._forwarded += n

    def count_dropped(self, n: int) -> None:
        self._dropped += n

    def _forget(self, conn: _Conn) -> None:
        self._conns.discard(conn)

    # ---- internals ----

    def _switch(self, mode: Mode, delay: float) -> None:
        self._in_loop(lambda: self._set_mode(mode, delay))

    def _in_loop(self, change: Callable[[], None]) -> None:
        """Run CHANGE in the proxy thread and wait for it: a switch is in force when its method returns."""
        with self._lock:
            loop = self._loop
            if self._closed or loop is None:
                raise RuntimeError(f"{self!r} is not running (start() it first; it cannot be reused)")
            if threading.current_thread() is self._thread:
                change()
                return
            done: concurrent.futures.Future[None] = concurrent.futures.Future()

            def run() -> None:
                try:
                    change()
                except BaseException as e:
                    done.set_exception(e)
                else:
                    done.set_result(None)

            loop.call_soon_threadsafe(run)
            done.result(_CALL_TIMEOUT)

    def _set_mode(self, mode: Mode, delay: float) -> None:
        self._mode = mode
        self._delay = delay
        self._apply_to_connections()

    def _set_cut(self, sources: frozenset[str]) -> None:
        self._cut = sources
        self._apply_to_connections()

    def _blackholed(self, source: str | None) -> bool:
        return self._mode is Mode.BLACKHOLE or (source is not None and source in self._cut)

    def _apply_to_connections(self) -> None:
        for conn in list(self._conns):
            if self._mode is Mode.RESET:
                conn.abort()
            elif self._blackholed(conn.source):
                conn.taint()
            elif conn.tainted:
                conn.abort()  # it lived through a partition that is over: its byte stream is corrupt

    def _thread_main(self, listener: socket.socket) -> None:
        try:
            asyncio.run(self._serve(listener))
        except BaseException as e:  # the thread must not die with an unhandled exception
            self._error = e
            if not self._ready.is_set():
                listener.close()
            else:
                _log.exception("proxy thread %s crashed", threading.current_thread().name)
        finally:
            self._ready.set()

    async def _serve(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        with self._lock:
            self._loop, self._stop = loop, stop
            closed = self._closed
        if closed:
            listener.close()
            return
        try:
            self._spawn(self._accept_loop(listener), "accept")
            self._ready.set()
            await stop.wait()
        finally:
            await self._shutdown(listener)

    async def _shutdown(self, listener: socket.socket) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        # Set-up tasks close or reset their own sockets on cancellation (see _setup's finally).
        await asyncio.gather(*tasks, return_exceptions=True)
        listener.close()
        for conn in list(self._conns):
            conn.abort()
        pending = [conn.finished for conn in self._conns]
        if pending:
            # Sockets are closed in connection_lost, a loop iteration after abort(): wait for it, so no
            # socket outlives the loop (it would be reported as a ResourceWarning, or leak an fd).
            _, still = await asyncio.wait(pending, timeout=_CLOSE_TIMEOUT)
            if still:
                _log.warning("proxy on port %s: %d connections did not close", self._port, len(still))

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=f"etcdlock-proxy-{self._port}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("proxy task %s failed", task.get_name(), exc_info=task.exception())

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as e:
                if e.errno in _ACCEPT_BACKOFF_ERRNOS:
                    await asyncio.sleep(_ACCEPT_BACKOFF)
                continue  # e.g. ECONNABORTED: that client gave up before we accepted it
            self._accepted += 1
            sock.setblocking(False)
            if self._mode is Mode.RESET:
                _rst_socket(sock)
                continue
            source = self._source_of(sock)
            conn = _Conn(self, source=source, tainted=self._blackholed(source), finished=loop.create_future())
            self._conns.add(conn)
            self._spawn(self._setup(conn, sock), f"conn-{self._accepted}")

    def _source_of(self, sock: socket.socket) -> str | None:
        if self._identify is None:
            return None
        try:
            return self._identify(sock)
        except Exception:
            _log.exception(
                "proxy on port %s: identify() failed; the connection counts as unknown", self._port
            )
            return None

    async def _setup(self, conn: _Conn, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        # Ours until a transport takes it over; whoever owns it must close it.
        owned: socket.socket | None = sock
        try:
            # Upstream first: until it answers, the client's bytes wait in the kernel, not in our queue.
            # A connection born in a blackhole gets no upstream: nothing it sends may ever arrive.
            if not conn.tainted:
                try:
                    async with asyncio.timeout(self._connect_timeout):
                        await loop.create_connection(
                            lambda: _Side(conn, "upstream"), self._target_host, self._target_port
                        )
                except (OSError, TimeoutError):
                    self._upstream_failures += 1
                    return  # finally resets the client, as a dead server's host would
            if conn.aborted:
                return
            await loop.connect_accepted_socket(lambda: _Side(conn, "client"), sock)
            owned = None
        finally:
            if owned is not None:
                _rst_socket(owned)
                conn.abort()
            conn.setting_up = False
            conn.maybe_finish()
