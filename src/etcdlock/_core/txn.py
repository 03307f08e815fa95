"""Typed builders for transactions: Compare (the If) and Op (the Then / Else)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from etcdlock._core.errors import ConfigError
from etcdlock._core.types import Key, key_range, to_bytes
from etcdlock._wire import rpc_pb2 as pb

Operator = Literal["==", "!=", "<", ">"]
SortOrder = Literal["none", "ascend", "descend"]
SortTarget = Literal["key", "version", "create", "mod", "value"]

_RESULTS = {
    "==": pb.Compare.EQUAL,
    "!=": pb.Compare.NOT_EQUAL,
    "<": pb.Compare.LESS,
    ">": pb.Compare.GREATER,
}
_SORT_ORDERS = {
    "none": pb.RangeRequest.NONE,
    "ascend": pb.RangeRequest.ASCEND,
    "descend": pb.RangeRequest.DESCEND,
}
_SORT_TARGETS = {
    "key": pb.RangeRequest.KEY,
    "version": pb.RangeRequest.VERSION,
    "create": pb.RangeRequest.CREATE,
    "mod": pb.RangeRequest.MOD,
    "value": pb.RangeRequest.VALUE,
}


_Target = pb.Compare.CompareTarget


def _result(op: str) -> pb.Compare.CompareResult:
    try:
        return _RESULTS[op]
    except KeyError:
        raise ConfigError(f"compare operator must be one of ==, !=, <, >; got {op!r}") from None


def _int(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an int, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction (its If). Build with the class methods, e.g.
    ``Compare.create_revision("k", "==", 0)`` (true when "k" does not exist).

    Each compares one field of one key with a value, using ``op``, one of ``"=="``, ``"!="``, ``"<"``,
    ``">"``. A key that does not exist has version, create revision, mod revision and lease 0.
    """

    pb: pb.Compare
    """The wire message. @private"""

    @classmethod
    def version(cls, key: Key, op: Operator, version: int) -> Compare:
        """Compare the key's version (writes since it was created; 0 if it does not exist).

        Args:
            key: The key (str is encoded as UTF-8).
            op: ``"=="``, ``"!="``, ``"<"`` or ``">"``.
            version: The version to compare with.

        Returns:
            The condition, for `txn()`.

        Raises:
            ConfigError: a bad key, operator or version.
        """
        return cls._make(key, op, pb.Compare.VERSION, version=_int(version, "version"))

    @classmethod
    def create_revision(cls, key: Key, op: Operator, revision: int) -> Compare:
        """Compare the revision that created the key (0 if it does not exist).

        Args:
            key: The key (str is encoded as UTF-8).
            op: ``"=="``, ``"!="``, ``"<"`` or ``">"``.
            revision: The revision to compare with.

        Returns:
            The condition, for `txn()`.

        Raises:
            ConfigError: a bad key, operator or revision.
        """
        return cls._make(key, op, pb.Compare.CREATE, create_revision=_int(revision, "create_revision"))

    @classmethod
    def mod_revision(cls, key: Key, op: Operator, revision: int) -> Compare:
        """Compare the revision of the key's last write (0 if it does not exist).

        Args:
            key: The key (str is encoded as UTF-8).
            op: ``"=="``, ``"!="``, ``"<"`` or ``">"``.
            revision: The revision to compare with.

        Returns:
            The condition, for `txn()`.

        Raises:
            ConfigError: a bad key, operator or revision.
        """
        return cls._make(key, op, pb.Compare.MOD, mod_revision=_int(revision, "mod_revision"))

    @classmethod
    def value(cls, key: Key, op: Operator, value: str | bytes) -> Compare:
        """Compare the key's value, byte by byte. Fails (is false) when the key does not exist.

        Args:
            key: The key (str is encoded as UTF-8).
            op: ``"=="``, ``"!="``, ``"<"`` or ``">"``.
            value: The value to compare with (str is encoded as UTF-8).

        Returns:
            The condition, for `txn()`.

        Raises:
            ConfigError: a bad key, operator or value.
        """
        return cls._make(key, op, pb.Compare.VALUE, value=to_bytes(value, "value"))

    @classmethod
    def lease(cls, key: Key, op: Operator, lease_id: int) -> Compare:
        """Compare the ID of the lease the key is attached to (0: none, or the key does not exist).

        Args:
            key: The key (str is encoded as UTF-8).
            op: ``"=="``, ``"!="``, ``"<"`` or ``">"``.
            lease_id: The lease ID to compare with.

        Returns:
            The condition, for `txn()`.

        Raises:
            ConfigError: a bad key, operator or lease ID.
        """
        return cls._make(key, op, pb.Compare.LEASE, lease=_int(lease_id, "lease"))

    @classmethod
    def _make(cls, key: Key, op: Operator, target: _Target, **operand: int | bytes) -> Compare:
        return cls(pb.Compare(key=to_bytes(key), target=target, result=_result(op), **operand))  # type: ignore[arg-type]


def range_request(
    key: Key,
    *,
    prefix: bool = False,
    range_end: Key | None = None,
    limit: int = 0,
    revision: int = 0,
    sort_order: SortOrder = "none",
    sort_target: SortTarget = "key",
    keys_only: bool = False,
    count_only: bool = False,
    serializable: bool = False,
    min_create_revision: int = 0,
    max_create_revision: int = 0,
    min_mod_revision: int = 0,
    max_mod_revision: int = 0,
) -> pb.RangeRequest:
    k, end = key_range(to_bytes(key), prefix, None if range_end is None else to_bytes(range_end, "range_end"))
    if sort_order not in _SORT_ORDERS:
        raise ConfigError(f"sort_order must be one of {sorted(_SORT_ORDERS)}, got {sort_order!r}")
    if sort_target not in _SORT_TARGETS:
        raise ConfigError(f"sort_target must be one of {sorted(_SORT_TARGETS)}, got {sort_target!r}")
    for name, v in (("limit", limit), ("revision", revision)):
        if _int(v, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {v}")
    return pb.RangeRequest(
        key=k,
        range_end=end,
        limit=limit,
        revision=revision,
        sort_order=_SORT_ORDERS[sort_order],
        sort_target=_SORT_TARGETS[sort_target],
        keys_only=keys_only,
        count_only=count_only,
        serializable=serializable,
        min_create_revision=_int(min_create_revision, "min_create_revision"),
        max_create_revision=_int(max_create_revision, "max_create_revision"),
        min_mod_revision=_int(min_mod_revision, "min_mod_revision"),
        max_mod_revision=_int(max_mod_revision, "max_mod_revision"),
    )


def put_request(key: Key, value: str | bytes, *, lease: int = 0, prev_kv: bool = False) -> pb.PutRequest:
    return pb.PutRequest(
        key=to_bytes(key), value=to_bytes(value, "value"), lease=_int(lease, "lease"), prev_kv=prev_kv
    )


def delete_request(
    key: Key, *, prefix: bool = False, range_end: Key | None = None, prev_kv: bool = False
) -> pb.DeleteRangeRequest:
    k, end = key_range(to_bytes(key), prefix, None if range_end is None else to_bytes(range_end, "range_end"))
    return pb.DeleteRangeRequest(key=k, range_end=end, prev_kv=prev_kv)


@dataclass(frozen=True)
class Op:
    """One operation in a transaction branch (its Then or Else). Build with ``Op.get``, ``Op.put``,
    ``Op.delete`` or ``Op.txn``; they take the same arguments as the client's calls of the same name."""

    pb: pb.RequestOp
    """The wire message. @private"""

    @classmethod
    def get(cls, key: Key, **options: object) -> Op:
        """Read a key, a prefix or a range, like `get()`; its result is a `GetResult`.

        Args:
            key: The key, or the prefix with ``prefix=True`` (str is encoded as UTF-8).
            **options: The options of `get()`: ``prefix``, ``range_end``, ``limit``, ``revision``,
                ``sort_order``, ``sort_target``, ``keys_only``, ``count_only``, ``serializable``,
                ``min_create_revision``, ``max_create_revision``, ``min_mod_revision``,
                ``max_mod_revision``.

        Returns:
            The operation, for `txn()`.

        Raises:
            ConfigError: a bad key or option value.
            TypeError: an option that `get()` does not have.
        """
        return cls(pb.RequestOp(request_range=range_request(key, **options)))  # type: ignore[arg-type]

    @classmethod
    def put(cls, key: Key, value: str | bytes, *, lease: int = 0, prev_kv: bool = False) -> Op:
        """Write a key, like `put()`; its result is a `PutResult`.

        Args:
            key: The key (str is encoded as UTF-8).
            value: The value (str is encoded as UTF-8).
            lease: Attach the key to this lease (0: none). If the lease does not exist, the whole
                transaction fails with `LeaseNotFoundError`.
            prev_kv: Return the key as it was before, in `PutResult.prev_kv`.

        Returns:
            The operation, for `txn()`.

        Raises:
            ConfigError: a bad key, value or lease.
        """
        return cls(pb.RequestOp(request_put=put_request(key, value, lease=lease, prev_kv=prev_kv)))

    @classmethod
    def delete(
        cls, key: Key, *, prefix: bool = False, range_end: Key | None = None, prev_kv: bool = False
    ) -> Op:
        """Delete a key, a prefix or a range, like `delete()`; its result is a `DeleteResult`.

        Args:
            key: The key, or the prefix with ``prefix=True`` (str is encoded as UTF-8).
            prefix: Delete every key starting with ``key``.
            range_end: Delete the keys from ``key`` up to (not including) this one.
            prev_kv: Return the deleted keys, in `DeleteResult.prev_kvs`.

        Returns:
            The operation, for `txn()`.

        Raises:
            ConfigError: a bad key, or both ``prefix`` and ``range_end``.
        """
        return cls(
            pb.RequestOp(
                request_delete_range=delete_request(key, prefix=prefix, range_end=range_end, prev_kv=prev_kv)
            )
        )

    @classmethod
    def txn(cls, compare: list[Compare], success: list[Op], failure: list[Op] | None = None) -> Op:
        """A nested transaction, like `txn()`; its result is a `TxnResult`.

        Args:
            compare: The conditions, all of which must hold for ``success`` to run.
            success: The operations run when every condition holds.
            failure: The operations run otherwise (none by default).

        Returns:
            The operation, for `txn()`.

        Raises:
            ConfigError: an entry that is not a `Compare` or an `Op`.
        """
        return cls(pb.RequestOp(request_txn=txn_request(compare, success, failure)))


def txn_request(compare: list[Compare], success: list[Op], failure: list[Op] | None = None) -> pb.TxnRequest:
    for c in compare:
        if not isinstance(c, Compare):
            raise ConfigError(f"txn compare entries must be Compare, not {type(c).__name__}")
    for o in [*success, *(failure or [])]:
        if not isinstance(o, Op):
            raise ConfigError(f"txn operations must be Op, not {type(o).__name__}")
    return pb.TxnRequest(
        compare=[c.pb for c in compare],
        success=[o.pb for o in success],
        failure=[o.pb for o in (failure or [])],
    )
