"""Errors of the lock recipes."""

from __future__ import annotations

from etcdlock._core.errors import ConfigError, EtcdError


class LockError(EtcdError):
    """Base of the lock errors."""


class LockTimeout(LockError, TimeoutError):
    """The lock was not acquired within the timeout. The body did not run; nothing was left behind.

    Also a `TimeoutError`. A waiter's key that was queued is deleted again (shielded from cancellation,
    with a deadline of its own).
    """


class LockLost(LockError):
    """The lock was lost: its key was deleted, its lease expired or was revoked, or its keepalive missed
    the local deadline. Another holder may already have it.

    Raised by acquiring when the lease is lost while waiting, by `ensure_held()` and `txn()` of a held
    lock, and out of the lock's block when it was entered with ``cancel_on_loss=True``.
    """


class AlreadyHeldError(LockError, ConfigError):
    """This session already holds (or is acquiring) this lock name; locks are not reentrant.

    Also a `ConfigError`: the second acquire was refused before anything was sent, and the lock already
    held is left as it was.
    """


class NotAcquiredError(LockError, RuntimeError):
    """The Lock object holds nothing right now (never acquired, or released): there is no key, token or
    lease to report. Not a loss: a lost lock keeps its key and token until it is released."""


class LimitMismatchError(LockError):
    """A semaphore's holders or waiters use another limit than this one: every user of a semaphore name
    must agree on its limit. Raised by the acquire that meets such a key; its own key was taken back."""
