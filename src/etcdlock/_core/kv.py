"""Key-value calls: get, put, delete, txn, compact."""

from __future__ import annotations

from typing import TypedDict, Unpack

from etcdlock._core.connection import Connection
from etcdlock._core.txn import (
    Compare,
    Op,
    SortOrder,
    SortTarget,
    delete_request,
    put_request,
    range_request,
    txn_request,
)
from etcdlock._core.types import DeleteResult, GetResult, Header, Key, KeyValue, PutResult, TxnResult
from etcdlock._wire import methods
from etcdlock._wire import rpc_pb2 as pb


class RangeOptions(TypedDict, total=False):
    prefix: bool
    range_end: Key | None
    limit: int
    revision: int
    sort_order: SortOrder
    sort_target: SortTarget
    keys_only: bool
    count_only: bool
    serializable: bool
    min_create_revision: int
    max_create_revision: int
    min_mod_revision: int
    max_mod_revision: int


def get_result(r: pb.RangeResponse) -> GetResult:
    return GetResult(Header.from_pb(r.header), [KeyValue.from_pb(kv) for kv in r.kvs], r.more, r.count)


def put_result(r: pb.PutResponse) -> PutResult:
    return PutResult(Header.from_pb(r.header), KeyValue.from_pb(r.prev_kv) if r.HasField("prev_kv") else None)


def delete_result(r: pb.DeleteRangeResponse) -> DeleteResult:
    return DeleteResult(Header.from_pb(r.header), r.deleted, [KeyValue.from_pb(kv) for kv in r.prev_kvs])


def txn_result(r: pb.TxnResponse) -> TxnResult:
    responses: list[GetResult | PutResult | DeleteResult | TxnResult] = []
    for op in r.responses:
        which = op.WhichOneof("response")
        if which == "response_range":
            responses.append(get_result(op.response_range))
        elif which == "response_put":
            responses.append(put_result(op.response_put))
        elif which == "response_delete_range":
            responses.append(delete_result(op.response_delete_range))
        elif which == "response_txn":
            responses.append(txn_result(op.response_txn))
    return TxnResult(Header.from_pb(r.header), r.succeeded, responses)


class KV:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def get(
        self, key: Key, *, timeout: float | None = None, **options: Unpack[RangeOptions]
    ) -> GetResult:
        reply = await self._conn.unary(methods.RANGE, range_request(key, **options), timeout)
        return get_result(reply)

    async def put(
        self,
        key: Key,
        value: str | bytes,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> PutResult:
        reply = await self._conn.unary(
            methods.PUT, put_request(key, value, lease=lease, prev_kv=prev_kv), timeout
        )
        return put_result(reply)

    async def delete(
        self,
        key: Key,
        *,
        prefix: bool = False,
        range_end: Key | None = None,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> DeleteResult:
        request = delete_request(key, prefix=prefix, range_end=range_end, prev_kv=prev_kv)
        return delete_result(await self._conn.unary(methods.DELETE_RANGE, request, timeout))

    async def txn(
        self,
        compare: list[Compare],
        success: list[Op],
        failure: list[Op] | None = None,
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        reply = await self._conn.unary(methods.TXN, txn_request(compare, success, failure), timeout)
        return txn_result(reply)

    async def compact(self, revision: int, *, physical: bool = False, timeout: float | None = None) -> Header:
        reply = await self._conn.unary(
            methods.COMPACT, pb.CompactionRequest(revision=revision, physical=physical), timeout
        )
        return Header.from_pb(reply.header)
