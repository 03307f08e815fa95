"""Endpoints, channels, failover, auth and TLS: everything between a request and the wire.

One gRPC channel per endpoint, created lazily and kept until the client closes: the channel map is keyed
by the endpoint string, a stable identity, so it can never grow past the endpoint list. Requests go to the
current endpoint; an UNAVAILABLE answer moves the client to the next one.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio

from etcdlock._core import fork
from etcdlock._core.errors import (
    AuthError,
    ClientClosedError,
    CompactedError,
    ConfigError,
    ConnectionFailedError,
    EtcdError,
    EtcdTimeoutError,
    LeaseNotFoundError,
    PermissionDeniedError,
    ServerError,
)
from etcdlock._core.tasks import backoff
from etcdlock._wire import methods
from etcdlock._wire.methods import Method

Req = TypeVar("Req")
Resp = TypeVar("Resp")

# Server-side error texts (etcd's rpctypes) that decide how we react.
_NO_LEADER = "etcdserver: no leader"
_INVALID_TOKEN = "etcdserver: invalid auth token"
_USER_EMPTY = "etcdserver: user name is empty"
_AUTH_FAILED = "etcdserver: authentication failed"
_AUTH_NOT_ENABLED = "etcdserver: authentication is not enabled"
_LEASE_NOT_FOUND = "requested lease not found"
_COMPACTED = "required revision has been compacted"
# etcd's admission control: its proposal backlog is full. Said before proposing, so nothing was applied.
_TOO_MANY_REQUESTS = "etcdserver: too many requests"

# RPCs one client has in flight at most: a burst of thousands of calls (10,000 locks acquired at once) waits
# its turn in the client instead of piling onto etcd's proposal queue until it refuses them.
MAX_IN_FLIGHT = 256

# gRPC's texts for a failed TLS set-up (they arrive inside an UNAVAILABLE error), each with what it most
# likely means. The first match wins.
# What gRPC says when a TLS server closes a plain-text connection (it sends no error a client can read).
_PLAIN_TEXT_DROPPED = "Socket closed"

_TLS_FAILURES: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("Hostname Verification Check failed",),
        "TLS handshake failed: the server's certificate is not for this host name "
        "(wrong server name? see TLSConfig.server_name)",
    ),
    (
        ("CERTIFICATE_VERIFY_FAILED", "Tls handshake failed", "SSL_ERROR_SSL"),
        "TLS handshake failed: the server's certificate could not be verified (wrong CA?)",
    ),
    (
        ("TSI_DATA_CORRUPTED",),
        "TLS failed after the handshake: the server refused the connection "
        "(no client certificate, or one it does not trust?)",
    ),
    (
        ("Handshake read failed",),
        "TLS handshake failed: the server closed the connection (does it serve TLS at all?)",
    ),
)


def _tls_failure(details: str) -> str | None:
    """What a gRPC error's details say went wrong in TLS, or None if they are not about TLS."""
    for signs, meaning in _TLS_FAILURES:
        if any(sign in details for sign in signs):
            return meaning
    return None


def _explained(details: str) -> str:
    meaning = _tls_failure(details)
    return f"{meaning}: {details}" if meaning else details


# Codes on which another endpoint (or the same one, a moment later) may succeed.
_RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # Reconnect quickly when a member comes back; gRPC's defaults back off up to two minutes, and even 2 s
    # let a restarted member's clients keep failing long enough for a short lease to lapse.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    # Detect a silent peer (partition, paused member) on open streams. etcd refuses pings more frequent
    # than 5 s (its keepalive enforcement policy) and pings without active calls.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # Don't let gRPC retry on its own; failover is ours, within the caller's deadline.
    ("grpc.enable_retries", 0),
]


@dataclass(frozen=True)
class TLSConfig:
    """TLS material, as file paths. ca_file alone gives server verification; add cert+key for mTLS.

    Pass it as ``Client(..., tls=TLSConfig(...))``. The files are read when the client is made, and a
    file that cannot be read, or a certificate without its key, is a `ConfigError` then. A TLS handshake
    that fails later is a `ConnectionFailedError` whose message says what most likely went wrong.
    """

    ca_file: str | None = None
    """PEM file of the CA(s) that signed the server's certificate (None: the system's roots)."""
    cert_file: str | None = None
    """PEM file of the client's certificate, for servers that require one (with ``key_file``)."""
    key_file: str | None = None
    """PEM file of the client certificate's private key (with ``cert_file``)."""
    server_name: str | None = None
    """The host name to verify the server's certificate against, when it differs from the endpoint's."""

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC credentials made of the files. @private"""
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("TLS client authentication needs both cert_file and key_file")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "TLS CA file"),
            private_key=_read(self.key_file, "TLS key file"),
            certificate_chain=_read(self.cert_file, "TLS certificate file"),
        )


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path!r}: {e.strerror}") from None


def parse_endpoint(endpoint: str) -> tuple[str, bool]:
    """'host:port', 'http://host:port' or 'https://host:port' -> ('host:port', scheme_is_https)."""
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise ConfigError(f"endpoint must be a non-empty 'host:port' string, got {endpoint!r}")
    text = endpoint.strip()
    https = False
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            https = scheme == "https://"
            text = text[len(scheme) :]
    text = text.rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"endpoint {endpoint!r} is not of the form host:port (port 1-65535)")
    bracketed = host.startswith("[") and host.endswith("]")
    if (":" in host or "[" in host or "]" in host) and not (bracketed and ":" in host):
        # "::1:2379" would reach gRPC as a host it cannot resolve, and fail only at the first call.
        raise ConfigError(f"endpoint {endpoint!r}: an IPv6 address goes in brackets, e.g. [::1]:2379")
    if any(c.isspace() or c in "/,;" for c in host):
        raise ConfigError(f"endpoint {endpoint!r} is not of the form host:port")
    return text, https


def translate(error: grpc.aio.AioRpcError, where: str) -> EtcdError:
    """Turn a gRPC error into the specific etcdlock error, naming where it happened."""
    code = error.code()
    details = error.details() or ""
    msg = f"{_explained(details) if code in _RETRY_CODES else details} (code {code.name}, {where})"
    if _LEASE_NOT_FOUND in details:
        return LeaseNotFoundError(msg, lease_id=0)
    if _COMPACTED in details:
        return CompactedError(msg, compact_revision=0)
    if _AUTH_FAILED in details or _AUTH_NOT_ENABLED in details or _USER_EMPTY in details:
        hint = ""
        if _USER_EMPTY in details:
            hint = "; the server has auth enabled: pass username= and password="
        elif _AUTH_NOT_ENABLED in details:
            hint = (
                "; the server does not have auth enabled, so the username/password given were not used: "
                "drop them, or enable auth on the server"
            )
        return AuthError(msg + hint)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthError(msg)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(msg)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return EtcdTimeoutError(msg)
    if code in _RETRY_CODES:
        return ConnectionFailedError(msg)
    return ServerError(msg, code=code.name)


class Connection:
    """Owns the channels to the endpoints, the auth token, and the choice of current endpoint."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        tls: TLSConfig | None = None,
        username: str | None = None,
        password: str | None = None,
        default_timeout: float = 5.0,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ConfigError("at least one endpoint is needed, e.g. ['127.0.0.1:2379']")
        parsed = [parse_endpoint(e) for e in endpoints]
        self.endpoints: tuple[str, ...] = tuple(dict.fromkeys(p[0] for p in parsed))
        if tls is None and any(p[1] for p in parsed):
            tls = TLSConfig()  # https:// with no files: verify against the system roots
        if (username is None) != (password is None):
            raise ConfigError("username and password go together: give both or neither")
        if username is not None and not username:
            raise ConfigError("username must not be empty")
        check_timeout(default_timeout, "default timeout")
        self._credentials = tls.credentials() if tls is not None else None
        self._options = list(_CHANNEL_OPTIONS)
        if tls is not None and tls.server_name:
            self._options.append(("grpc.ssl_target_name_override", tls.server_name))
        self._username = username
        self._password = password
        self.default_timeout = default_timeout
        self._current = 0
        self._failure_listeners: list[Callable[[str], None]] = []
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._callables: dict[tuple[str, str], Any] = {}
        self._token: str | None = None
        self._token_lock = asyncio.Lock()
        self._closed = False
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.throttled = 0  # calls etcd refused with "too many requests", retried
        self.born = fork.generation()  # a forked child must not touch the channels (see fork.py)

    def _explained(self, details: str) -> str:
        """details, with what they most likely mean (TLS failures; a TLS server dropping plain text)."""
        if self._credentials is None and _PLAIN_TEXT_DROPPED in details:
            return (
                "the server closed the plain-text connection (if etcd serves TLS, connect with "
                f"tls=TLSConfig(...) or an https:// endpoint): {details}"
            )
        return _explained(details)

    # ---- endpoint choice ----

    @property
    def current_endpoint(self) -> str:
        return self.endpoints[self._current]

    @property
    def closed(self) -> bool:
        return self._closed

    def channel_count(self) -> int:
        return len(self._channels)

    def report_failure(self, endpoint: str) -> None:
        """An endpoint failed us: move on, unless someone already did. Streams still open there are told,
        so they move too: a member that stopped answering one call is not trusted with the others."""
        if self.endpoints[self._current] == endpoint and len(self.endpoints) > 1:
            self._current = (self._current + 1) % len(self.endpoints)
            for listener in list(self._failure_listeners):
                listener(endpoint)

    def add_failure_listener(self, fn: Callable[[str], None]) -> None:
        """fn(endpoint) runs when the client moves away from a failed endpoint."""
        self._failure_listeners.append(fn)

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        if self._closed:
            raise ClientClosedError("the etcdlock client is closed")
        fork.check_same_process(self.born)
        ch = self._channels.get(endpoint)
        if ch is None:
            fork.check_can_connect()
            fork.channel_opened()
            if self._credentials is not None:
                ch = grpc.aio.secure_channel(endpoint, self._credentials, options=self._options)
            else:
                ch = grpc.aio.insecure_channel(endpoint, options=self._options)
            self._channels[endpoint] = ch
        return ch

    def _unary_callable(self, endpoint: str, method: Method[Any, Any]) -> Any:
        fork.check_same_process(self.born)
        key = (endpoint, method.path)
        fn = self._callables.get(key)
        if fn is None:
            fn = self._channel(endpoint).unary_unary(
                method.path,
                request_serializer=method.serializer(),
                response_deserializer=method.deserializer(),
            )
            self._callables[key] = fn
        return fn

    # ---- auth ----

    async def _metadata(self, endpoint: str, timeout: float, leader: bool) -> list[tuple[str, str]]:
        md: list[tuple[str, str]] = []
        if leader:
            # etcd then fails the stream with "no leader" instead of leaving it hanging on a cut-off member.
            md.append(("hasleader", "true"))
        if self._username is not None:
            md.append(("token", await self._get_token(endpoint, timeout)))
        return md

    async def _get_token(self, endpoint: str, timeout: float) -> str:
        async with self._token_lock:
            if self._token is None:
                fn = self._unary_callable(endpoint, methods.AUTHENTICATE)
                request = methods.AUTHENTICATE.request(name=self._username, password=self._password)
                try:
                    reply = await fn(request, timeout=timeout)
                except grpc.aio.AioRpcError as e:
                    err = translate(e, f"authenticating as {self._username!r} at {endpoint}")
                    if isinstance(err, ServerError | ConnectionFailedError | EtcdTimeoutError):
                        raise err from None
                    raise AuthError(str(err)) from None
                self._token = str(reply.token)
            return self._token

    def invalidate_token(self) -> None:
        self._token = None

    # ---- calls ----

    async def unary(
        self,
        method: Method[Req, Resp],
        request: Req,
        timeout: float | None = None,
        *,
        on_send: Callable[[float], None] | None = None,
    ) -> Resp:
        """One request/response RPC with failover across endpoints, bounded by timeout (seconds).

        on_send(loop time) runs right before each attempt goes out (after its wait for a place in flight)."""
        timeout = self.default_timeout if timeout is None else check_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        failures = 0
        attempts = 0
        throttled = 0
        token_retried = False
        last: str = "no attempt made"
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                if failures:
                    raise ConnectionFailedError(
                        f"{method.name}: no etcd endpoint answered within {timeout:g}s "
                        f"(endpoints {', '.join(self.endpoints)}; last error: {last})",
                        endpoints=self.endpoints,
                    )
                raise EtcdTimeoutError(
                    f"{method.name} timed out after {timeout:g}s at {self.current_endpoint}"
                )
            endpoint = self.current_endpoint
            attempt = remaining
            if method.idempotent and attempts < len(self.endpoints) - 1:
                # A share of what is left for each endpoint not tried yet: a silent one cannot eat it all.
                attempt = remaining / (len(self.endpoints) - attempts)
            attempts += 1
            try:
                # No auth: nothing to await, and no per-call metadata to build.
                md = await self._metadata(endpoint, attempt, leader=False) if self._username else None
                fn = self._unary_callable(endpoint, method)
                if not await self._slot(attempt):
                    continue  # none within this attempt's share: the loop head decides what is left
                try:
                    if on_send is not None:
                        on_send(loop.time())
                    return await fn(request, timeout=attempt, metadata=md)  # type: ignore[no-any-return]
                finally:
                    self._slots.release()
            except grpc.aio.AioRpcError as e:
                details = e.details() or ""
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_MANY_REQUESTS in details:
                    # Not applied: safe to send again, after a pause, within the caller's deadline.
                    self.throttled += 1
                    throttled += 1
                    last = f"{details} at {endpoint}"
                    pause = backoff(throttled) * random.uniform(0.5, 1.0)
                    if pause >= deadline - loop.time():
                        raise ServerError(
                            f"{method.name}: etcd at {endpoint} kept refusing with 'too many requests' "
                            f"for {timeout:g}s (its proposal backlog is full)",
                            code="RESOURCE_EXHAUSTED",
                        ) from None
                    await asyncio.sleep(pause)
                    continue
                if e.code() in _RETRY_CODES:
                    last = f"{self._explained(details)} at {endpoint}"
                    failures += 1
                    self.report_failure(endpoint)
                    if failures % len(self.endpoints) == 0:
                        # Every endpoint failed once more: back off before the next round.
                        pause = backoff(failures // len(self.endpoints))
                        await asyncio.sleep(min(pause * random.uniform(0.5, 1.0), max(0.0, remaining)))
                    continue
                if _INVALID_TOKEN in details and not token_retried:
                    token_retried = True
                    self.invalidate_token()
                    continue
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    if attempt < remaining:  # only this endpoint's share ran out: try the next one
                        last = f"no answer within {attempt:.2g}s at {endpoint}"
                        failures += 1
                        self.report_failure(endpoint)
                        continue
                    if failures:
                        continue  # loop head turns this into ConnectionFailedError with the real cause
                    # No answer in time: maybe slow, maybe cut off (no error comes from a black hole).
                    # The call is not retried (it may have been applied), but the next one goes elsewhere.
                    self.report_failure(endpoint)
                raise translate(e, f"{method.name} at {endpoint}") from None
            except (ConnectionFailedError, EtcdTimeoutError) as e:
                # Raised while authenticating: treat like the RPC itself failing.
                last = str(e)
                failures += 1
                self.report_failure(endpoint)
                if failures % len(self.endpoints) == 0:
                    await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))

    async def _slot(self, timeout: float) -> bool:
        """One of the MAX_IN_FLIGHT places for an RPC; False if none came free within timeout."""
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns without suspending
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            return False
        return True

    async def unary_at(self, endpoint: str, method: Method[Req, Resp], request: Req, timeout: float) -> Resp:
        """One attempt of a request/response RPC at this endpoint only (no failover): for questions about
        one member, such as whether it can still reach a quorum."""
        try:
            md = await self._metadata(endpoint, timeout, leader=False) if self._username else None
            fn = self._unary_callable(endpoint, method)
            return await fn(request, timeout=timeout, metadata=md)  # type: ignore[no-any-return]
        except grpc.aio.AioRpcError as e:
            raise translate(e, f"{method.name} at {endpoint}") from None

    async def open_stream(self, method: Method[Any, Any], *, leader: bool = True) -> tuple[str, Any]:
        """Open a bidirectional stream on the current endpoint; returns (endpoint, call).

        The caller owns the call: it runs exactly one reader task on it and cancels it when done.
        """
        endpoint = self.current_endpoint
        md = await self._metadata(endpoint, self.default_timeout, leader=leader)
        multi = self._channel(endpoint).stream_stream(
            method.path,
            request_serializer=method.serializer(),
            response_deserializer=method.deserializer(),
        )
        return endpoint, multi(metadata=md)

    async def close(self) -> None:
        """Close every channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        channels = list(self._channels.values())
        self._channels.clear()
        self._callables.clear()
        if fork.forked_since(self.born):
            return  # a forked child: closing the parent's channels here would hang in gRPC
        for ch in channels:
            await ch.close()


def check_timeout(timeout: float, what: str = "timeout") -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigError(f"{what} must be a number of seconds, not {type(timeout).__name__}")
    if not timeout > 0 or timeout != timeout or timeout == float("inf"):
        raise ConfigError(f"{what} must be a positive, finite number of seconds, got {timeout!r}")
    return float(timeout)
