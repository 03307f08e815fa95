"""The mutex: Go's concurrency.Mutex protocol, so Go services and `etcdctl lock` exclude us on one name.

The wire contract we share with Go: my key is NAME/<lowercase hex of my lease id>, empty value, on the
lease; the lock is mine when no lock key under NAME/ has a lower create_revision (FIFO by create
revision). Only direct children NAME/<hex> count as lock keys, so lock "a" is not held up by lock "a/b".
Everything else (the acquire Txn, event-driven waiting, loss, guarded release) is the shared queue in
contender.py.
"""

from __future__ import annotations

import functools
import re

from etcdlock._core.errors import ConfigError
from etcdlock._core.text import quoted
from etcdlock._recipes.contender import QueueSpec

_LOCK_KEY_SUFFIX = re.compile(rb"[0-9a-f]+")
# The longest name accepted (bytes, UTF-8). A page of a queue's keys (17 of them) must fit in one gRPC
# reply (2 MiB by default), and the acquire Txn (the name five times) in one etcd request (1.5 MiB).
MAX_NAME_BYTES = 64 * 1024


def check_name(name: object, kind: str = "lock") -> str:
    if not isinstance(name, str):
        raise ConfigError(f"{kind} name must be a str, not {type(name).__name__}")
    if not name or not name.strip():
        raise ConfigError(f"{kind} name must not be empty")
    if name.endswith("/"):
        raise ConfigError(f"{kind} name {quoted(name)} must not end with '/': its keys are NAME/<lease hex>")
    if "\x00" in name:
        raise ConfigError(f"{kind} name {quoted(name)} must not contain NUL")
    size = len(name.encode(errors="surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise ConfigError(
            f"{kind} name {quoted(name)} is {size:,} bytes; names can be up to {MAX_NAME_BYTES:,} bytes "
            "(UTF-8): a lock's requests and replies carry its name many times, and etcd refuses requests "
            "over 1.5 MiB by default (gRPC replies over 2 MiB)"
        )
    return name


def is_lock_key(prefix: bytes, key: bytes) -> bool:
    """Is `key` (under `prefix` = NAME/) a queue key of NAME: a direct child NAME/<hex>? (Keys of names
    nested under NAME, NAME/sub/..., are not.)"""
    return key.startswith(prefix) and _LOCK_KEY_SUFFIX.fullmatch(key[len(prefix) :]) is not None


def queue_spec(kind: str, name: str, value: bytes = b"") -> QueueSpec:
    """The NAME/<hex> queue where the lowest key holds: Go's Mutex, and (with a value) its Election."""
    prefix = (name + "/").encode()
    return QueueSpec(
        kind=kind,
        name=name,
        slot=name,
        blockers=prefix,
        is_blocker=functools.partial(is_lock_key, prefix),
        value=value,
        clears_queue=True,
        reusable_request=not value,
    )


__all__ = ["check_name", "is_lock_key", "queue_spec"]
