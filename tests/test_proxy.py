"""FaultProxy: each mode against a plain local echo server (raw sockets), then real etcd through it.

Raw-socket tests tell an RST from a FIN by what a read raises: ConnectionResetError is an RST, b"" a FIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from etcdlock import Client
from etcdlock._core.errors import ConnectionFailedError, EtcdTimeoutError
from etcdlock.testing import FaultProxy, free_port
from tests.waiting import wait_until, wait_until_sync

IO_TIMEOUT = 20.0  # bound on any single read/connect, so a broken proxy fails a test instead of hanging it


class _EchoProtocol(asyncio.Protocol):
    def __init__(self, server: EchoServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.accepted += 1
        self.server.transports.add(transport)

    def data_received(self, data: bytes) -> None:
        self.server.received += data
        assert self.transport is not None
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close once our echo is flushed: the client then reads its data, then EOF

    def connection_lost(self, exc: Exception | None) -> None:
        assert self.transport is not None
        self.server.transports.discard(self.transport)
        self.server.lost.append(exc)


class EchoServer:
    """Echoes every byte back. Protocol-based, so it runs no tasks that could outlive a test."""

    def __init__(self) -> None:
        self.accepted = 0
        self.received = bytearray()
        self.lost: list[Exception | None] = []
        self.transports: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> EchoServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _EchoProtocol(self), "127.0.0.1", 0)
        return self

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for t in list(self.transports):
            t.abort()
        await wait_until(lambda: not self.transports, timeout=IO_TIMEOUT, what="echo connections closed")


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = await EchoServer().start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(echo.endpoint) as p:
        yield p


@pytest.fixture
def dead_endpoint() -> Iterator[str]:
    """An address that refuses connections: bound but not listening, so nobody else can take the port
    for the duration of the test (a merely "free" port could be grabbed by a parallel job)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def etcd_proxy(etcd_endpoints: list[str]) -> Iterator[FaultProxy]:
    with FaultProxy(etcd_endpoints[0]) as p:
        yield p


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def connect(proxy: FaultProxy) -> AsyncIterator[Stream]:
    async with asyncio.timeout(IO_TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def roundtrip(stream: Stream, payload: bytes) -> bytes:
    reader, writer = stream
    writer.write(payload)
    async with asyncio.timeout(IO_TIMEOUT):
        await writer.drain()
        return await reader.readexactly(len(payload))


async def assert_reset(reader: asyncio.StreamReader) -> None:
    """The peer's next event is an RST: not data, not an orderly EOF."""
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(IO_TIMEOUT):
            data = await reader.read(1024)
            pytest.fail(f"expected a connection reset, read {data!r}")


async def assert_new_connection_reset(proxy: FaultProxy) -> None:
    """A new connection through the proxy is reset: seen on connect if the RST beats asyncio's check of
    the handshake (the kernel completes it before accept()), else on the first read."""
    with pytest.raises(ConnectionResetError):
        async with connect(proxy) as stream:
            async with asyncio.timeout(IO_TIMEOUT):
                data = await stream[0].read(1024)
            pytest.fail(f"expected a connection reset, read {data!r}")


def proxy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("etcdlock-proxy-")]


def open_fds() -> set[tuple[str, str]]:
    """(fd, what it points at) for every open fd. Compared as sets, not counts, so fds that gRPC closes
    in the background (other tests' channels) cannot hide one that leaked here."""
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(f"/proc/self/fd/{fd}")
            if not target.startswith("/proc/"):  # listdir's own directory fd
                fds.add((fd, target))
    return fds


def os_threads() -> set[str]:
    # /proc, not threading.enumerate(): it also sees native threads.
    return set(os.listdir("/proc/self/task"))


async def assert_nothing_new(base_fds: set[tuple[str, str]], base_threads: set[str]) -> None:
    gc.collect()
    await wait_until(lambda: not open_fds() - base_fds, timeout=IO_TIMEOUT, what="no fd beyond the baseline")
    await wait_until(
        lambda: not os_threads() - base_threads, timeout=IO_TIMEOUT, what="no thread beyond the baseline"
    )


# ---- raw sockets against an echo server ----------------------------------------------------------


async def test_pass_through_forwards_both_ways_and_passes_eof(echo: EchoServer, proxy: FaultProxy) -> None:
    assert proxy.mode == "pass_through"
    payload = bytes(range(256)) * 4096  # 1 MiB: more than socket buffers hold, so flow control runs
    async with connect(proxy) as stream:
        assert await roundtrip(stream, b"hello") == b"hello"
        assert await roundtrip(stream, payload) == payload
        reader, writer = stream
        # Half-close: our FIN must reach the echo server, which then closes, and its FIN must reach us.
        writer.write(b"last")
        writer.write_eof()
        async with asyncio.timeout(IO_TIMEOUT):
            assert await reader.read() == b"last"
    assert proxy.connections_accepted == 1
    assert echo.accepted == 1
    assert bytes(echo.received) == b"hello" + payload + b"last"
    total = 2 * (5 + len(payload) + 4)
    assert proxy.bytes_forwarded == total
    assert proxy.bytes_received == total
    assert proxy.bytes_dropped == 0
    await wait_until(lambda: proxy.connections_open == 0, timeout=IO_TIMEOUT, what="proxy connection closed")
    assert echo.lost == [None]  # the upstream side ended with FINs, not an RST


async def test_delay_delays_each_direction_and_keeps_order(echo: EchoServer, proxy: FaultProxy) -> None:
    d = 0.25
    async with connect(proxy) as stream:
        assert await roundtrip(stream, b"warm") == b"warm"
        # Switched on an existing connection: both the request and the echo wait d.
        proxy.delay(d)
        assert proxy.mode == "delay"
        assert proxy.delay_seconds == d
        start = time.monotonic()
        assert await roundtrip(stream, b"slow") == b"slow"
        assert time.monotonic() - start >= 2 * d - 0.01

        # Many small writes arrive as arbitrary chunks; all must come back in order.
        reader, writer = stream
        first = b"".join(b"a%05d" % i for i in range(2000))
        second = b"".join(b"b%05d" % i for i in range(2000))
        received_before = proxy.bytes_received
        for i in range(0, len(first), 6):
            writer.write(first[i : i + 6])
        await wait_until(
            lambda: proxy.bytes_received >= received_before + len(first),
            timeout=IO_TIMEOUT,
            what="first half queued in the proxy",
        )
        # Dropping the delay while the first half still waits: the second half must not overtake it.
        proxy.pass_through()
        for i in range(0, len(second), 6):
            writer.write(second[i : i + 6])
        async with asyncio.timeout(IO_TIMEOUT):
            await writer.drain()
            assert await reader.readexactly(len(first) + len(second)) == first + second
    assert bytes(echo.received) == b"warm" + b"slow" + first + second


async def test_blackhole_drops_everything_and_leaving_it_resets_those_connections(
    echo: EchoServer, proxy: FaultProxy
) -> None:
    async with connect(proxy) as old:
        assert await roundtrip(old, b"ping") == b"ping"
        proxy.blackhole()
        assert proxy.mode == "blackhole"
        old[1].write(b"lost-1")
        await wait_until(lambda: proxy.bytes_dropped >= 6, timeout=IO_TIMEOUT, what="old connection's bytes")
        # A connection made during the partition is accepted, but its bytes go nowhere (not even an
        # upstream connection is made).
        async with connect(proxy) as new:
            new[1].write(b"lost-2")
            await wait_until(lambda: proxy.bytes_dropped >= 12, timeout=IO_TIMEOUT, what="new conn's bytes")
            assert proxy.connections_accepted == 2
            assert proxy.connections_open == 2
            assert echo.accepted == 1

            proxy.pass_through()
            # Their streams lost bytes: resuming would corrupt them, so both are reset.
            await assert_reset(old[0])
            await assert_reset(new[0])
    await wait_until(lambda: len(echo.lost) == 1, timeout=IO_TIMEOUT, what="upstream side closed")
    assert isinstance(echo.lost[0], ConnectionResetError)
    assert bytes(echo.received) == b"ping"
    assert proxy.bytes_forwarded == 8

    async with connect(proxy) as fresh:
        assert await roundtrip(fresh, b"again") == b"again"


async def test_cut_off_blackholes_only_the_chosen_sources_and_mending_resets_theirs(echo: EchoServer) -> None:
    # Connections are made one at a time, so the order of accepts names them.
    names = iter(["a", "b", "a-late"])
    with FaultProxy(echo.endpoint, identify=lambda sock: next(names)) as proxy:
        async with connect(proxy) as a, connect(proxy) as b:
            assert await roundtrip(a, b"a1") == b"a1"
            assert await roundtrip(b, b"b1") == b"b1"
            proxy.cut_off(["a", "a-late"])
            assert proxy.cut_sources == {"a", "a-late"} and proxy.mode == "pass_through"
            a[1].write(b"lost")
            await wait_until(lambda: proxy.bytes_dropped >= 4, timeout=IO_TIMEOUT, what="a's bytes dropped")
            assert await roundtrip(b, b"b2") == b"b2"  # the other source is not touched
            async with connect(proxy) as late:  # born cut: no upstream connection is made for it
                late[1].write(b"lost-too")
                await wait_until(lambda: proxy.bytes_dropped >= 12, timeout=IO_TIMEOUT, what="late bytes")
                assert echo.accepted == 2
                proxy.cut_off([])
                await assert_reset(a[0])
                await assert_reset(late[0])
            assert await roundtrip(b, b"b3") == b"b3"
    with FaultProxy(echo.endpoint) as plain, pytest.raises(RuntimeError, match="identify"):
        plain.cut_off(["a"])


async def test_blackhole_drops_data_already_queued_by_a_delay(echo: EchoServer, proxy: FaultProxy) -> None:
    async with connect(proxy) as stream:
        assert await roundtrip(stream, b"ping") == b"ping"
        proxy.delay(60)
        stream[1].write(b"in-flight")
        await wait_until(lambda: proxy.bytes_received >= 8 + 9, timeout=IO_TIMEOUT, what="bytes queued")
        proxy.blackhole()
        # Packets in flight when the partition starts are lost with it.
        assert proxy.bytes_dropped == 9
        proxy.pass_through()
        await assert_reset(stream[0])
    assert bytes(echo.received) == b"ping"


async def test_reset_sends_rst_both_ways_and_resets_new_connections(
    echo: EchoServer, proxy: FaultProxy
) -> None:
    async with connect(proxy) as stream:
        assert await roundtrip(stream, b"ping") == b"ping"
        proxy.reset()
        assert proxy.mode == "reset"
        await assert_reset(stream[0])
    await wait_until(lambda: len(echo.lost) == 1, timeout=IO_TIMEOUT, what="upstream side closed")
    assert isinstance(echo.lost[0], ConnectionResetError)

    await assert_new_connection_reset(proxy)
    assert proxy.connections_accepted == 2
    assert echo.accepted == 1  # a connection reset on accept never reaches the upstream
    await wait_until(lambda: proxy.connections_open == 0, timeout=IO_TIMEOUT, what="connections gone")

    proxy.pass_through()
    async with connect(proxy) as fresh:
        assert await roundtrip(fresh, b"back") == b"back"


async def test_unreachable_upstream_resets_the_client(dead_endpoint: str) -> None:
    with FaultProxy(dead_endpoint) as proxy:
        await assert_new_connection_reset(proxy)
        assert proxy.upstream_failures == 1
        assert proxy.connections_accepted == 1
        await wait_until(lambda: proxy.connections_open == 0, timeout=IO_TIMEOUT, what="connection gone")


async def test_close_releases_every_socket_and_the_thread(echo: EchoServer) -> None:
    gc.collect()
    base_fds, base_threads = open_fds(), os_threads()
    proxy = FaultProxy(echo.endpoint).start()
    (thread,) = proxy_threads()
    assert thread.name == f"etcdlock-proxy-{proxy.port}"
    assert thread.daemon
    async with connect(proxy) as idle, connect(proxy) as queued:
        assert await roundtrip(idle, b"idle") == b"idle"
        assert await roundtrip(queued, b"q") == b"q"
        proxy.delay(60)  # leaves a chunk in a delay queue with its timer armed
        queued[1].write(b"queued")
        await wait_until(lambda: proxy.bytes_received >= 10 + 6, timeout=IO_TIMEOUT, what="bytes queued")
        assert proxy.connections_open == 2
        proxy.close()
        assert not thread.is_alive()
        # Closing the proxy is a crash of the network path: both clients see an RST.
        await assert_reset(idle[0])
        await assert_reset(queued[0])
    proxy.close()  # idempotent
    with pytest.raises(RuntimeError):
        proxy.pass_through()
    with pytest.raises(RuntimeError):
        proxy.start()
    assert proxy.connections_open == 0
    assert proxy_threads() == []
    await wait_until(lambda: not echo.transports, timeout=IO_TIMEOUT, what="upstream sides closed")
    await assert_nothing_new(base_fds, base_threads)


async def test_start_close_cycles_do_not_accumulate(echo: EchoServer) -> None:
    gc.collect()
    base_fds, base_threads = open_fds(), os_threads()
    for _ in range(20):
        with FaultProxy(echo.endpoint) as proxy:
            async with connect(proxy) as stream:
                assert await roundtrip(stream, b"x") == b"x"
    await wait_until(lambda: not echo.transports, timeout=IO_TIMEOUT, what="upstream sides closed")
    await assert_nothing_new(base_fds, base_threads)
    assert proxy_threads() == []


async def test_mode_switches_from_plain_threads_while_traffic_flows(
    echo: EchoServer, proxy: FaultProxy
) -> None:
    switches: list[Callable[[], None]] = [
        proxy.pass_through,
        lambda: proxy.delay(0.001),
        proxy.blackhole,
        proxy.reset,
    ]
    errors: list[BaseException] = []

    def toggle(seed: int) -> None:
        try:
            for i in range(200):
                switches[(seed + i) % len(switches)]()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=toggle, args=(k,), name=f"toggle-{k}") for k in range(4)]
    for t in threads:
        t.start()
    attempts = 0
    # Traffic only exercises the proxy while modes flip; any outcome of an attempt is acceptable.
    while any(t.is_alive() for t in threads) or attempts == 0:
        attempts += 1
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
            async with connect(proxy) as stream:
                async with asyncio.timeout(0.5):
                    await roundtrip(stream, b"t" * 1000)
    for t in threads:
        t.join()
    assert errors == []
    proxy.pass_through()
    assert proxy.mode == "pass_through"
    assert [t.name for t in proxy_threads()] == [f"etcdlock-proxy-{proxy.port}"]
    async with connect(proxy) as stream:
        assert await roundtrip(stream, b"still works") == b"still works"
    await wait_until(lambda: proxy.connections_open == 0, timeout=IO_TIMEOUT, what="connections gone")


def test_construction_and_start_errors() -> None:
    port = free_port()
    with FaultProxy("127.0.0.1:1", port=port) as proxy:
        assert proxy.port == port
        assert proxy.endpoint == f"127.0.0.1:{port}"
        assert proxy.target == "127.0.0.1:1"
        taken = FaultProxy("127.0.0.1:1", port=port)
        with pytest.raises(OSError):
            taken.start()
        taken.close()
        with pytest.raises(ValueError):
            proxy.delay(-1)
        with pytest.raises(ValueError):
            proxy.delay(math.nan)
        with pytest.raises(RuntimeError):
            proxy.start()
    for bad_target in ("nohost", "127.0.0.1:0", "127.0.0.1:x", ":2379"):
        with pytest.raises(ValueError):
            FaultProxy(bad_target)
    with pytest.raises(ValueError):
        FaultProxy("127.0.0.1:1", port=70000)
    with pytest.raises(ValueError):
        FaultProxy("127.0.0.1:1", connect_timeout=0)
    unstarted = FaultProxy("127.0.0.1:1")
    with pytest.raises(RuntimeError):
        _ = unstarted.port
    with pytest.raises(RuntimeError):
        unstarted.blackhole()
    unstarted.close()
    wait_until_sync(lambda: proxy_threads() == [], timeout=IO_TIMEOUT, what="no proxy thread left")


# ---- real etcd and the etcdlock client through the proxy ------------------------------------------


async def test_etcd_blackhole_times_out_then_new_calls_work(etcd_proxy: FaultProxy, ns: str) -> None:
    # A client dialing into a partition is accepted, then hears nothing, so its first call fails.
    # (This must come first: gRPC shares one TCP connection among all channels of a process to the same
    # address, so a later client would reuse the first one's connection instead of dialing.)
    # With grpcio 1.85 the error is ConnectionFailedError, not a timeout: gRPC gives up each handshake
    # that gets no SETTINGS frame (after the client's short minimum connect timeout) and redials,
    # and those UNAVAILABLE answers are what the client reports at the deadline.
    etcd_proxy.blackhole()
    early = Client([etcd_proxy.endpoint], timeout=1)
    try:
        with pytest.raises((ConnectionFailedError, EtcdTimeoutError)):
            await early.connect()
    finally:
        await early.close()
    assert etcd_proxy.connections_accepted >= 1
    assert etcd_proxy.bytes_dropped > 0
    assert etcd_proxy.bytes_forwarded == 0
    etcd_proxy.pass_through()

    async with Client([etcd_proxy.endpoint], timeout=2) as c:
        await c.put(ns + "k", "v")
        etcd_proxy.blackhole()
        # Silence, not a refusal: the call runs into its deadline.
        with pytest.raises(EtcdTimeoutError):
            await c.get(ns + "k", timeout=1)
        # The partition heals: the old connection is reset, and gRPC redials for the next call.
        etcd_proxy.pass_through()
        got = await c.get(ns + "k", timeout=10)
        assert [kv.value for kv in got.kvs] == [b"v"]
        await c.put(ns + "k", "w", timeout=10)
        assert [kv.value for kv in (await c.get(ns + "k")).kvs] == [b"w"]
    await wait_until(lambda: etcd_proxy.connections_open == 0, timeout=IO_TIMEOUT, what="connections gone")


async def test_etcd_reset_fails_calls_with_connection_failed_then_recovers(
    etcd_proxy: FaultProxy, ns: str
) -> None:
    async with Client([etcd_proxy.endpoint], timeout=2) as c:
        await c.put(ns + "k", "v")
        # An in-flight call: its request waits in the proxy's delay queue when the reset comes.
        etcd_proxy.delay(60)
        received = etcd_proxy.bytes_received
        call = asyncio.create_task(c.get(ns + "k", timeout=2))
        try:
            await wait_until(
                lambda: etcd_proxy.bytes_received > received, timeout=IO_TIMEOUT, what="request in the proxy"
            )
            accepted = etcd_proxy.connections_accepted
            etcd_proxy.reset()
            # A refusal, not silence: the client says no endpoint answered (UNAVAILABLE), not a timeout.
            with pytest.raises(ConnectionFailedError):
                await call
        finally:
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await call
        # gRPC redialed while the call waited, and each dial was reset right after accept.
        assert etcd_proxy.connections_accepted > accepted
        with pytest.raises(ConnectionFailedError):
            await c.get(ns + "k", timeout=1)

        etcd_proxy.pass_through()
        got = await c.get(ns + "k", timeout=10)
        assert [kv.value for kv in got.kvs] == [b"v"]


async def test_etcd_reset_moves_an_in_flight_call_to_the_next_endpoint(
    etcd_proxy: FaultProxy, etcd_endpoints: list[str], ns: str
) -> None:
    direct = etcd_endpoints[0]
    async with Client([etcd_proxy.endpoint, direct], timeout=2) as c:
        assert c.current_endpoint == etcd_proxy.endpoint
        await c.put(ns + "k", "v")
        etcd_proxy.delay(60)
        received = etcd_proxy.bytes_received
        # With a 60 s delay and a 10 s deadline, only a failover can make this call succeed.
        call = asyncio.create_task(c.get(ns + "k", timeout=10))
        try:
            await wait_until(
                lambda: etcd_proxy.bytes_received > received, timeout=IO_TIMEOUT, what="request in the proxy"
            )
            etcd_proxy.reset()
            got = await call
        finally:
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await call
        assert [kv.value for kv in got.kvs] == [b"v"]
        assert c.current_endpoint == direct


async def test_etcd_delay_slows_calls_by_the_round_trip(etcd_proxy: FaultProxy, ns: str) -> None:
    async with Client([etcd_proxy.endpoint], timeout=10) as c:
        await c.put(ns + "k", "v")
        d = 0.2
        etcd_proxy.delay(d)
        start = time.monotonic()
        got = await c.get(ns + "k")
        assert time.monotonic() - start >= 2 * d - 0.01
        assert [kv.value for kv in got.kvs] == [b"v"]
        etcd_proxy.pass_through()
        await c.put(ns + "k", "w")


async def test_etcd_client_through_a_proxy_to_nowhere_fails_to_connect(dead_endpoint: str) -> None:
    with FaultProxy(dead_endpoint) as proxy:
        c = Client([proxy.endpoint], timeout=1)
        try:
            with pytest.raises(ConnectionFailedError):
                await c.connect()
        finally:
            await c.close()
        assert proxy.upstream_failures >= 1
        # Every dial gRPC made was reset for want of an upstream (a last one may still be finishing).
        await wait_until(
            lambda: proxy.upstream_failures == proxy.connections_accepted,
            timeout=IO_TIMEOUT,
            what="every dial failed upstream",
        )


def test_delayed_fin_to_a_peer_already_gone_is_not_an_unhandled_error() -> None:
    """Delay mode: the FIN is written when its delay is over; if the peer's socket is no longer connected
    by then (ENOTCONN from shutdown), the flow stops quietly instead of raising in the timer callback."""
    from etcdlock.testing.proxy import _Flow

    class GoneTransport:
        def is_closing(self) -> bool:
            return False

        def can_write_eof(self) -> bool:
            return True

        def write_eof(self) -> None:
            raise OSError(107, "Transport endpoint is not connected")

    class Proxy:
        def loop_time(self) -> float:
            return 10.0

    class Conn:
        closing = False
        tainted = False
        proxy = Proxy()
        checked = 0

        def check_both_eof(self) -> None:
            self.checked += 1

    class Side:
        transport = GoneTransport()

    conn = Conn()
    flow = _Flow(conn)  # type: ignore[arg-type]
    flow.dst = Side()  # type: ignore[assignment]
    flow.queue.append((0.0, None))
    flow.pump()  # raised OSError before the fix
    assert flow.eof_sent and not flow.queue and flow.timer is None
