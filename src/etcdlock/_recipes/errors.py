"""Errors of the lock recipes."""

from __future__ import annotations

from etcdlock._core.errors import ConfigError, EtcdError


class LockError(EtcdError):
    """Base of the lock errors."""


class LockTimeout(LockError, TimeoutError):
    """The lock was not acquired within the timeout. The body did not run; nothing was left behind."""


class LockLost(LockError):
    """The lock was lost: its key was deleted, its lease expired or was revoked, or its keepalive missed
    the local deadline. Another holder may already have it."""


class AlreadyHeldError(LockError, ConfigError):
    """This session already holds (or is acquiring) this lock name; locks are not reentrant."""


class NotAcquiredError(LockError, RuntimeError):
    """The Lock object holds nothing right now (never acquired, or released): there is no key, token or
    lease to report. Not a loss: a lost lock keeps its key and token until it is released."""
