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
    """One condition of a transaction. Build with the class methods, e.g.
    ``Compare.create_revision("k", "==", 0)``."""

    pb: pb.Compare

    @classmethod
    def version(cls, key: Key, op: Operator, version: int) -> Compare:
        return cls._make(key, op, pb.Compare.VERSION, version=_int(version, "version"))

    @classmethod
    def create_revision(cls, key: Key, op: Operator, revision: int) -> Compare:
        return cls._make(key, op, pb.Compare.CREATE, create_revision=_int(revision, "create_revision"))

    @classmethod
    def mod_revision(cls, key: Key, op: Operator, revision: int) -> Compare:
        return cls._make(key, op, pb.Compare.MOD, mod_revision=_int(revision, "mod_revision"))

    @classmethod
    def value(cls, key: Key, op: Operator, value: str | bytes) -> Compare:
        return cls._make(key, op, pb.Compare.VALUE, value=to_bytes(value, "value"))

    @classmethod
    def lease(cls, key: Key, op: Operator, lease_id: int) -> Compare:
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
    """One operation in a transaction branch. Build with ``Op.get / Op.put / Op.delete / Op.txn``."""

    pb: pb.RequestOp

    @classmethod
    def get(cls, key: Key, **options: object) -> Op:
        return cls(pb.RequestOp(request_range=range_request(key, **options)))  # type: ignore[arg-type]

    @classmethod
    def put(cls, key: Key, value: str | bytes, *, lease: int = 0, prev_kv: bool = False) -> Op:
        return cls(pb.RequestOp(request_put=put_request(key, value, lease=lease, prev_kv=prev_kv)))

    @classmethod
    def delete(
        cls, key: Key, *, prefix: bool = False, range_end: Key | None = None, prev_kv: bool = False
    ) -> Op:
        return cls(
            pb.RequestOp(
                request_delete_range=delete_request(key, prefix=prefix, range_end=range_end, prev_kv=prev_kv)
            )
        )

    @classmethod
    def txn(cls, compare: list[Compare], success: list[Op], failure: list[Op] | None = None) -> Op:
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
