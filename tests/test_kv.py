"""KV calls (get / put / delete / txn / compact) and input validation, against real etcd."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import etcdlock
from etcdlock import (
    Client,
    Compare,
    DeleteResult,
    GetResult,
    KeyValue,
    Op,
    PutResult,
    TxnResult,
)
from etcdlock.testing import EtcdCluster


def values(result: GetResult) -> list[bytes]:
    return [kv.value for kv in result.kvs]


def keys(result: GetResult) -> list[bytes]:
    return [kv.key for kv in result.kvs]


async def put_many(client: Client, ns: str, names: list[str]) -> dict[str, PutResult]:
    """Put ns+name = "v-"+name one after another; returns each put's result."""
    out: dict[str, PutResult] = {}
    for name in names:
        out[name] = await client.put(ns + name, "v-" + name)
    return out


# ---- put / get -------------------------------------------------------------------------------


async def test_put_get_str_key_and_value(client: Client, ns: str) -> None:
    put = await client.put(ns + "a", "hello")
    assert put.prev_kv is None
    assert put.revision > 0
    got = await client.get(ns + "a")
    assert isinstance(got, GetResult)
    assert got.count == 1
    assert got.more is False
    kv = got.first()
    assert kv is not None
    assert kv.key == (ns + "a").encode()
    assert kv.value == b"hello"
    assert kv.create_revision == put.revision
    assert kv.mod_revision == put.revision
    assert kv.version == 1
    assert kv.lease == 0
    assert got.revision >= put.revision


async def test_put_get_bytes_key_and_value(client: Client, ns: str) -> None:
    key = ns.encode() + b"\xff\x00\x01bin"
    value = b"\x00\xfe\xffnot utf-8\x80"
    await client.put(key, value)
    got = await client.get(key)
    assert keys(got) == [key]
    assert values(got) == [value]


async def test_unicode_str_is_utf8(client: Client, ns: str) -> None:
    await client.put(ns + "ключ", "значение ✓")
    got = await client.get((ns + "ключ").encode())
    assert values(got) == ["значение ✓".encode()]


async def test_header_revision_increases_and_version_counts(client: Client, ns: str) -> None:
    r1 = await client.put(ns + "k", "1")
    r2 = await client.put(ns + "k", "2")
    r3 = await client.put(ns + "other", "x")
    assert r1.revision < r2.revision < r3.revision
    assert r1.header.cluster_id != 0
    assert r1.header.member_id != 0
    assert r1.header.raft_term > 0
    kv = (await client.get(ns + "k")).first()
    assert kv is not None
    assert kv.version == 2
    assert kv.create_revision == r1.revision
    assert kv.mod_revision == r2.revision
    assert (await client.get(ns + "k")).revision >= r3.revision


async def test_get_missing_key(client: Client, ns: str) -> None:
    got = await client.get(ns + "missing")
    assert got.kvs == []
    assert got.count == 0
    assert got.first() is None
    assert got.revision > 0


async def test_prefix_get(client: Client, ns: str) -> None:
    await put_many(client, ns, ["p/a", "p/b", "p/c", "pz", "q"])
    got = await client.get(ns + "p/", prefix=True)
    assert keys(got) == [(ns + n).encode() for n in ["p/a", "p/b", "p/c"]]
    assert got.count == 3
    # The prefix of the whole namespace sees every key of this test and nothing else.
    assert (await client.get(ns, prefix=True)).count == 5


async def test_prefix_get_with_ff_bytes(client: Client, ns: str) -> None:
    base = ns.encode() + b"\xff"
    await client.put(base + b"\xff", "in1")
    await client.put(base + b"\xff\x00", "in2")
    await client.put(ns.encode() + b"\xfe", "out")
    got = await client.get(base, prefix=True)
    assert sorted(values(got)) == [b"in1", b"in2"]


async def test_range_get_with_range_end(client: Client, ns: str) -> None:
    await put_many(client, ns, ["a", "b", "c", "d"])
    got = await client.get(ns + "a", range_end=ns + "c")
    assert keys(got) == [(ns + "a").encode(), (ns + "b").encode()]
    got = await client.get((ns + "b").encode(), range_end=(ns + "e").encode())
    assert keys(got) == [(ns + n).encode() for n in ["b", "c", "d"]]


async def test_sort_order_and_target(client: Client, ns: str) -> None:
    # Created in the order c, a, b; values sort the other way round from keys.
    await client.put(ns + "c", "1")
    await client.put(ns + "a", "3")
    await client.put(ns + "b", "2")
    await client.put(ns + "b", "2")  # b: version 2, last modified

    async def names(order: Any = "none", target: Any = "key") -> list[str]:
        r = await client.get(ns, prefix=True, sort_order=order, sort_target=target)
        return [kv.key.decode()[len(ns) :] for kv in r.kvs]

    assert await names() == ["a", "b", "c"]
    assert await names("ascend") == ["a", "b", "c"]
    assert await names("descend") == ["c", "b", "a"]
    assert await names("descend", "key") == ["c", "b", "a"]
    assert await names("ascend", "create") == ["c", "a", "b"]
    assert await names("descend", "create") == ["b", "a", "c"]
    assert await names("ascend", "value") == ["c", "b", "a"]
    assert await names("descend", "value") == ["a", "b", "c"]
    assert await names("descend", "mod") == ["b", "a", "c"]
    assert await names("ascend", "mod") == ["c", "a", "b"]
    assert (await names("descend", "version"))[0] == "b"
    assert (await names("ascend", "version"))[-1] == "b"


async def test_limit_and_more(client: Client, ns: str) -> None:
    await put_many(client, ns, ["a", "b", "c"])
    got = await client.get(ns, prefix=True, limit=2)
    assert keys(got) == [(ns + "a").encode(), (ns + "b").encode()]
    assert got.more is True
    assert got.count == 3
    got = await client.get(ns, prefix=True, limit=3)
    assert len(got.kvs) == 3
    assert got.more is False
    got = await client.get(ns, prefix=True, limit=0)  # 0 = no limit
    assert len(got.kvs) == 3
    assert got.more is False


async def test_get_at_older_revision(client: Client, ns: str) -> None:
    r1 = await client.put(ns + "k", "v1")
    r2 = await client.put(ns + "k", "v2")
    await client.delete(ns + "k")
    assert values(await client.get(ns + "k", revision=r1.revision)) == [b"v1"]
    assert values(await client.get(ns + "k", revision=r2.revision)) == [b"v2"]
    assert values(await client.get(ns + "k")) == []
    assert values(await client.get(ns + "k", revision=r1.revision - 1)) == []


async def test_get_future_revision_is_a_server_error(client: Client, ns: str) -> None:
    rev = (await client.put(ns + "k", "v")).revision
    with pytest.raises(etcdlock.ServerError, match="future revision") as info:
        await client.get(ns + "k", revision=rev + 1_000_000)
    assert not isinstance(info.value, etcdlock.CompactedError)


async def test_keys_only(client: Client, ns: str) -> None:
    await put_many(client, ns, ["a", "b"])
    got = await client.get(ns, prefix=True, keys_only=True)
    assert keys(got) == [(ns + "a").encode(), (ns + "b").encode()]
    assert values(got) == [b"", b""]
    assert all(kv.version == 1 for kv in got.kvs)


async def test_count_only(client: Client, ns: str) -> None:
    await put_many(client, ns, ["a", "b", "c"])
    got = await client.get(ns, prefix=True, count_only=True)
    assert got.count == 3
    assert got.kvs == []


async def test_min_max_create_revision(client: Client, ns: str) -> None:
    puts = await put_many(client, ns, ["a", "b", "c"])
    rb = puts["b"].revision
    got = await client.get(ns, prefix=True, min_create_revision=rb)
    assert keys(got) == [(ns + "b").encode(), (ns + "c").encode()]
    got = await client.get(ns, prefix=True, max_create_revision=rb)
    assert keys(got) == [(ns + "a").encode(), (ns + "b").encode()]
    got = await client.get(ns, prefix=True, min_create_revision=rb, max_create_revision=rb)
    assert keys(got) == [(ns + "b").encode()]


async def test_min_max_mod_revision(client: Client, ns: str) -> None:
    await put_many(client, ns, ["a", "b", "c"])
    ra = (await client.put(ns + "a", "again")).revision
    got = await client.get(ns, prefix=True, min_mod_revision=ra)
    assert keys(got) == [(ns + "a").encode()]
    got = await client.get(ns, prefix=True, max_mod_revision=ra - 1)
    assert keys(got) == [(ns + "b").encode(), (ns + "c").encode()]


async def test_put_prev_kv(client: Client, ns: str) -> None:
    first = await client.put(ns + "k", "old", prev_kv=True)
    assert first.prev_kv is None
    second = await client.put(ns + "k", "new", prev_kv=True)
    assert isinstance(second.prev_kv, KeyValue)
    assert second.prev_kv.value == b"old"
    assert second.prev_kv.key == (ns + "k").encode()
    assert second.prev_kv.mod_revision == first.revision
    assert second.prev_kv.version == 1
    # Without prev_kv the previous value is not returned even when there is one.
    third = await client.put(ns + "k", "newer")
    assert third.prev_kv is None


async def test_delete_single(client: Client, ns: str) -> None:
    await put_many(client, ns, ["a", "ab"])
    res = await client.delete(ns + "a")
    assert isinstance(res, DeleteResult)
    assert res.deleted == 1
    assert res.prev_kvs == []
    assert (await client.get(ns + "a")).kvs == []
    assert values(await client.get(ns + "ab")) == [b"v-ab"]  # a single-key delete is not a prefix delete
    missing = await client.delete(ns + "a")
    assert missing.deleted == 0


async def test_delete_prefix_and_prev_kv(client: Client, ns: str) -> None:
    await put_many(client, ns, ["d/a", "d/b", "d/c", "e"])
    res = await client.delete(ns + "d/", prefix=True, prev_kv=True)
    assert res.deleted == 3
    assert sorted(kv.value for kv in res.prev_kvs) == [b"v-d/a", b"v-d/b", b"v-d/c"]
    assert (await client.get(ns + "d/", prefix=True)).count == 0
    assert (await client.get(ns + "e")).count == 1
    assert res.revision > 0


async def test_delete_range_end(client: Client, ns: str) -> None:
    await put_many(client, ns, ["a", "b", "c"])
    res = await client.delete(ns + "a", range_end=ns + "c")
    assert res.deleted == 2
    assert keys(await client.get(ns, prefix=True)) == [(ns + "c").encode()]


# ---- txn -------------------------------------------------------------------------------------


async def test_txn_create_if_absent_success_branch(client: Client, ns: str) -> None:
    key = ns + "lock"
    res = await client.txn(
        [Compare.create_revision(key, "==", 0)],
        [Op.put(key, "me"), Op.get(key)],
        [Op.get(key)],
    )
    assert isinstance(res, TxnResult)
    assert res.succeeded is True
    assert len(res.responses) == 2
    put, get = res.responses
    assert isinstance(put, PutResult)
    assert isinstance(get, GetResult)
    assert values(get) == [b"me"]
    assert put.revision == res.revision
    got = get.first()
    assert got is not None
    assert got.create_revision == res.revision


async def test_txn_else_branch_when_key_exists(client: Client, ns: str) -> None:
    key = ns + "lock"
    created = await client.put(key, "owner")
    res = await client.txn(
        [Compare.create_revision(key, "==", 0)],
        [Op.put(key, "intruder")],
        [Op.get(key)],
    )
    assert res.succeeded is False
    assert len(res.responses) == 1
    get = res.responses[0]
    assert isinstance(get, GetResult)
    kv = get.first()
    assert kv is not None
    assert kv.value == b"owner"
    assert kv.create_revision == created.revision
    assert res.revision == created.revision  # the failed branch wrote nothing


@pytest.mark.parametrize(
    ("op", "operand", "expected"),
    [
        ("==", "m", True),
        ("==", "x", False),
        ("!=", "x", True),
        ("!=", "m", False),
        ("<", "n", True),
        ("<", "m", False),
        (">", "l", True),
        (">", "m", False),
    ],
)
async def test_txn_compare_value(client: Client, ns: str, op: Any, operand: str, expected: bool) -> None:
    await client.put(ns + "k", "m")
    res = await client.txn([Compare.value(ns + "k", op, operand)], [Op.put(ns + "hit", "1")], [])
    assert res.succeeded is expected
    assert (await client.get(ns + "hit")).count == (1 if expected else 0)


async def test_txn_compare_value_bytes(client: Client, ns: str) -> None:
    await client.put(ns + "k", b"\x00\xff")
    assert (await client.txn([Compare.value(ns + "k", "==", b"\x00\xff")], [])).succeeded
    assert (await client.txn([Compare.value(ns + "k", ">", b"\x00\xfe")], [])).succeeded
    assert not (await client.txn([Compare.value(ns + "k", "<", b"\x00")], [])).succeeded


@pytest.mark.parametrize(
    ("op", "operand", "expected"),
    [
        ("==", 2, True),
        ("==", 1, False),
        ("!=", 1, True),
        ("!=", 2, False),
        ("<", 3, True),
        ("<", 2, False),
        (">", 1, True),
        (">", 2, False),
    ],
)
async def test_txn_compare_version(client: Client, ns: str, op: Any, operand: int, expected: bool) -> None:
    await client.put(ns + "k", "1")
    await client.put(ns + "k", "2")  # version 2
    res = await client.txn([Compare.version(ns + "k", op, operand)], [Op.get(ns + "k")], [])
    assert res.succeeded is expected
    assert len(res.responses) == (1 if expected else 0)


async def test_txn_compare_version_of_missing_key_is_zero(client: Client, ns: str) -> None:
    assert (await client.txn([Compare.version(ns + "nope", "==", 0)], [])).succeeded
    assert not (await client.txn([Compare.version(ns + "nope", ">", 0)], [])).succeeded


@pytest.mark.parametrize(
    ("op", "delta", "expected"),
    [
        ("==", 0, True),
        ("==", -1, False),
        ("!=", 1, True),
        ("!=", 0, False),
        ("<", 1, True),
        ("<", 0, False),
        (">", -1, True),
        (">", 0, False),
    ],
)
async def test_txn_compare_mod_revision(client: Client, ns: str, op: Any, delta: int, expected: bool) -> None:
    await client.put(ns + "k", "1")
    mod = (await client.put(ns + "k", "2")).revision
    res = await client.txn([Compare.mod_revision(ns + "k", op, mod + delta)], [Op.put(ns + "hit", "y")], [])
    assert res.succeeded is expected
    assert (await client.get(ns + "hit")).count == (1 if expected else 0)


@pytest.mark.parametrize(
    ("op", "delta", "expected"),
    [("==", 0, True), ("!=", 0, False), ("<", 1, True), (">", 0, False), (">", -1, True)],
)
async def test_txn_compare_create_revision(
    client: Client, ns: str, op: Any, delta: int, expected: bool
) -> None:
    created = (await client.put(ns + "k", "1")).revision
    await client.put(ns + "k", "2")  # moves mod_revision, not create_revision
    res = await client.txn([Compare.create_revision(ns + "k", op, created + delta)], [], [])
    assert res.succeeded is expected


async def test_txn_compare_lease(client: Client, ns: str) -> None:
    grant = await client.grant(60)
    try:
        await client.put(ns + "leased", "v", lease=grant.id)
        await client.put(ns + "plain", "v")
        kv = (await client.get(ns + "leased")).first()
        assert kv is not None
        assert kv.lease == grant.id
        assert (await client.txn([Compare.lease(ns + "leased", "==", grant.id)], [])).succeeded
        assert not (await client.txn([Compare.lease(ns + "leased", "!=", grant.id)], [])).succeeded
        assert (await client.txn([Compare.lease(ns + "plain", "==", 0)], [])).succeeded
        assert (await client.txn([Compare.lease(ns + "plain", "!=", grant.id)], [])).succeeded
        assert (await client.txn([Compare.lease(ns + "leased", ">", 0)], [])).succeeded
        assert not (await client.txn([Compare.lease(ns + "plain", ">", 0)], [])).succeeded
    finally:
        await client.revoke(grant.id)
    assert (await client.get(ns + "leased")).count == 0


async def test_txn_all_compares_must_hold(client: Client, ns: str) -> None:
    await client.put(ns + "a", "1")
    await client.put(ns + "b", "2")
    both = [Compare.value(ns + "a", "==", "1"), Compare.value(ns + "b", "==", "2")]
    assert (await client.txn(both, [])).succeeded
    one_wrong = [Compare.value(ns + "a", "==", "1"), Compare.value(ns + "b", "==", "x")]
    assert not (await client.txn(one_wrong, [])).succeeded


async def test_txn_response_types_and_nested_txn(client: Client, ns: str) -> None:
    await client.put(ns + "old", "o")
    await client.put(ns + "inner", "present")
    res = await client.txn(
        [],
        [
            Op.put(ns + "new", "n", prev_kv=True),
            Op.get(ns, prefix=True, keys_only=True),
            Op.delete(ns + "old", prev_kv=True),
            Op.txn(
                [Compare.value(ns + "inner", "==", "absent")],
                [Op.put(ns + "inner-hit", "1")],
                [Op.get(ns + "inner"), Op.put(ns + "inner-miss", "1")],
            ),
        ],
    )
    assert res.succeeded is True
    put, get, delete, nested = res.responses
    assert isinstance(put, PutResult)
    assert put.prev_kv is None
    assert isinstance(get, GetResult)
    assert keys(get) == [(ns + n).encode() for n in ["inner", "new", "old"]]
    assert values(get) == [b"", b"", b""]
    assert isinstance(delete, DeleteResult)
    assert delete.deleted == 1
    assert [kv.value for kv in delete.prev_kvs] == [b"o"]
    assert isinstance(nested, TxnResult)
    assert nested.succeeded is False
    assert len(nested.responses) == 2
    inner_get, inner_put = nested.responses
    assert isinstance(inner_get, GetResult)
    assert values(inner_get) == [b"present"]
    assert isinstance(inner_put, PutResult)
    assert (await client.get(ns + "inner-miss")).count == 1
    assert (await client.get(ns + "inner-hit")).count == 0
    assert (await client.get(ns + "old")).count == 0


async def test_txn_writes_share_one_revision(client: Client, ns: str) -> None:
    await client.put(ns + "z", "gone soon")
    res = await client.txn([], [Op.put(ns + "x", "1"), Op.put(ns + "y", "2"), Op.delete(ns + "z")])
    assert res.succeeded
    x = (await client.get(ns + "x")).first()
    y = (await client.get(ns + "y")).first()
    assert x is not None
    assert y is not None
    assert x.mod_revision == y.mod_revision == res.revision
    assert (await client.get(ns + "z")).count == 0
    assert (await client.get(ns + "z", revision=res.revision - 1)).count == 1


async def test_txn_put_and_delete_of_same_key_is_rejected(client: Client, ns: str) -> None:
    with pytest.raises(etcdlock.ServerError, match="duplicate key"):
        await client.txn([], [Op.put(ns + "x", "1"), Op.delete(ns + "x")])
    assert (await client.get(ns + "x")).count == 0


# ---- compaction ------------------------------------------------------------------------------


async def test_compact_then_old_revision_is_compacted(etcd_fresh: EtcdCluster) -> None:
    c = Client(etcd_fresh.endpoints)
    async with c:
        r1 = await c.put("/compact/k", "v1")
        r2 = await c.put("/compact/k", "v2")
        r3 = await c.put("/compact/k", "v3")
        header = await c.compact(r2.revision, physical=True)
        assert header.revision >= r3.revision

        with pytest.raises(etcdlock.CompactedError, match="compacted") as info:
            await c.get("/compact/k", revision=r1.revision)
        assert isinstance(info.value, etcdlock.EtcdError)
        # The compaction revision itself and later ones are still readable.
        assert values(await c.get("/compact/k", revision=r2.revision)) == [b"v2"]
        assert values(await c.get("/compact/k", revision=r3.revision)) == [b"v3"]
        assert values(await c.get("/compact/k")) == [b"v3"]
        # Compacting again to an already compacted revision is the same error.
        with pytest.raises(etcdlock.CompactedError):
            await c.compact(r1.revision)
        # A revision in the future cannot be compacted (and that is not a "compacted" error).
        with pytest.raises(etcdlock.ServerError, match="future revision") as future:
            await c.compact(r3.revision + 1000)
        assert not isinstance(future.value, etcdlock.CompactedError)
        # A txn reading an old revision fails the same way.
        with pytest.raises(etcdlock.CompactedError):
            await c.txn([], [Op.get("/compact/k", revision=r1.revision)])
    assert c.closed
    assert c.resources().total() == 0


# ---- bad input -------------------------------------------------------------------------------


@pytest.fixture
async def idle_client(etcd_endpoints: list[str]) -> AsyncIterator[Client]:
    """A client that has never sent anything: calls failing validation must leave it with no channel."""
    c = Client(etcd_endpoints)
    yield c
    assert c.resources().channels == 0, "a call with bad input opened a channel (something was sent)"
    await c.close()
    assert c.resources().total() == 0


BAD_CALLS: list[tuple[str, Any, str]] = [
    ("get int key", lambda c: c.get(123), r"key must be str or bytes, not int"),
    ("get None key", lambda c: c.get(None), r"key must be str or bytes, not NoneType"),
    ("put float key", lambda c: c.put(1.5, "v"), r"key must be str or bytes, not float"),
    ("put int value", lambda c: c.put("/k", 5), r"value must be str or bytes, not int"),
    ("delete list key", lambda c: c.delete(["/k"]), r"key must be str or bytes, not list"),
    ("get empty key", lambda c: c.get(""), r"key must not be empty"),
    ("get empty bytes key", lambda c: c.get(b""), r"key must not be empty"),
    ("delete empty key", lambda c: c.delete(""), r"key must not be empty"),
    ("get prefix+range_end", lambda c: c.get("/a", prefix=True, range_end="/b"), r"either prefix=True or"),
    (
        "delete prefix+range_end",
        lambda c: c.delete("/a", prefix=True, range_end="/b"),
        r"either prefix=True or range_end",
    ),
    ("get bad range_end", lambda c: c.get("/a", range_end=3), r"range_end must be str or bytes, not int"),
    ("negative limit", lambda c: c.get("/a", prefix=True, limit=-1), r"limit must be >= 0, got -1"),
    ("negative revision", lambda c: c.get("/a", revision=-5), r"revision must be >= 0, got -5"),
    ("str limit", lambda c: c.get("/a", limit="10"), r"limit must be an int, not str"),
    ("bool limit", lambda c: c.get("/a", limit=True), r"limit must be an int, not bool"),
    ("bad sort_order", lambda c: c.get("/a", sort_order="up"), r"sort_order must be one of .*'up'"),
    ("bad sort_target", lambda c: c.get("/a", sort_target="size"), r"sort_target must be one of .*'size'"),
    ("put str lease", lambda c: c.put("/a", "v", lease="7"), r"lease must be an int, not str"),
    (
        "timeout zero",
        lambda c: c.get("/a", timeout=0),
        r"timeout must be a positive, finite number of .*got 0",
    ),
    ("timeout negative", lambda c: c.put("/a", "v", timeout=-1.0), r"positive, finite .*, got -1\.0"),
    ("timeout nan", lambda c: c.get("/a", timeout=math.nan), r"positive, finite .*, got nan"),
    ("timeout inf", lambda c: c.get("/a", timeout=math.inf), r"positive, finite .*, got inf"),
    ("timeout str", lambda c: c.get("/a", timeout="1"), r"timeout must be a number of seconds, not str"),
    ("timeout bool", lambda c: c.delete("/a", timeout=True), r"timeout must be a number of .*, not bool"),
    ("txn non-Compare", lambda c: c.txn(["x"], []), r"txn compare entries must be Compare, not str"),
    ("txn non-Op", lambda c: c.txn([], [("put", "/k", "v")]), r"txn operations must be Op, not tuple"),
    ("txn non-Op in else", lambda c: c.txn([], [], [None]), r"txn operations must be Op, not NoneType"),
]


@pytest.mark.parametrize(
    ("call", "message"), [(c, m) for _, c, m in BAD_CALLS], ids=[n for n, _, _ in BAD_CALLS]
)
async def test_bad_input_is_config_error_and_sends_nothing(
    idle_client: Client, call: Any, message: str
) -> None:
    with pytest.raises(etcdlock.ConfigError, match=message) as info:
        await call(idle_client)
    assert isinstance(info.value, ValueError)  # ConfigError is also a ValueError
    assert isinstance(info.value, etcdlock.EtcdError)


COMPARE_BUILDERS: list[Callable[[Any], Compare]] = [
    lambda op: Compare.value("/k", op, "v"),
    lambda op: Compare.version("/k", op, 1),
    lambda op: Compare.create_revision("/k", op, 1),
    lambda op: Compare.mod_revision("/k", op, 1),
    lambda op: Compare.lease("/k", op, 1),
]


@pytest.mark.parametrize("op", ["=", "<=", ">=", "eq", "", None])
def test_bad_compare_operator(op: Any) -> None:
    for build in COMPARE_BUILDERS:
        with pytest.raises(etcdlock.ConfigError, match=r"compare operator must be one of ==, !=, <, >; got"):
            build(op)


def test_good_compare_operators() -> None:
    for op in ("==", "!=", "<", ">"):
        for build in COMPARE_BUILDERS:
            assert isinstance(build(op), Compare)


def test_bad_compare_operands() -> None:
    with pytest.raises(etcdlock.ConfigError, match=r"version must be an int, not str"):
        Compare.version("/k", "==", "1")  # type: ignore[arg-type]
    with pytest.raises(etcdlock.ConfigError, match=r"create_revision must be an int, not bool"):
        Compare.create_revision("/k", "==", False)
    with pytest.raises(etcdlock.ConfigError, match=r"value must be str or bytes, not int"):
        Compare.value("/k", "==", 1)  # type: ignore[arg-type]
    with pytest.raises(etcdlock.ConfigError, match=r"key must be str or bytes, not int"):
        Compare.value(1, "==", "v")  # type: ignore[arg-type]
    with pytest.raises(etcdlock.ConfigError, match=r"limit must be >= 0"):
        Op.get("/k", limit=-1)
    with pytest.raises(etcdlock.ConfigError, match=r"key must not be empty"):
        Op.delete("")
    with pytest.raises(etcdlock.ConfigError, match=r"either prefix=True or range_end"):
        Op.delete("/k", prefix=True, range_end="/l")


@pytest.mark.parametrize(
    ("endpoints", "message"),
    [
        ([], r"at least one endpoint is needed"),
        ((), r"at least one endpoint is needed"),
        (["nohost"], r"endpoint 'nohost' is not of the form host:port \(port 1-65535\)"),
        ("nohost", r"endpoint 'nohost' is not of the form host:port"),
        (["127.0.0.1:0"], r"endpoint '127.0.0.1:0' is not of the form host:port"),
        (["127.0.0.1:abc"], r"endpoint '127.0.0.1:abc' is not of the form host:port"),
        (["127.0.0.1:65536"], r"endpoint '127.0.0.1:65536' is not of the form host:port"),
        ([":2379"], r"endpoint ':2379' is not of the form host:port"),
        (["127.0.0.1:2379", "bad"], r"endpoint 'bad' is not of the form host:port"),
        ([""], r"endpoint must be a non-empty 'host:port' string, got ''"),
        ([None], r"endpoint must be a non-empty 'host:port' string, got None"),
    ],
)
def test_client_bad_endpoints(endpoints: Any, message: str) -> None:
    with pytest.raises(etcdlock.ConfigError, match=message):
        Client(endpoints)


def test_client_endpoint_forms_accepted() -> None:
    c = Client(["http://127.0.0.1:2379/", "127.0.0.1:2379", "localhost:1"])
    assert c.endpoints == ("127.0.0.1:2379", "localhost:1")  # scheme stripped, duplicates merged
    assert c.current_endpoint == "127.0.0.1:2379"
    assert c.resources().total() == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"username": "root"}, r"username and password go together"),
        ({"password": "secret"}, r"username and password go together"),
        ({"username": "", "password": "x"}, r"username must not be empty"),
        ({"timeout": 0}, r"default timeout must be a positive, finite number of seconds, got 0"),
        ({"timeout": -3}, r"default timeout must be a positive, finite number of seconds, got -3"),
        ({"timeout": math.nan}, r"default timeout must be a positive, finite number of seconds, got nan"),
        ({"timeout": "5"}, r"default timeout must be a number of seconds, not str"),
    ],
)
def test_client_bad_options(etcd_endpoints: list[str], kwargs: Any, message: str) -> None:
    with pytest.raises(etcdlock.ConfigError, match=message):
        Client(etcd_endpoints, **kwargs)


# ---- unreachable endpoint --------------------------------------------------------------------


async def test_unreachable_endpoint_fails_fast_and_holds_nothing() -> None:
    c = Client(["127.0.0.1:1"], timeout=1.0)
    start = time.monotonic()
    with pytest.raises(etcdlock.ConnectionFailedError) as info:
        async with c:
            pytest.fail("entered a client whose only endpoint is unreachable")
    elapsed = time.monotonic() - start
    assert elapsed < 3.0, f"connect to an unreachable endpoint took {elapsed:.2f}s with timeout=1.0"
    assert "127.0.0.1:1" in str(info.value)
    assert info.value.endpoints == ("127.0.0.1:1",)
    assert isinstance(info.value, ConnectionError)
    assert c.closed
    assert c.resources().total() == 0
    with pytest.raises(etcdlock.ClientClosedError):
        await c.get("/k")
    assert c.resources().total() == 0


async def test_unreachable_call_timeout_overrides_default() -> None:
    c = Client(["127.0.0.1:1"], timeout=30.0)
    try:
        start = time.monotonic()
        with pytest.raises(etcdlock.ConnectionFailedError, match=r"127\.0\.0\.1:1"):
            await c.get("/k", timeout=0.5)
        assert time.monotonic() - start < 2.0
    finally:
        await c.close()
    assert c.resources().total() == 0
