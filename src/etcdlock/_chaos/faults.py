"""The fault context: what a scenario's fault schedule works with (FaultContext: the cluster, the workers,
who holds each name per etcd, the moments of the fault and the heal, and the facts and failures the
schedule reports), and the two ways a schedule catches a holder in the middle of a hold (running_holder,
pause_a_holder)."""

from __future__ import annotations

import random
import time
from collections.abc import Collection, Iterator
from typing import Any

from etcdlock._chaos.harness import FaultCluster, wait_for
from etcdlock._chaos.observers import Events
from etcdlock._chaos.report import CheckerConfig
from etcdlock._chaos.resource import crowds
from etcdlock._sync import SyncClient


class FaultContext:
    """What a scenario's fault schedule gets to work with."""

    def __init__(
        self,
        fc: FaultCluster,
        observer: SyncClient,
        names: list[str],
        events: Events,
        cfg: CheckerConfig,
        *,
        seed: int = 0,
        limit: int = 1,
        deleted: dict[str, float] | None = None,
    ) -> None:
        self.fc = fc
        self.observer = observer
        self.names = names
        self.events = events
        self.cfg = cfg
        self.writes_per_hold = cfg.writes
        self.limit = limit  # holders of a name at once: the lowest LIMIT keys
        self.deleted = {} if deleted is None else deleted  # key -> when the checker's watch saw it go
        self.caught_at: float | None = None  # when pause_a_holder stopped (or killed) the holder it caught
        self.fault_at: float | None = None
        self.healed_at: float | None = None
        self.pauses: list[tuple[str, float, float]] = []  # (worker, paused at, resumed at)
        self.revoked: list[tuple[int, float]] = []  # (lease, revoked from outside by) for txn-after-revoke
        self.rng = random.Random(seed)  # a scenario's random choices: the same for the same run number
        self.killed: list[str] = []
        self.checks: list[str] = []
        self.details: list[str] = []
        self.metrics: dict[str, float] = {}
        self.failures: list[str] = []

    def mark_fault(self) -> None:
        self.fault_at = time.monotonic()

    def mark_healed(self) -> None:
        self.healed_at = time.monotonic()

    def hold(self, seconds: float) -> None:
        """Let the fault last: the passage of time is the fault itself here, not a synchronisation."""
        time.sleep(seconds)

    def wait(self, cond: object, timeout: float, what: str) -> None:
        wait_for(cond, timeout, what)

    def wait_each_acquired(self, times: int, since: float, what: str, timeout: float = 45) -> None:
        """Wait until every lock name was acquired `times` times after `since` (work went on)."""
        self.wait(
            lambda: all(self.events.acquisitions_since(n, since) >= times for n in self.names), timeout, what
        )

    def wait_taken_over(self, name: str, token: int, from_whom: str) -> dict[str, Any]:
        """Wait until another process acquires NAME after the holder with TOKEN; its acquire event."""

        def taken() -> dict[str, Any] | None:
            return next(
                (e for e in self.events.of("acquire") if e["name"] == name and e["token"] > token), None
            )

        self.wait(
            lambda: taken() is not None, self.cfg.ttl + 20, f"another process to take {name} from {from_whom}"
        )
        found = taken()
        assert found is not None
        return found

    def holders(self) -> Iterator[tuple[str, str, int, int]]:
        """(name, worker, lease, token) of each holder of each name per etcd right now."""
        for name in self.names:
            for found in self.holders_of(name):
                yield (name, *found)

    def holders_of(self, name: str) -> list[tuple[str, int, int]]:
        """(worker, lease, token) of NAME's current holders per etcd: the keys of the `limit` lowest
        create revisions (one for a lock or an election), those a worker has reported acquiring."""
        r = self.observer.get(
            name + "/", prefix=True, sort_order="ascend", sort_target="create", limit=self.limit
        )
        acquired = {(e["name"], e["lease"]): str(e["worker"]) for e in self.events.of("acquire")}
        return [
            (acquired[(name, kv.lease)], kv.lease, kv.create_revision)
            for kv in r.kvs
            if (name, kv.lease) in acquired
        ]

    def worker(self, name: str) -> Any:
        return next(w for w in self.fc.workers if w.cfg.worker == name)

    def slot_taken_over(self, name: str, token: int, since: float) -> float | None:
        """When `limit` processes other than the holder with TOKEN first acted on NAME at once, one of
        them having acquired after SINCE: the moment TOKEN's place went to another (the others alone
        fill the semaphore); None if that has not happened yet. Each acts from its acquire to its last
        write sent, within the time etcd counted it among the holders."""
        spans: dict[int, list[float]] = {}
        for e in self.events.all():
            if e.get("name") != name or e.get("token") in (None, token):
                continue
            if e["ev"] == "acquire":
                spans[e["token"]] = [float(e["t"]), float(e["t"])]
            elif e["ev"] == "write" and e["token"] in spans:
                spans[e["token"]][1] = float(e["sent"])
        full = [
            max(spans[t][0] for t in crowd)
            for crowd in crowds(spans, self.limit - 1)
            if max(spans[t][0] for t in crowd) > since
        ]
        return min(full, default=None)

    def writes_done(self, worker: str, token: int) -> int:
        return sum(1 for e in self.events.of("write") if e["worker"] == worker and e["token"] == token)

    def learned_loss(self, worker: str, token: int) -> dict[str, Any] | None:
        """WORKER's first sign that it lost the lock it got with TOKEN: its `lost` signal, or a check
        that raised LockLost ("stopped"); None if it has not learned yet."""
        return next(
            (
                e
                for e in self.events.all()
                if e["worker"] == worker and e.get("token") == token and e["ev"] in ("lost", "stopped")
            ),
            None,
        )


def running_holder(
    ctx: FaultContext, *, among: Collection[str] | None = None, early: float = 0.5, timeout: float = 30
) -> tuple[str, str, int, int]:
    """A worker (one of AMONG, if given) that holds a lock per etcd and has made fewer than EARLY of its
    writes, so a fault now finds it with work still to do. Returns (worker, name, lease, token)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, worker, lease, token in ctx.holders():
            early_enough = ctx.writes_done(worker, token) < ctx.writes_per_hold * early
            if (among is None or worker in among) and early_enough:
                return worker, name, lease, token
        time.sleep(0.01)  # poll the queue again (a condition wait with the deadline above)
    raise AssertionError(f"no worker{' of ' + str(sorted(among)) if among else ''} caught early in a hold")


def pause_a_holder(
    ctx: FaultContext, *, kill: bool = False, mid_work: bool = False
) -> tuple[str, str, int, int]:
    """Stop (or kill) a process while it holds a lock, and make sure it did hold it at that moment.
    mid_work: only in the first half of its writes, so that it still has work to do when it resumes
    (a holder caught while already releasing has nothing left to learn the loss for).

    Returns (worker, name, lease, token)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for name, worker, lease, token in ctx.holders():
            proc = ctx.worker(worker)
            caught = time.monotonic()
            proc.pause()
            # Did it still hold the lock when it stopped? Its key must still be there.
            again = ctx.observer.get(f"{name}/{lease:x}", keys_only=True)
            early = ctx.writes_done(worker, token) < ctx.writes_per_hold / 2
            if again.kvs and again.kvs[0].create_revision == token and (early or not mid_work):
                if kill:
                    proc.kill()
                    ctx.killed.append(worker)
                ctx.caught_at = caught  # its lease has not been renewed since
                return worker, name, lease, token
            proc.resume()  # it had let go in between: try again
        time.sleep(0.01)  # poll the queue again (a condition wait with the deadline above)
    raise AssertionError("could not catch a worker while it held a lock")
