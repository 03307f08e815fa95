"""Typed errors. Every message says what failed and where (endpoint, key, lease) so a log line is enough."""

from __future__ import annotations


class EtcdError(Exception):
    """Base of every error raised by etcdlock.

    Catch it to handle any failure of the library; the subclasses say what kind it was.
    """


class ConfigError(EtcdError, ValueError):
    """Bad input given to the library (bad endpoint, TTL, name, timeout ...); nothing was sent.

    Also a `ValueError`. Raised before any request goes out, so nothing was created on the server and
    nothing is left to clean up.
    """


class TTLBelowMinimumError(ConfigError):
    """The lease TTL asked for is below the server's minimum lease TTL.

    etcd silently raises such a TTL to its minimum (1.5 x its election timeout, rounded up to whole
    seconds), so a lease would outlive what the caller asked for. Unlike other ConfigErrors this is only
    found out by asking the server: the lease it granted has been revoked again before this is raised.

    Args:
        message: What happened, for the log.
        ttl: The TTL asked for, in seconds.
        minimum: The TTL etcd granted instead (its minimum), in seconds.
    """

    def __init__(self, message: str, *, ttl: int, minimum: int) -> None:
        super().__init__(message)
        self.ttl = ttl
        """The TTL asked for, in seconds."""
        self.minimum = minimum
        """The server's minimum lease TTL, in seconds: ask for at least this much."""


class ClientClosedError(EtcdError):
    """The client was closed; no further calls are possible.

    Also what a watcher or a pending call ends with when the client is closed under it.
    """


class ConnectionFailedError(EtcdError, ConnectionError):
    """No endpoint could serve the request.

    Also a `ConnectionError`. Raised when every endpoint was unavailable (refused, unreachable, TLS
    failure, ...) or did not answer within its share of the call's timeout; the message names the last
    cause.

    Args:
        message: What happened, for the log.
        endpoints: The endpoints that were tried.
    """

    def __init__(self, message: str, *, endpoints: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.endpoints = endpoints
        """The endpoints that were tried (empty when not known)."""


class EtcdTimeoutError(EtcdError, TimeoutError):
    """A call did not finish within its timeout.

    Also a `TimeoutError`. A write that timed out may or may not have been applied.
    """


class AuthError(EtcdError):
    """Authentication failed (wrong user or password, auth not enabled, token rejected)."""


class PermissionDeniedError(EtcdError):
    """The authenticated user may not do this (etcd's role-based access control refused it)."""


class CompactedError(EtcdError):
    """The requested revision was compacted away.

    Raised by a read at an old revision and by a watch (or its resume) from one; start again from a
    current revision.

    Args:
        message: What happened, for the log.
        compact_revision: The oldest revision still available (0 when etcd did not say).
    """

    def __init__(self, message: str, *, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision
        """The oldest revision still available, 0 when etcd did not say."""


class LeaseNotFoundError(EtcdError):
    """The lease does not exist (expired or revoked).

    Args:
        message: What happened, for the log.
        lease_id: The lease's ID (0 when not known).
    """

    def __init__(self, message: str, *, lease_id: int) -> None:
        super().__init__(message)
        self.lease_id = lease_id
        """The lease's ID, 0 when not known (etcd's error does not name it)."""


class WatchError(EtcdError):
    """A watch could not be created or was ended by the server or by the client."""


class WatchOverflowError(WatchError):
    """The consumer fell too far behind: the watcher's bounded buffer filled up and the watcher was ended.

    Other watchers on the same stream are not affected. Read faster, raise the watcher's `max_buffer`,
    or watch again from the watcher's next revision.
    """


class ServerError(EtcdError):
    """etcd answered with an error that has no more specific type here.

    Args:
        message: What happened, for the log (etcd's own text included).
        code: The gRPC status code's name (e.g. ``"FAILED_PRECONDITION"``), or what failed.
    """

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code
        """The gRPC status code's name, e.g. ``"FAILED_PRECONDITION"`` or ``"RESOURCE_EXHAUSTED"``."""


class ForkError(EtcdError):
    """A client was used in a process forked from the one that made it, or made in a child forked while
    its parent had a client talking to etcd. gRPC's event engine does not survive fork(): such a call
    would hang. Make clients after the fork in processes whose parent had none open, or start workers
    with the "spawn" method (see the README's "Processes and fork")."""
