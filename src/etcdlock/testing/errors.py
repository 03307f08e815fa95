"""The errors of the etcd test launcher (not of etcd's API): etcd missing, exited, or too slow."""

from __future__ import annotations

__all__ = ["EtcdNotInstalledError", "EtcdProcessError", "EtcdStartError", "EtcdWaitTimeout"]


class EtcdNotInstalledError(RuntimeError):
    """No etcd binary could be found.  The message says how to install it."""


class EtcdProcessError(RuntimeError):
    """Base class for failures of the test launcher (not of etcd's API)."""


class EtcdStartError(EtcdProcessError):
    """An etcd process exited while we were waiting for it to become ready."""


class EtcdWaitTimeout(EtcdProcessError):
    """A condition on etcd (health, leader, ...) was not met before its deadline."""
