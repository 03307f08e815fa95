"""Coalescing of independent Txns into one RPC: many concurrent lock operations, one round trip.

gRPC's per-message cost in Python is what bounds a client running many locks at once, so Txns that are in
flight together are sent as one outer Txn whose success branch holds each of them as a nested Txn (etcd
3.3+). Rules that keep this invisible to callers:

  * Requests carry a conflict key (a lock name) and an order key (the lock's own key). Two requests with
    the same conflict key are never in one batch: everything in a batch commits at one revision, which
    must never give two keys of one lock name the same create_revision. Two requests with the same order
    key are never in flight at once, so they apply in call order (a cleanup after its acquire).
  * A request goes out as itself, from the caller's own task, when no RPC of another lock name is in
    flight and the last RPC back was not a batch: an idle client or a sequential caller pays nothing for
    batching, nor do many callers on one lock name (they could never share a batch). Otherwise the
    client is busy, more requests are coming, and it queues: everything queued in one event-loop turn
    goes out at the end of that turn, grouped into as few RPCs as the rules allow (a group commit per
    turn). There is no cap on RPCs in flight: a cap makes requests wait for a slot, and then all of them
    move in one convoy, each phase waiting for the whole previous one.
  * If etcd rejects a batch (e.g. one nested put names an expired lease), each request is sent alone,
    so one bad request fails only its own caller.
  * Each nested reply gets the outer reply's header (nested replies carry none).
  * A caller that is cancelled while its request is in flight only stops waiting; the request completes
    (as a plain unary call cancelled mid-flight might too), and ordering by conflict key means a
    cleanup the caller sends next is applied after it.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass, field

from etcdlock._core.connection import Connection
from etcdlock._core.errors import ClientClosedError, ConnectionFailedError, EtcdError, EtcdTimeoutError
from etcdlock._core.tasks import TaskOwner
from etcdlock._wire import methods
from etcdlock._wire import rpc_pb2 as pb

MAX_BATCH = 64  # etcd's default --max-txn-ops is 128


def _closed() -> ClientClosedError:
    return ClientClosedError("the etcdlock client was closed before this request was answered")


@dataclass(eq=False)  # compared and hashed by identity
class _Entry:
    request: pb.TxnRequest
    conflict: bytes
    order: bytes
    timeout: float | None
    future: asyncio.Future[pb.TxnResponse] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class TxnBatcher:
    def __init__(self, conn: Connection, tasks: TaskOwner) -> None:
        self._conn = conn
        self._tasks = tasks
        self._pending: deque[_Entry] = deque()
        self._busy: set[bytes] = set()  # order keys in flight
        self._names_in_flight: Counter[bytes] = Counter()
        self._scheduled = False
        # A batch came back last: the callers it woke send their next requests in the coming turn, and
        # sending the first of them alone (nothing is in flight at that moment) would split every such
        # wave into two RPCs. Cleared by the next batch of one, i.e. once the load is gone.
        self._after_batch = False
        self._waiting: set[_Entry] = set()  # entries whose caller awaits them
        # Counters, read by tests and for diagnosis.
        self.rpcs_in_flight = 0
        self.batches_sent = 0
        self.requests_batched = 0

    async def txn(
        self, request: pb.TxnRequest, conflict: bytes, order: bytes, timeout: float | None = None
    ) -> pb.TxnResponse:
        if (
            order not in self._busy
            and not self._pending
            and not self._after_batch
            and not self._busy_with_others(conflict)
        ):
            return await self._send_alone_now(request, conflict, order, timeout)
        entry = _Entry(request, conflict, order, timeout)
        self._pending.append(entry)
        self._schedule()
        # The caller awaits the entry's own future (no shield: one event-loop turn less on every reply).
        # Cancelling the caller cancels that future: a request still queued is then never sent (the flush
        # skips it), one in flight completes unread.
        self._waiting.add(entry)
        try:
            return await entry.future
        finally:
            self._waiting.discard(entry)

    def close(self) -> None:
        """The client is closing and its tasks are cancelled: answer every caller still waiting, including
        those whose flush or send task was cancelled before it ran."""
        self._pending.clear()
        for entry in list(self._waiting):
            if not entry.future.done():
                entry.future.set_exception(_closed())

    def _busy_with_others(self, conflict: bytes) -> bool:
        """An RPC of another lock name is in flight: queue, a batch is likely to form this turn."""
        return any(name != conflict for name in self._names_in_flight)

    async def _send_alone_now(
        self, request: pb.TxnRequest, conflict: bytes, order: bytes, timeout: float | None
    ) -> pb.TxnResponse:
        self.rpcs_in_flight += 1
        self._busy.add(order)
        self._names_in_flight[conflict] += 1
        # The RPC runs in a task of its own and the caller waits on a future of its own: a cancelled caller
        # only stops waiting, and the request keeps its order key until etcd answered. Cancelling the call
        # itself would not unsend it: etcd may still apply it, after a cleanup the caller sends next.
        rpc: asyncio.Task[pb.TxnResponse] = self._tasks.spawn(
            self._conn.unary(methods.TXN, request, timeout), "txn"
        )
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def finished(_: object) -> None:
            if not rpc.cancelled():
                rpc.exception()  # retrieved: a caller that stopped waiting will never look
            self.rpcs_in_flight -= 1
            self._busy.discard(order)
            self._names_in_flight[conflict] -= 1
            if not self._names_in_flight[conflict]:
                del self._names_in_flight[conflict]
            self._schedule()
            if not answered.done():
                answered.set_result(None)

        rpc.add_done_callback(finished)
        await answered
        if rpc.cancelled():
            raise _closed()  # only the client's close cancels it
        return rpc.result()

    def _schedule(self) -> None:
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Runs at the end of the loop turn it was scheduled in: what was queued meanwhile goes together."""
        self._scheduled = False
        for batch in self._take_batches():
            self._tasks.spawn(self._send(*batch), "txn-batch")

    def _take_batches(self) -> list[tuple[list[_Entry], set[bytes], set[bytes]]]:
        """Group the queue into batches and mark them in flight. A request whose order key is in flight
        stays queued; it is flushed when that RPC returns."""
        batches: list[tuple[list[_Entry], set[bytes], set[bytes]]] = []
        while self._pending:
            batch: list[_Entry] = []
            names: set[bytes] = set()
            orders: set[bytes] = set()
            kept: deque[_Entry] = deque()
            while self._pending and len(batch) < MAX_BATCH:
                e = self._pending.popleft()
                if e.future.done():
                    continue
                if e.order in self._busy or e.order in orders or e.conflict in names:
                    kept.append(e)  # its key is in flight, or its name is in this batch: a later one
                else:
                    batch.append(e)
                    names.add(e.conflict)
                    orders.add(e.order)
            self._pending.extendleft(reversed(kept))
            if not batch:
                break
            self.rpcs_in_flight += 1
            self._busy |= orders
            self._names_in_flight.update(names)
            batches.append((batch, orders, names))
        return batches

    async def _send(self, batch: list[_Entry], orders: set[bytes], names: set[bytes]) -> None:
        try:
            if len(batch) == 1:
                self._after_batch = False
                await self._one(batch[0])
                return
            timeout = max((e.timeout or self._conn.default_timeout) for e in batch)
            outer = pb.TxnRequest(success=[pb.RequestOp(request_txn=e.request) for e in batch])
            try:
                reply = await self._conn.unary(methods.TXN, outer, timeout)
            except (ConnectionFailedError, EtcdTimeoutError) as e:
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(e)
                return
            except EtcdError:
                # Something in the batch was refused: let every request answer for itself.
                await asyncio.gather(*(self._one(e) for e in batch))
                return
            self.batches_sent += 1
            self.requests_batched += len(batch)
            self._after_batch = True
            for entry, op in zip(batch, reply.responses, strict=True):
                inner = op.response_txn
                inner.header.CopyFrom(reply.header)
                if not entry.future.done():
                    entry.future.set_result(inner)
        except BaseException as e:  # cancelled (client closing) or a bug: nobody may wait forever
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(e if isinstance(e, Exception) else _closed())
            if not isinstance(e, Exception):
                raise
        finally:
            self.rpcs_in_flight -= 1
            self._busy -= orders
            self._names_in_flight.subtract(names)
            for name in names:
                if self._names_in_flight[name] <= 0:
                    del self._names_in_flight[name]
            self._schedule()

    async def _one(self, entry: _Entry) -> None:
        try:
            reply = await self._conn.unary(methods.TXN, entry.request, entry.timeout)
        except Exception as e:
            if not entry.future.done():
                entry.future.set_exception(e)
            return
        if not entry.future.done():
            entry.future.set_result(reply)
