"""Typed errors. Every message says what failed and where (endpoint, key, lease) so a log line is enough."""

from __future__ import annotations


class EtcdError(Exception):
    """Base of every error raised by etcdlock."""


class ConfigError(EtcdError, ValueError):
    """Bad input given to the library (bad endpoint, TTL, name, timeout ...); nothing was sent."""


class TTLBelowMinimumError(ConfigError):
    """The lease TTL asked for is below the server's minimum lease TTL.

    etcd silently raises such a TTL to its minimum (1.5 x its election timeout, rounded up to whole
    seconds), so a lease would outlive what the caller asked for. Unlike other ConfigErrors this is only
    found out by asking the server: the lease it granted has been revoked again before this is raised.
    """

    def __init__(self, message: str, *, ttl: int, minimum: int) -> None:
        super().__init__(message)
        self.ttl = ttl
        self.minimum = minimum


class ClientClosedError(EtcdError):
    """The client was closed; no further calls are possible."""


class ConnectionFailedError(EtcdError, ConnectionError):
    """No endpoint could serve the request."""

    def __init__(self, message: str, *, endpoints: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.endpoints = endpoints


class EtcdTimeoutError(EtcdError, TimeoutError):
    """A call did not finish within its timeout."""


class AuthError(EtcdError):
    """Authentication failed (wrong user or password, auth not enabled, token rejected)."""


class PermissionDeniedError(EtcdError):
    """The authenticated user may not do this."""


class CompactedError(EtcdError):
    """The requested revision was compacted away."""

    def __init__(self, message: str, *, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class LeaseNotFoundError(EtcdError):
    """The lease does not exist (expired or revoked)."""

    def __init__(self, message: str, *, lease_id: int) -> None:
        super().__init__(message)
        self.lease_id = lease_id


class WatchError(EtcdError):
    """A watch could not be created or was ended by the server or by the client."""


class WatchOverflowError(WatchError):
    """The consumer fell too far behind: the watcher's bounded buffer filled up and the watcher was ended."""


class ServerError(EtcdError):
    """etcd answered with an error that has no more specific type here."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code
