"""A lock worker for the safety checker: one per process, run as `python -m etcdlock._chaos.worker CONFIG`.

Loop until SIGTERM: pick a name, acquire it (own session, the plain client path: `client.lock(...)`, or
for recipe="election" a campaign with the worker's name as its proposal, or for recipe="semaphore" a slot of
a semaphore of `limit`), then make WRITES writes to the fenced resource, each preceded by `await
ensure_held()`: a holder that has been told it lost the lock stops there. With txn_writes, the check before
each write is a write to etcd guarded by ownership instead (`lock.txn`), which must raise LockLost once the
lock is not ours. A semaphore's holder registers its token with the (counting) resource when it gets in
and unregisters it when it lets go. Release, and go again. Every step is logged as one JSON line, written
through at once, so the checker has the record even of a process it kills; each ownership check that passed
is logged as "checked", with the moment it was asked, so the checker can tell one that passed after
another process had acquired the lock.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import etcdlock
from etcdlock import Client
from etcdlock._core.errors import EtcdError
from etcdlock._core.txn import Op
from etcdlock._recipes.errors import LockLost
from etcdlock._recipes.holdable import Holdable

RECIPES = ("lock", "election", "semaphore")


@dataclass(frozen=True)
class WorkerConfig:
    worker: str
    endpoints: list[str]
    names: list[str]
    resource: str  # host:port of the fenced resource
    log_path: str
    ttl: int = 3
    acquire_timeout: float = 30.0  # longer than any fault: a timeout means a wake-up was missed
    call_timeout: float = 2.0
    writes: int = 4
    write_gap: float = 0.02
    seed: int = 0
    # A broken holder that never checks whether it still holds the lock: only for proving that the checker
    # catches what such a holder does.
    ignore_loss: bool = False
    txn_writes: bool = False  # check ownership by a guarded write to etcd (lock.txn), not ensure_held()
    lease_margin: float | None = None  # the client's lease safety margin; None: the library's default
    recipe: str = "lock"  # one of RECIPES: what each name is
    limit: int = 1  # a semaphore's limit

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> WorkerConfig:
        return cls(**json.loads(text))


class EventLog:
    def __init__(self, path: str, worker: str) -> None:
        self._f: TextIO = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._worker = worker

    def emit(self, ev: str, **fields: Any) -> None:
        record = {"ev": ev, "t": time.monotonic(), "worker": self._worker, **fields}
        self._f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._f.close()


class FenceClient:
    """One connection to the fenced resource; one write in flight at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    async def connect(cls, address: str) -> FenceClient:
        host, port = address.rsplit(":", 1)
        return cls(*await asyncio.open_connection(host, int(port)))

    async def write(self, name: str, token: int, worker: str, seq: int) -> bool:
        return await self._ask(f"W {name} {token} {worker} {seq}")

    async def enter(self, name: str, token: int, worker: str) -> bool:
        """Register TOKEN as a holder of NAME (the counting resource of a semaphore)."""
        return await self._ask(f"E {name} {token} {worker} 0")

    async def leave(self, name: str, token: int, worker: str) -> bool:
        return await self._ask(f"X {name} {token} {worker} 0")

    async def _ask(self, request: str) -> bool:
        self._writer.write(f"{request}\n".encode())
        reply = await self._reader.readline()
        if not reply:
            raise ConnectionError("the fenced resource closed the connection")
        return reply.startswith(b"OK")

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


def data_key(name: str) -> str:
    """What a txn-writing holder writes in etcd: beside the lock's queue (name + "/"), not in it."""
    return name + ".data"


async def check_ownership(
    cfg: WorkerConfig, log: EventLog, lock: Holdable, token: int, lease: int, seq: int
) -> None:
    """Raise LockLost unless the lock is still ours; log the check that passed ("checked")."""
    asked = time.monotonic()
    if cfg.txn_writes:
        put = Op.put(data_key(lock.name), f"{cfg.worker} {token} {seq}", lease=lease)
        result = await lock.txn([], [put])
        log.emit("txn", name=lock.name, token=token, seq=seq, sent=asked, ok=result.succeeded)
        if not result.succeeded:
            # Lock.txn must raise LockLost when its ownership compare fails; the checker counts this.
            raise LockLost(f"lock {lock.name!r}: txn failed without raising LockLost")
        if not lock.held:
            # The txn proved ownership when etcd ran it, but the loss may have been signalled before this
            # task resumed: the fenced write below is guarded by what is known now, with no await between.
            raise LockLost(f"lock {lock.name!r} lost while its txn came back: {lock.lost_reason}")
        via = "txn"
    else:
        await lock.ensure_held()
        via = "ensure_held"
    log.emit("checked", name=lock.name, token=token, asked=asked, via=via)


def holdable(cfg: WorkerConfig, client: Client, name: str) -> Holdable:
    """What this worker takes on NAME: a lock, a term of the election NAME, or a slot of the semaphore."""
    if cfg.recipe == "election":
        return client.election(name).campaign(cfg.worker, ttl=cfg.ttl, timeout=cfg.acquire_timeout)
    if cfg.recipe == "semaphore":
        return client.semaphore(name, cfg.limit, ttl=cfg.ttl, timeout=cfg.acquire_timeout).slot()
    assert cfg.recipe == "lock", cfg.recipe
    return client.lock(name, ttl=cfg.ttl, timeout=cfg.acquire_timeout)


async def hold_and_write(
    cfg: WorkerConfig, log: EventLog, client: Client, fence: FenceClient, name: str
) -> None:
    lock = holdable(cfg, client, name)
    if not await lock.acquire():
        log.emit("timeout", name=name)
        return
    token, lease = lock.token, lock.lease
    log.emit("acquire", name=name, token=token, lease=lease)
    lock.add_lost_callback(lambda reason: log.emit("lost", name=name, token=token, reason=reason))
    try:
        if cfg.recipe == "semaphore":
            await fence.enter(name, token, cfg.worker)
        await write_while_held(cfg, log, fence, lock, token, lease)
    finally:
        try:
            if cfg.recipe == "semaphore":
                await fence.leave(name, token, cfg.worker)
        finally:
            await lock.release()
            log.emit("release", name=name, token=token)


async def write_while_held(
    cfg: WorkerConfig, log: EventLog, fence: FenceClient, lock: Holdable, token: int, lease: int
) -> None:
    """The holder's work: WRITES fenced writes, each after a check that it still holds."""
    name = lock.name
    for seq in range(cfg.writes):
        try:
            if not cfg.ignore_loss:
                await check_ownership(cfg, log, lock, token, lease, seq)
        except LockLost as e:
            log.emit("stopped", name=name, token=token, reason=str(e))
            return
        sent = time.monotonic()
        accepted = await fence.write(name, token, cfg.worker, seq)
        log.emit("write", name=name, token=token, seq=seq, sent=sent, accepted=accepted)
        await asyncio.sleep(cfg.write_gap)  # the work between writes


async def connected(cfg: WorkerConfig, log: EventLog) -> Client:
    """A connected client; a service starting during a fault keeps trying, as a real one would."""
    while True:
        if cfg.lease_margin is None:
            client = Client(cfg.endpoints, timeout=cfg.call_timeout)
        else:
            client = Client(cfg.endpoints, timeout=cfg.call_timeout, lease_margin=cfg.lease_margin)
        try:
            return await client.connect()
        except EtcdError as e:
            await client.close()
            log.emit("error", name="", error=f"connect: {type(e).__name__}: {e}")
            await asyncio.sleep(0.1)  # back off before the next attempt


async def work(cfg: WorkerConfig, log: EventLog, fence: FenceClient) -> None:
    rng = random.Random(cfg.seed)
    async with await connected(cfg, log) as client:
        log.emit("ready")
        while True:
            name = rng.choice(cfg.names)
            try:
                await hold_and_write(cfg, log, client, fence, name)
            except (EtcdError, ConnectionError) as e:
                log.emit("error", name=name, error=f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.1)  # back off before the next attempt


async def run(cfg: WorkerConfig) -> None:
    log = EventLog(cfg.log_path, cfg.worker)
    log.emit("start", pid=os.getpid(), module=etcdlock.__file__)  # the checker makes sure it is its own
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    fence = await FenceClient.connect(cfg.resource)
    try:
        worker = asyncio.create_task(work(cfg, log, fence), name="etcdlock-chaos-worker")
        stopping = asyncio.create_task(stop.wait(), name="etcdlock-chaos-stop")
        await asyncio.wait([worker, stopping], return_when=asyncio.FIRST_COMPLETED)
        # A clean shutdown cancels whatever the worker is doing: acquire, writes or release. The library
        # must give everything back on that path too; the checker counts what is left.
        worker.cancel()
        stopping.cancel()
        results = await asyncio.gather(worker, stopping, return_exceptions=True)
        failure = results[0]
        if isinstance(failure, BaseException) and not isinstance(failure, asyncio.CancelledError):
            log.emit("crash", error=f"{type(failure).__name__}: {failure}")
    finally:
        await fence.close()
        log.emit("exit")
        log.close()


def main() -> None:
    faulthandler.enable()  # a native crash leaves a traceback in the worker's stderr file
    cfg = WorkerConfig.from_json(sys.argv[1])
    asyncio.run(run(cfg))


if __name__ == "__main__":
    main()
