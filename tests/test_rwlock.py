"""The read/write lock (`client.rwlock(name)`) on real etcd: readers overlap across clients, a writer excludes
everybody, queue order decides (a writer is not overtaken by readers that came after it, the readers queued
behind a writer enter together), timeouts, cancellation and losses leave nothing behind, keys are
NAME/read/<lease hex> and NAME/write/<lease hex> (etcd's contrib/recipes RWMutex prefixes).

Every test keeps its keys under its own `ns` and ends with `assert_clean`. Tests wait on conditions with
deadlines; a negative check ("still waiting") looks at a short window.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from etcdlock import AlreadyHeldError, Client, ConfigError, LockLost, LockTimeout, ReadLock, WriteLock
from etcdlock._recipes.holdable import Holdable
from etcdlock.testing import EtcdCluster
from tests.holdables import contender_of, is_waiting, wakeups
from tests.occupancy import RWCheck, holder_id
from tests.test_lock import (
    assert_clean,
    baseline,
    cancel_at,
    grants_metric,
    keys_under,
    second_client,
)
from tests.waiting import wait_until

STILL_WAITING_WINDOW = 0.3


async def still_waiting(*handles: Holdable) -> None:
    """A negative check: none of the handles gets in during a short window (each stays parked)."""
    deadline = time.monotonic() + STILL_WAITING_WINDOW
    while time.monotonic() < deadline:
        for h in handles:
            assert not h.held, f"{h!r} got in"
            assert is_waiting(h), f"{h!r} is not parked on the queue"
        await asyncio.sleep(0.02)


class Holder:
    """A handle acquired in a task of its own, held until `leave()`: for queue-order scenarios."""

    def __init__(self, handle: Holdable) -> None:
        self.handle = handle
        self.entered = asyncio.Event()
        self._leave = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"test:holder:{handle!r}")

    async def _run(self) -> None:
        async with self.handle:
            self.entered.set()
            await self._leave.wait()

    async def parked(self) -> None:
        await wait_until(lambda: is_waiting(self.handle), 10, f"{self.handle!r} parked")

    async def inside(self) -> None:
        await asyncio.wait_for(self.entered.wait(), 10)

    async def leave(self) -> None:
        self._leave.set()
        await asyncio.wait_for(self.task, 10)

    @property
    def key(self) -> str:
        return contender_of(self.handle).key.decode()

    @property
    def token(self) -> int:
        return contender_of(self.handle).token

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def stop_all(holders: list[Holder]) -> None:
    for h in holders:
        await h.stop()


# ---------------------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------------------


async def test_keys_values_and_tokens(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "rw"
    rw = client.rwlock(name, timeout=5)
    async with rw.read() as r:
        assert isinstance(r, ReadLock)
        assert r.key == f"{name}/read/{r.lease:x}"
        kv = (await client.get(r.key)).kvs[0]
        assert (kv.create_revision, kv.value, kv.lease) == (r.token, b"", r.lease)
        read_token = r.token
    async with rw.write() as w:
        assert isinstance(w, WriteLock)
        assert w.key == f"{name}/write/{w.lease:x}"
        kv = (await client.get(w.key)).kvs[0]
        assert (kv.create_revision, kv.value, kv.lease) == (w.token, b"", w.lease)
        assert w.token > read_token
        assert await keys_under(client, ns) == {w.key: w.token}
    assert await keys_under(client, ns) == {}
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# Sharing and exclusion
# ---------------------------------------------------------------------------------------------------------


async def test_readers_overlap_across_clients(client: Client, ns: str, etcd_endpoints: list[str]) -> None:
    base = await baseline(client)
    name = ns + "rw"
    async with second_client(etcd_endpoints) as c2, second_client(etcd_endpoints) as c3:
        readers = [Holder(c.rwlock(name, timeout=10).read()) for c in (client, c2, c3) for _ in range(2)]
        try:
            for r in readers:
                await r.inside()
            assert all(r.handle.held for r in readers)
            assert [wakeups(r.handle) for r in readers] == [0] * len(readers), "a reader waited for a reader"
            under = await keys_under(client, name + "/")
            assert under == {r.key: r.token for r in readers}
            assert all(k.startswith(f"{name}/read/") for k in under)
            for r in readers:
                await r.leave()
        finally:
            await stop_all(readers)
    await assert_clean(client, ns, base)


async def test_writer_excludes_readers_and_writers(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    """W1 holds; R1, R2, W2 queue in that order. W1 leaves: R1 and R2 enter together, W2 waits for both."""
    base = await baseline(client)
    name = ns + "rw"
    async with second_client(etcd_endpoints) as other:
        w1 = Holder(client.rwlock(name, timeout=20).write())
        holders = [w1]
        try:
            await w1.inside()
            r1 = Holder(other.rwlock(name, timeout=20).read())
            holders.append(r1)
            await r1.parked()
            r2 = Holder(client.rwlock(name, timeout=20).read())
            holders.append(r2)
            await r2.parked()
            w2 = Holder(other.rwlock(name, timeout=20).write())
            holders.append(w2)
            await w2.parked()
            assert w1.token < r1.token < r2.token < w2.token
            await still_waiting(r1.handle, r2.handle, w2.handle)

            await w1.leave()
            await r1.inside()
            await r2.inside()
            assert wakeups(r1.handle) == wakeups(r2.handle) == 1
            await still_waiting(w2.handle)
            await r1.leave()
            await still_waiting(w2.handle)
            assert wakeups(w2.handle) == 0, "the writer was woken while a reader still held"
            await r2.leave()
            await w2.inside()
            assert wakeups(w2.handle) == 1
            assert await keys_under(client, ns) == {w2.key: w2.token}
            await w2.leave()
        finally:
            await stop_all(holders)
    await assert_clean(client, ns, base)


async def test_writer_is_not_overtaken_by_later_readers(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    """R1 holds, W queues, then R2 comes: R2 waits behind W although only a reader holds (no starvation)."""
    base = await baseline(client)
    name = ns + "rw"
    async with second_client(etcd_endpoints) as other:
        r1 = Holder(client.rwlock(name, timeout=20).read())
        holders = [r1]
        try:
            await r1.inside()
            w = Holder(other.rwlock(name, timeout=20).write())
            holders.append(w)
            await w.parked()
            r2 = Holder(client.rwlock(name, timeout=20).read())
            holders.append(r2)
            await r2.parked()
            interest = contender_of(r2.handle)._interest
            assert interest is not None and set(interest.waiting_on) == {w.key.encode()}
            await still_waiting(w.handle, r2.handle)
            # Nor does a reader's single attempt (timeout=0) go past the queued writer.
            assert not await client.rwlock(name).read().acquire(timeout=0)

            await r1.leave()
            await w.inside()
            assert wakeups(w.handle) == 1
            await still_waiting(r2.handle)
            await w.leave()
            await r2.inside()
            assert wakeups(r2.handle) == 1
            await r2.leave()
        finally:
            await stop_all(holders)
    await assert_clean(client, ns, base)


async def test_readers_queued_behind_a_writer_enter_together(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "rw"
    async with second_client(etcd_endpoints) as other:
        w = Holder(client.rwlock(name, timeout=20).write())
        holders = [w]
        try:
            await w.inside()
            readers = [Holder((client, other)[i % 2].rwlock(name, timeout=20).read()) for i in range(5)]
            holders += readers
            for r in readers:
                await r.parked()
            await still_waiting(*(r.handle for r in readers))
            await w.leave()
            for r in readers:
                await r.inside()
            assert all(r.handle.held for r in readers), "not every queued reader holds at once"
            assert [wakeups(r.handle) for r in readers] == [1] * 5
            assert set(await keys_under(client, ns)) == {r.key for r in readers}
            for r in readers:
                await r.leave()
        finally:
            await stop_all(holders)
    await assert_clean(client, ns, base)


async def test_mixed_readers_and_writers_never_overlap(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    """3 clients, each with 3 reader tasks and 1 writer task, 5 rounds each, checked twice: in this process
    (one event loop, exact) and in etcd with the Go occupancy protocol."""
    base = await baseline(client)
    name, rounds = ns + "rw", 5
    check = RWCheck(client, ns + "check/")
    readers_in = writers_in = most_readers = 0
    overlaps: list[str] = []
    done = {"read": 0, "write": 0}

    async def worker(c: Client, mode: str) -> None:
        nonlocal readers_in, writers_in, most_readers
        rw = c.rwlock(name, timeout=60)
        for _ in range(rounds):
            hid = holder_id()
            if mode == "read":
                async with rw.read():
                    readers_in += 1
                    most_readers = max(most_readers, readers_in)
                    if writers_in:
                        overlaps.append(f"reader entered with {writers_in} writer(s) inside")
                    await check.enter_shared(hid)
                    await check.exit_shared(hid)
                    readers_in -= 1
            else:
                async with rw.write():
                    writers_in += 1
                    if writers_in > 1 or readers_in:
                        overlaps.append(
                            f"writer entered with {writers_in - 1} writer(s), {readers_in} reader(s)"
                        )
                    await check.enter_exclusive(hid)
                    await check.exit_exclusive(hid)
                    writers_in -= 1
            done[mode] += 1

    async with second_client(etcd_endpoints) as c2, second_client(etcd_endpoints) as c3:
        workers = [
            asyncio.create_task(worker(c, mode), name=f"test:rw-{mode}")
            for c in (client, c2, c3)
            for mode in ("read", "read", "read", "write")
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*workers), 120)
        finally:
            for t in workers:
                t.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    assert not overlaps, overlaps
    assert not check.violations, check.violations
    assert done == {"read": 9 * rounds, "write": 3 * rounds}
    assert most_readers > 1, "readers never overlapped"
    await client.delete(ns + "check/", prefix=True)
    await assert_clean(client, ns, base)


async def test_nested_names_are_not_in_the_writers_way(client: Client, ns: str) -> None:
    """Keys of other names under NAME/ (more than one page of them) neither block a writer nor hide the
    reader below them that does."""
    base = await baseline(client)
    name = ns + "rw"
    rw = client.rwlock(name, timeout=10)
    reader = Holder(rw.read())
    holders = [reader]
    try:
        await reader.inside()
        for i in range(40):
            await client.put(f"{name}/other{i:02d}/x", "")  # keys of names nested under NAME
        writer = Holder(rw.write())
        holders.append(writer)
        await writer.parked()
        interest = contender_of(writer.handle)._interest
        assert interest is not None and set(interest.waiting_on) == {reader.key.encode()}
        await still_waiting(writer.handle)
        await reader.leave()
        await writer.inside()
        await writer.leave()
        # Alone with them, a writer gets in at once.
        async with rw.write(timeout=2):
            pass
    finally:
        await stop_all(holders)
        await client.delete(f"{name}/other", prefix=True)
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# Timeouts and cancellation
# ---------------------------------------------------------------------------------------------------------


async def test_timeouts_leave_no_key(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "rw"
    rw = client.rwlock(name)
    async with rw.write(timeout=5) as w:
        t0 = time.monotonic()
        with pytest.raises(LockTimeout) as ei:
            async with rw.read(timeout=0.3):
                pytest.fail("read while written")
        assert 0.3 <= time.monotonic() - t0 < 2.0
        assert name in str(ei.value) and "read lock" in str(ei.value)
        assert not await rw.read().acquire(timeout=0)
        assert not await rw.write().acquire(timeout=0.3)
        assert await keys_under(client, ns) == {w.key: w.token}
    async with rw.read(timeout=5) as r:
        assert not await rw.write().acquire(timeout=0.3)
        with pytest.raises(LockTimeout, match="write lock"):
            async with rw.write(timeout=0.3):
                pytest.fail("written while read")
        # Readers share: one attempt (timeout=0) of another reader gets in.
        other = rw.read()
        assert await other.acquire(timeout=0)
        await other.release()
        assert await keys_under(client, ns) == {r.key: r.token}
    await assert_clean(client, ns, base)


async def test_cancelled_writer_lets_the_readers_behind_it_in(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    """R1 holds, W waits, R2 waits behind W. Cancelling W takes its key back: R2 enters at once, next to
    R1."""
    base = await baseline(client)
    name = ns + "rw"
    async with second_client(etcd_endpoints) as other:
        r1 = Holder(client.rwlock(name, timeout=20).read())
        holders = [r1]
        try:
            await r1.inside()
            w = Holder(other.rwlock(name, timeout=20).write())
            holders.append(w)
            await w.parked()
            r2 = Holder(client.rwlock(name, timeout=20).read())
            holders.append(r2)
            await r2.parked()
            w_key = w.key
            w.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await w.task
            await r2.inside()
            assert wakeups(r2.handle) == 1 and r1.handle.held
            under = await keys_under(client, ns)
            assert w_key not in under and set(under) == {r1.key, r2.key}
            await r1.leave()
            await r2.leave()
        finally:
            await stop_all(holders)
    await assert_clean(client, ns, base)


@pytest.mark.parametrize("mode", ["read", "write"])
async def test_cancel_at_every_point_leaves_no_key(client: Client, ns: str, mode: str) -> None:
    """A waiting reader (behind a writer) or writer (behind a reader), cancelled at many points."""
    base = await baseline(client)
    name = ns + "rw"
    rw = client.rwlock(name, timeout=30)
    blocker = rw.write() if mode == "read" else rw.read()
    assert await blocker.acquire()
    try:
        for step in range(0, 60, 2):
            handle = rw.read() if mode == "read" else rw.write()
            outcome = await cancel_at(handle.acquire(), step)
            assert not outcome.done_before_cancel, f"step {step}: acquired past the {blocker!r}"
            assert outcome.error is None, f"step {step}: {outcome.error!r}"
            assert not handle.held
            assert await keys_under(client, ns) == {blocker.key: blocker.token}, f"step {step}: key left"
    finally:
        await blocker.release()
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "how"), [("read", "revoke"), ("write", "delete"), ("write", "revoke")])
async def test_loss_fires_lost_and_lets_the_waiter_in(
    client: Client, ns: str, etcd_endpoints: list[str], mode: str, how: str
) -> None:
    base = await baseline(client)
    name = ns + "rw"
    async with second_client(etcd_endpoints) as other:
        rw = client.rwlock(name, timeout=5)
        waiter: Holder | None = None
        try:
            async with rw.read() if mode == "read" else rw.write() as held:
                # (Started once ours holds: a writer started before would have come first.)
                waiter = Holder(other.rwlock(name, timeout=20).write())
                await waiter.parked()
                fired: list[str] = []
                held.add_lost_callback(fired.append)
                if how == "revoke":
                    await other.revoke(held.lease)
                else:
                    assert (await other.delete(held.key)).deleted == 1
                await asyncio.wait_for(held.lost.wait(), 2)
                assert fired == [held.lost_reason] and not held.held
                with pytest.raises(LockLost):
                    await held.ensure_held()
                await waiter.inside()
                assert wakeups(waiter.handle) == 1
            assert waiter is not None
            assert await keys_under(client, ns) == {waiter.key: waiter.token}
            await waiter.leave()
        finally:
            if waiter is not None:
                await waiter.stop()
    await assert_clean(client, ns, base)


async def test_waiting_readers_key_deleted_fails_its_acquire(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "rw"
    async with second_client(etcd_endpoints) as other, client.rwlock(name, timeout=5).write() as w:
        reader = other.rwlock(name, timeout=20).read()
        waiting = asyncio.create_task(reader.acquire())
        try:
            await wait_until(lambda: is_waiting(reader), 5, "the reader parked")
            await client.delete(contender_of(reader).key)
            with pytest.raises(LockLost):
                await asyncio.wait_for(waiting, 2)
        finally:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        assert await keys_under(client, ns) == {w.key: w.token}
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# Sessions, handles, bad input
# ---------------------------------------------------------------------------------------------------------


async def test_explicit_session(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "rw"
    async with client.session(10) as s:
        rw = client.rwlock(name, session=s, timeout=5)
        async with rw.read() as r:
            assert r.lease == s.lease_id and r.key == f"{name}/read/{s.lease_id:x}"
            # One reader per session (one key NAME/read/<lease hex>).
            with pytest.raises(AlreadyHeldError):
                async with rw.read():
                    pytest.fail("two readers on one session")
        async with rw.write() as w:
            assert w.key == f"{name}/write/{s.lease_id:x}"
        assert s.lease_id in set(await client.leases())
        assert set(await client.leases()) - base.leases == {s.lease_id}
    await assert_clean(client, ns, base)


async def test_handles_are_reusable(client: Client, ns: str) -> None:
    base = await baseline(client)
    rw = client.rwlock(ns + "rw", timeout=5)
    for handle in (rw.read(), rw.write()):
        tokens: list[int] = []
        for _ in range(2):
            async with handle:
                tokens.append(handle.token)
        assert tokens[0] < tokens[1]
    await assert_clean(client, ns, base)


BAD: list[tuple[str, dict[str, Any]]] = [
    ("empty name", {"name": ""}),
    ("trailing slash", {"name": "{ns}rw/"}),
    ("non-str name", {"name": 3}),
    ("negative timeout", {"timeout": -1}),
    ("nan timeout", {"timeout": float("nan")}),
    ("ttl 0", {"ttl": 0}),
    ("float ttl", {"ttl": 1.5}),
]


@pytest.mark.parametrize(("what", "kwargs"), BAD, ids=[w for w, _ in BAD])
async def test_bad_input_is_a_config_error_before_anything_is_sent(
    client: Client, ns: str, etcd: EtcdCluster, what: str, kwargs: dict[str, Any]
) -> None:
    base = await baseline(client)
    granted = grants_metric(etcd)
    args: dict[str, Any] = {"name": ns + "rw", **kwargs}
    if isinstance(args["name"], str):
        args["name"] = args["name"].format(ns=ns)
    with pytest.raises(ConfigError):
        client.rwlock(args.pop("name"), **args)
    rw = client.rwlock(ns + "rw")
    for bad_timeout in (-1, True, float("inf")):
        with pytest.raises(ConfigError):
            rw.read(timeout=bad_timeout)
        with pytest.raises(ConfigError):
            rw.write(timeout=bad_timeout)
    assert grants_metric(etcd) == granted, f"{what}: a lease was granted"
    await assert_clean(client, ns, base)
