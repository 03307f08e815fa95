#!/usr/bin/env python3
"""Wire smoke test: the committed etcdlock._wire stubs + grpc.aio against a real etcd (3.4+).

Standalone on purpose: it imports only grpc, protobuf and the generated stubs (not the rest of etcdlock),
so it proves the installed protobuf/grpcio pair speaks etcd's wire protocol with exactly the grpc.aio API
surface the client uses (insecure/secure channel with options, unary_unary with timeout + metadata,
stream_stream bidi with write / `async for` / done_writing / cancel, channel.close()).

    python scripts/wire_smoke.py --endpoint 127.0.0.1:23790
    python scripts/wire_smoke.py --endpoint 127.0.0.1:23790 --cacert ca.pem [--cert c.pem --key k.pem]

Exit 0 and "wire smoke ok ..." on success; exit 1 with "wire smoke FAILED at <step>: ..." otherwise.
All keys live under a unique prefix that is deleted again; the lease is revoked.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import platform
import sys
import types
import uuid
from typing import Any


def _import_stubs() -> tuple[Any, Any]:
    """Import etcdlock._wire.{kv,rpc}_pb2 without running etcdlock/__init__.py (the client may not import)."""
    if "etcdlock" not in sys.modules:
        spec = importlib.util.find_spec("etcdlock")
        if spec is not None and spec.submodule_search_locations:
            paths = list(spec.submodule_search_locations)
        else:  # not installed: use the source tree next to this script
            paths = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "etcdlock")]
        pkg = types.ModuleType("etcdlock")
        pkg.__path__ = paths
        sys.modules["etcdlock"] = pkg
    from etcdlock._wire import kv_pb2, rpc_pb2

    return kv_pb2, rpc_pb2


import google.protobuf  # noqa: E402
import grpc  # noqa: E402
import grpc.aio  # noqa: E402
from google.protobuf.internal import api_implementation  # noqa: E402

kv_pb2, rpc_pb2 = _import_stubs()

TIMEOUT = 5.0  # per unary call, seconds
METADATA = (("x-etcdlock-wire-smoke", "1"),)
# etcd fails streams with "no leader" instead of hanging when this is set (clientv3's WithRequireLeader).
STREAM_METADATA = (("hasleader", "true"),)
# The same options the client's connection uses (a grpcio that rejects one of them must fail here).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 0),
]


class SmokeError(Exception):
    pass


step = "start"


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise SmokeError(msg)


def prefix_end(prefix: bytes) -> bytes:
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"


async def next_msg(call: grpc.aio.StreamStreamCall[Any, Any], what: str, timeout: float = TIMEOUT) -> Any:
    """One message from a bidi call, read via `async for` (the style the client uses)."""

    async def first() -> Any:
        async for msg in call:
            return msg
        raise SmokeError(f"stream ended while waiting for {what}")

    try:
        return await asyncio.wait_for(first(), timeout)
    except TimeoutError:
        raise SmokeError(f"timed out after {timeout}s waiting for {what}") from None


def make_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    if not args.cacert:
        return grpc.aio.insecure_channel(args.endpoint, options=CHANNEL_OPTIONS)

    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        with open(path, "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read(args.cacert), private_key=read(args.key), certificate_chain=read(args.cert)
    )
    options = list(CHANNEL_OPTIONS)
    if args.server_name:
        options.append(("grpc.ssl_target_name_override", args.server_name))
    return grpc.aio.secure_channel(args.endpoint, creds, options=options)


async def smoke(args: argparse.Namespace) -> None:
    global step
    channel = make_channel(args)
    try:
        uu = channel.unary_unary
        ss = channel.stream_stream
        put = uu("/etcdserverpb.KV/Put", rpc_pb2.PutRequest.SerializeToString, rpc_pb2.PutResponse.FromString)
        rng = uu(
            "/etcdserverpb.KV/Range", rpc_pb2.RangeRequest.SerializeToString, rpc_pb2.RangeResponse.FromString
        )
        txn = uu("/etcdserverpb.KV/Txn", rpc_pb2.TxnRequest.SerializeToString, rpc_pb2.TxnResponse.FromString)
        delete = uu(
            "/etcdserverpb.KV/DeleteRange",
            rpc_pb2.DeleteRangeRequest.SerializeToString,
            rpc_pb2.DeleteRangeResponse.FromString,
        )
        grant = uu(
            "/etcdserverpb.Lease/LeaseGrant",
            rpc_pb2.LeaseGrantRequest.SerializeToString,
            rpc_pb2.LeaseGrantResponse.FromString,
        )
        revoke = uu(
            "/etcdserverpb.Lease/LeaseRevoke",
            rpc_pb2.LeaseRevokeRequest.SerializeToString,
            rpc_pb2.LeaseRevokeResponse.FromString,
        )
        ttl = uu(
            "/etcdserverpb.Lease/LeaseTimeToLive",
            rpc_pb2.LeaseTimeToLiveRequest.SerializeToString,
            rpc_pb2.LeaseTimeToLiveResponse.FromString,
        )
        keepalive = ss(
            "/etcdserverpb.Lease/LeaseKeepAlive",
            rpc_pb2.LeaseKeepAliveRequest.SerializeToString,
            rpc_pb2.LeaseKeepAliveResponse.FromString,
        )
        watch = ss(
            "/etcdserverpb.Watch/Watch",
            rpc_pb2.WatchRequest.SerializeToString,
            rpc_pb2.WatchResponse.FromString,
        )

        prefix = f"/etcdlock-wire-smoke/{uuid.uuid4().hex}/".encode()
        end = prefix_end(prefix)
        key_a, key_b, key_w = prefix + b"a", prefix + b"b", prefix + b"w"

        step = "Put"
        r = await put(rpc_pb2.PutRequest(key=key_a, value=b"v1"), timeout=TIMEOUT, metadata=METADATA)
        check(r.header.revision > 0, f"Put: bad header {r.header!r}")
        put_rev = r.header.revision

        step = "Range"
        r = await rng(rpc_pb2.RangeRequest(key=key_a), timeout=TIMEOUT, metadata=METADATA)
        check(
            r.count == 1 and len(r.kvs) == 1, f"Range: expected 1 kv, got count={r.count} kvs={list(r.kvs)}"
        )
        kv = r.kvs[0]
        check(kv.key == key_a and kv.value == b"v1", f"Range: wrong kv {kv!r}")
        check(
            kv.create_revision == put_rev == kv.mod_revision and kv.version == 1, f"Range: revisions {kv!r}"
        )

        step = "Range deadline (timeout is attached to the call)"
        pending = rng(rpc_pb2.RangeRequest(key=key_a), timeout=TIMEOUT, metadata=METADATA)
        remaining = pending.time_remaining()
        await pending
        check(remaining is not None and 0 < remaining <= TIMEOUT, f"time_remaining()={remaining}")
        try:  # an already-expired deadline must fail fast with DEADLINE_EXCEEDED, not hang or succeed
            await rng(rpc_pb2.RangeRequest(key=key_a), timeout=-1.0, metadata=METADATA)
        except grpc.aio.AioRpcError as e:
            check(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"expired deadline gave {e.code()}")
        else:
            raise SmokeError("a call with an expired deadline succeeded (timeout not applied?)")

        def acquire_txn() -> Any:
            return rpc_pb2.TxnRequest(
                compare=[
                    rpc_pb2.Compare(
                        key=key_b,
                        target=rpc_pb2.Compare.CREATE,
                        result=rpc_pb2.Compare.EQUAL,
                        create_revision=0,
                    )
                ],
                success=[
                    rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key_b, value=b"owner")),
                    rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key_b)),
                ],
                failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key_b))],
            )

        step = "Txn (compare create_revision == 0 -> success branch)"
        r = await txn(acquire_txn(), timeout=TIMEOUT, metadata=METADATA)
        check(r.succeeded, "Txn: expected succeeded=True for an absent key")
        check(len(r.responses) == 2, f"Txn: expected 2 responses, got {len(r.responses)}")
        check(r.responses[0].WhichOneof("response") == "response_put", f"Txn: {r.responses[0]!r}")
        check(r.responses[1].WhichOneof("response") == "response_range", f"Txn: {r.responses[1]!r}")
        got = r.responses[1].response_range.kvs
        check(len(got) == 1 and got[0].value == b"owner", f"Txn: success range returned {list(got)}")
        check(got[0].create_revision == r.header.revision, "Txn: create_revision != txn revision")
        owner_rev = got[0].create_revision

        step = "Txn (compare fails -> failure branch)"
        r = await txn(acquire_txn(), timeout=TIMEOUT, metadata=METADATA)
        check(not r.succeeded, "Txn: expected succeeded=False for an existing key")
        check(len(r.responses) == 1, f"Txn: expected 1 response, got {len(r.responses)}")
        check(r.responses[0].WhichOneof("response") == "response_range", f"Txn: {r.responses[0]!r}")
        got = r.responses[0].response_range.kvs
        check(
            len(got) == 1 and got[0].create_revision == owner_rev, f"Txn: failure range returned {list(got)}"
        )

        step = "DeleteRange"
        r = await delete(
            rpc_pb2.DeleteRangeRequest(key=prefix, range_end=end, prev_kv=True),
            timeout=TIMEOUT,
            metadata=METADATA,
        )
        check(r.deleted == 2, f"DeleteRange: deleted={r.deleted}, expected 2")
        check(
            sorted(kv.key for kv in r.prev_kvs) == [key_a, key_b], f"DeleteRange: prev_kvs {list(r.prev_kvs)}"
        )
        r = await rng(rpc_pb2.RangeRequest(key=prefix, range_end=end, count_only=True), timeout=TIMEOUT)
        check(r.count == 0, f"DeleteRange: {r.count} keys left under the prefix")

        step = "LeaseGrant"
        r = await grant(rpc_pb2.LeaseGrantRequest(TTL=30), timeout=TIMEOUT, metadata=METADATA)
        check(not r.error and r.ID != 0 and r.TTL == 30, f"LeaseGrant: {r!r}")
        lease_id = r.ID

        step = "LeaseKeepAlive (bidi: write, async for, done_writing)"
        call = keepalive(metadata=STREAM_METADATA)
        await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
        ka = await next_msg(call, "LeaseKeepAliveResponse")
        check(lease_id == ka.ID and 0 < ka.TTL <= 30, f"LeaseKeepAlive: {ka!r}")
        await call.done_writing()
        # etcd ends the stream once the client half-closes; the rest of `async for` must then drain to OK.
        try:
            async with asyncio.timeout(TIMEOUT):
                async for extra in call:
                    raise SmokeError(f"LeaseKeepAlive: unexpected extra response {extra!r}")
        except TimeoutError:
            raise SmokeError("LeaseKeepAlive: stream did not end after done_writing()") from None
        code = await call.code()
        check(code == grpc.StatusCode.OK, f"LeaseKeepAlive: stream ended with {code}")

        step = "LeaseRevoke"
        await revoke(rpc_pb2.LeaseRevokeRequest(ID=lease_id), timeout=TIMEOUT, metadata=METADATA)
        r = await ttl(rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id), timeout=TIMEOUT, metadata=METADATA)
        check(r.TTL == -1, f"LeaseRevoke: lease still alive, TimeToLive TTL={r.TTL}")

        step = "Watch (bidi: create)"
        call = watch(metadata=STREAM_METADATA)
        await call.write(
            rpc_pb2.WatchRequest(
                create_request=rpc_pb2.WatchCreateRequest(key=prefix, range_end=end, prev_kv=True)
            )
        )
        w = await next_msg(call, "the watch-created reply")
        check(w.created and not w.canceled and not w.events, f"Watch: expected created reply, got {w!r}")
        watch_id = w.watch_id

        step = "Watch (put -> event)"
        r = await put(rpc_pb2.PutRequest(key=key_w, value=b"w1"), timeout=TIMEOUT, metadata=METADATA)
        w = await next_msg(call, "a watch event")
        check(w.watch_id == watch_id and len(w.events) == 1, f"Watch: expected 1 event, got {w!r}")
        ev = w.events[0]
        check(ev.type == kv_pb2.Event.PUT, f"Watch: event type {ev.type}")
        check(ev.kv.key == key_w and ev.kv.value == b"w1", f"Watch: event kv {ev.kv!r}")
        check(ev.kv.mod_revision == r.header.revision, "Watch: event revision != put revision")

        step = "Watch (cancel request -> canceled reply)"
        await call.write(rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=watch_id)))
        w = await next_msg(call, "the watch-canceled reply")
        check(w.canceled and w.watch_id == watch_id, f"Watch: expected canceled reply, got {w!r}")

        step = "Watch (call.cancel())"
        check(call.cancel(), "Watch: call.cancel() returned False on a live stream")
        code = await call.code()
        check(code == grpc.StatusCode.CANCELLED, f"Watch: after cancel() code is {code}")
        check(call.cancelled(), "Watch: call.cancelled() is False after cancel()")

        step = "cleanup"
        await delete(
            rpc_pb2.DeleteRangeRequest(key=prefix, range_end=end), timeout=TIMEOUT, metadata=METADATA
        )
    finally:
        step_before_close = step
        step = "channel.close()"
        await channel.close()
        step = step_before_close


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True, help="HOST:PORT of an etcd client URL (gRPC)")
    ap.add_argument("--cacert", help="PEM CA bundle; switches to grpc.aio.secure_channel")
    ap.add_argument("--cert", help="PEM client certificate (mutual TLS)")
    ap.add_argument("--key", help="PEM client private key (mutual TLS)")
    ap.add_argument("--server-name", help="TLS name to verify instead of the endpoint host")
    ap.add_argument("--deadline", type=float, default=60.0, help="overall time limit in seconds")
    args = ap.parse_args()
    versions = (
        f"protobuf {google.protobuf.__version__} ({api_implementation.Type()}), grpcio {grpc.__version__}, "
        f"Python {platform.python_version()}"
    )
    try:
        asyncio.run(asyncio.wait_for(smoke(args), args.deadline))
    except grpc.aio.AioRpcError as e:
        print(
            f"wire smoke FAILED at {step}: gRPC {e.code().name}: {e.details()} "
            f"(endpoint {args.endpoint}; {versions})",
            file=sys.stderr,
        )
        return 1
    except TimeoutError:
        print(
            f"wire smoke FAILED at {step}: overall deadline of {args.deadline}s exceeded ({versions})",
            file=sys.stderr,
        )
        return 1
    except Exception as e:
        print(f"wire smoke FAILED at {step}: {type(e).__name__}: {e} ({versions})", file=sys.stderr)
        return 1
    print(f"wire smoke ok: {versions}, endpoint {args.endpoint}{' (TLS)' if args.cacert else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
