"""Txn coalescing (core/batch.py) against a real etcd: it batches when backed up, never puts one lock
name twice in a batch, keeps per-key order, isolates a bad request; a cancelled queued request has no
effect."""

from __future__ import annotations

import asyncio

import pytest

from etcdlock import Client, ClientClosedError, LeaseNotFoundError
from etcdlock._wire import rpc_pb2 as pb
from etcdlock.testing import FaultProxy
from tests.waiting import wait_until


def put_if_absent(key: bytes, lease: int = 0) -> pb.TxnRequest:
    return pb.TxnRequest(
        compare=[pb.Compare(key=key, target=pb.Compare.CREATE, create_revision=0)],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=key, lease=lease))],
        failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
    )


async def test_backed_up_requests_of_many_names_share_rpcs(client: Client, ns: str) -> None:
    b = client._batcher
    sent_before, batched_before = b.batches_sent, b.requests_batched
    keys = [f"{ns}n{i}/k".encode() for i in range(40)]
    replies = await asyncio.gather(
        *(client._txn_batched(put_if_absent(k), k.rsplit(b"/", 1)[0], k) for k in keys)
    )
    assert all(r.succeeded for r in replies)
    assert all(r.header.revision > 0 for r in replies), "nested replies must carry the outer header"
    assert b.batches_sent > sent_before, "40 concurrent requests on distinct names were never coalesced"
    assert b.requests_batched - batched_before >= 2
    got = await client.get(ns, prefix=True)
    assert {kv.key for kv in got.kvs} == set(keys)
    # Each reply's revision is the revision its key was created at.
    by_key = {kv.key: kv.create_revision for kv in got.kvs}
    assert [r.header.revision for r in replies] == [by_key[k] for k in keys]


async def test_one_lock_name_is_never_twice_in_a_batch(client: Client, ns: str) -> None:
    name = f"{ns}same".encode()
    keys = [name + b"/" + bytes(f"{i:x}", "ascii") for i in range(30)]
    replies = await asyncio.gather(*(client._txn_batched(put_if_absent(k), name, k) for k in keys))
    revisions = [r.header.revision for r in replies]
    assert len(set(revisions)) == len(revisions), "two keys of one lock name got the same create_revision"


async def test_same_order_key_applies_in_call_order(client: Client, ns: str) -> None:
    key = f"{ns}o/k".encode()
    name = f"{ns}o".encode()
    create = client._txn_batched(put_if_absent(key), name, key)
    delete = client._txn_batched(
        pb.TxnRequest(success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))]), name, key
    )
    r1, r2 = await asyncio.gather(create, delete)
    assert r1.succeeded and r2.responses[0].response_delete_range.deleted == 1
    assert (await client.get(key)).count == 0


async def _backed_up(client: Client, ns: str) -> asyncio.Task[pb.TxnResponse]:
    """One request of another name in flight: whatever is submitted next queues, and what is queued in one
    loop turn goes out together at the end of it."""
    key = f"{ns}blocker/k".encode()
    blocker = asyncio.create_task(client._txn_batched(put_if_absent(key), b"blocker", key))
    await asyncio.sleep(0)  # let it go out
    assert client._batcher.rpcs_in_flight == 1
    return blocker


async def test_a_bad_request_fails_alone(client: Client, ns: str) -> None:
    blocker = await _backed_up(client, ns)
    sent = client._batcher.batches_sent
    good = [f"{ns}g{i}/k".encode() for i in range(5)]
    bad = f"{ns}bad/k".encode()
    results = await asyncio.gather(
        *(client._txn_batched(put_if_absent(k), k.rsplit(b"/", 1)[0], k) for k in good),
        client._txn_batched(put_if_absent(bad, lease=0x7777777), bad.rsplit(b"/", 1)[0], bad),
        return_exceptions=True,
    )
    await blocker
    assert all(isinstance(r, pb.TxnResponse) and r.succeeded for r in results[:5])
    assert isinstance(results[5], LeaseNotFoundError)
    assert client._batcher.batches_sent == sent, "the refused batch must not count as sent"
    assert (await client.get(ns, prefix=True)).count == 6  # 5 good + the blocker


async def test_cancelled_queued_request_has_no_effect(client: Client, ns: str) -> None:
    blocker = await _backed_up(client, ns)
    key = f"{ns}c/k".encode()
    task = asyncio.create_task(client._txn_batched(put_if_absent(key), b"c", key))
    await asyncio.sleep(0)
    assert any(e.order == key for e in client._batcher._pending), "the request should be queued"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await blocker
    await client.put(f"{ns}after", "x")  # a round trip later, nothing of the cancelled request landed
    assert (await client.get(key)).count == 0


async def test_closing_answers_requests_whose_send_task_never_ran(client: Client, ns: str) -> None:
    """A send task cancelled before its first step runs none of its code: without the batcher's close()
    its callers would wait forever. (On a live client here: cancel_all + close() is what Client.close does.)
    """
    blocker = await _backed_up(client, ns)
    key = f"{ns}never/k".encode()
    task = asyncio.create_task(client._txn_batched(put_if_absent(key), b"never", key))
    await asyncio.sleep(0)
    b = client._batcher
    b._flush()  # the queued request now belongs to a send task that has not run yet ...
    assert not b._pending
    await client._tasks.cancel_all()  # ... and is cancelled before it runs, as when the client closes
    b.close()
    with pytest.raises(ClientClosedError, match="closed before this request was answered"):
        await asyncio.wait_for(task, 5)
    # The request sent alone ran in a task of the client too: closing answers its caller the same way.
    with pytest.raises(ClientClosedError, match="closed before this request was answered"):
        await asyncio.wait_for(blocker, 5)
    assert (await client.get(key)).count == 0


async def test_a_busy_client_sends_each_turns_requests_without_waiting_for_those_in_flight(
    etcd_endpoints: list[str], ns: str
) -> None:
    """Requests queued in one loop turn go out at its end, however many RPCs are in flight: waiting for a
    free slot would make all requests move in one convoy. A delaying proxy keeps the RPCs in flight."""
    with FaultProxy(etcd_endpoints[0]).start() as proxy:
        async with Client([proxy.endpoint]) as c:
            await c.get("warm-up")
            proxy.delay(0.5)
            b = c._batcher
            waves = []
            for wave in range(3):  # each wave is made in one turn, while the waves before it are in flight
                for i in range(4):
                    name = f"{ns}w{wave}n{i}".encode()
                    key = name + b"/k"
                    waves.append(asyncio.create_task(c._txn_batched(put_if_absent(key), name, key)))
                await asyncio.sleep(0)  # one turn: the wave's tasks run and queue (or go alone)
                await wait_until(lambda: not b._pending, 5, "the wave went out")
            assert b.rpcs_in_flight >= 3, "a wave waited for an RPC in flight to return"
            assert not any(t.done() for t in waves), "the proxy should still hold every reply"
            proxy.pass_through()
            replies = await asyncio.gather(*waves)
            assert all(r.succeeded for r in replies)
    assert b.requests_batched >= 9  # the first request of the first wave may go alone; the rest batched


async def test_the_wave_after_a_batch_goes_as_one_rpc(client: Client, ns: str) -> None:
    """Callers woken by one batch send their next requests together: the first of them must not go alone
    (nothing is in flight at that moment) and split the wave in two RPCs. Once the load is gone, a lone
    request goes by itself again."""
    b = client._batcher

    async def wave(tag: str) -> None:
        names = [f"{ns}{tag}{i}".encode() for i in range(5)]
        calls = [client._txn_batched(put_if_absent(n + b"/k"), n, n + b"/k") for n in names]
        replies = await asyncio.gather(*calls)
        assert all(r.succeeded for r in replies)

    await wave("a")  # the first request goes alone (nothing in flight), the four others as one batch
    sent, batched = b.batches_sent, b.requests_batched
    await wave("b")
    assert (b.batches_sent - sent, b.requests_batched - batched) == (1, 5)
    name = f"{ns}lone".encode()
    await client._txn_batched(put_if_absent(name + b"/k"), name, name + b"/k")  # a batch of one ...
    assert not b._after_batch  # ... after which requests go by themselves again


async def test_a_caller_cancelled_while_its_request_is_in_flight_lets_the_request_finish_first(
    client: Client, ns: str
) -> None:
    """Cancelling the caller must not cancel the RPC: etcd may still apply it, after the cleanup the caller
    sends next (found by cancelling an acquire at every await point on a shared session: the create
    landed after the guarded delete and the key stayed). The next request of the same order key goes out
    only once the first was answered, so it is applied after it."""
    key = f"{ns}inflight/k".encode()
    first = asyncio.create_task(client._txn_batched(put_if_absent(key), b"inflight", key))
    await asyncio.sleep(0)  # sent alone, now in flight
    assert client._batcher.rpcs_in_flight == 1
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert client._batcher.rpcs_in_flight == 1, "the RPC was cancelled with its caller"
    delete = pb.TxnRequest(success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))])
    await client._txn_batched(delete, b"inflight", key)
    assert (await client.get(key)).count == 0
