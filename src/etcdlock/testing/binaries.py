"""Finding the etcd and etcdctl binaries (an environment variable, ``PATH``, or ``/usr/bin``)."""

from __future__ import annotations

import os
import shutil

from etcdlock.testing.errors import EtcdNotInstalledError

__all__ = ["INSTALL_HINT", "find_etcd_binary", "find_etcdctl_binary"]

INSTALL_HINT = "apt-get install etcd-server etcd-client"
"""How to install etcd (server and etcdctl) on Debian/Ubuntu."""

_ENV_ETCD = "ETCDLOCK_ETCD_BINARY"
_ENV_ETCDCTL = "ETCDLOCK_ETCDCTL_BINARY"


def _is_executable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _find_binary(name: str, env_var: str) -> str:
    override = os.environ.get(env_var)
    if override:
        if _is_executable_file(override):
            return override
        raise EtcdNotInstalledError(
            f"{env_var}={override!r} does not point at an executable file. "
            f"Fix or unset {env_var}, or install etcd with: {INSTALL_HINT}"
        )
    found = shutil.which(name)
    if found:
        return found
    fallback = f"/usr/bin/{name}"
    if _is_executable_file(fallback):
        return fallback
    raise EtcdNotInstalledError(
        f"the {name!r} binary was not found ({env_var} is unset, {name!r} is not on PATH and "
        f"{fallback} does not exist). Install etcd with: {INSTALL_HINT} "
        f"(or point {env_var} at an etcd {name} binary)"
    )


def find_etcd_binary() -> str:
    """Path of the etcd server binary.

    ``$ETCDLOCK_ETCD_BINARY`` if set (it must then exist), else ``etcd`` on ``PATH``, else
    ``/usr/bin/etcd``.  Raises :class:`EtcdNotInstalledError` with the install command otherwise.
    """
    return _find_binary("etcd", _ENV_ETCD)


def find_etcdctl_binary() -> str:
    """Path of etcdctl, looked up like :func:`find_etcd_binary` (``$ETCDLOCK_ETCDCTL_BINARY``)."""
    return _find_binary("etcdctl", _ENV_ETCDCTL)
