"""Our read/write lock against etcd's own Go recipe.RWMutex (contrib/recipes, via interop/go's `rwlock`
subcommand), on one name and real etcd: readers of both languages overlap; a writer of either language
excludes everybody of both; over many rounds neither side sees a violation of the shared occupancy check
(tests/occupancy.py RWCheck = interop/go/main.go's checker) and both sides make progress.

Every Go process is stopped by PID when its test ends (tests/go_interop.py); the check keys live outside
NAME/ (Go's writer waits for every key under NAME/).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import pytest

from etcdlock import Client
from tests.go_interop import GoProc, go_proc
from tests.holdables import is_waiting, wakeups
from tests.occupancy import RWCheck, holder_id
from tests.test_lock import assert_clean, baseline, keys_under
from tests.waiting import wait_until

# A negative check ("it still waits") needs a window.
STILL_WAITING_WINDOW = 0.5
# Go waits with watches from a past revision, which etcd answers on its 100 ms sync tick; a hand-over to Go
# takes about that, plus process scheduling on a loaded machine.
HANDOVER_BUDGET = 5.0
RUN_BUDGET = 120.0


async def stopped_cleanly(p: GoProc) -> None:
    """SIGTERM: the Go side unlocks, revokes its lease and exits 0 with `VIOLATIONS 0` last."""
    rc = await p.stop()
    assert rc == 0, p.describe()
    assert p.texts("VIOLATION ") == [], p.describe()
    assert p.texts()[-1] == "VIOLATIONS 0", p.describe()


def go_rwlock(
    name: str, mode: str, endpoints: list[str], *extra: str
) -> contextlib.AbstractAsyncContextManager[GoProc]:
    return go_proc("rwlock", "--name", name, "--mode", mode, *extra, endpoints=endpoints)


# ---------------------------------------------------------------------------------------------------------
# Sharing and exclusion, step by step
# ---------------------------------------------------------------------------------------------------------


async def test_go_and_our_readers_overlap(client: Client, ns: str, etcd_endpoints: list[str]) -> None:
    base = await baseline(client)
    name, check = ns + "rw", RWCheck(client, ns + "occ/")
    rw = client.rwlock(name, timeout=10)
    async with go_rwlock(name, "read", etcd_endpoints, "--check", check.prefix) as go:
        await go.wait_line("ACQUIRED read", HANDOVER_BUDGET)
        # Ours gets in next to Go's reader without waiting for it.
        async with rw.read() as ours:
            assert wakeups(ours) == 0
            hid = holder_id()
            await check.enter_shared(hid)
            under = await keys_under(client, name + "/")
            assert len(under) == 2 and all(k.startswith(f"{name}/read/") for k in under), under
            assert ours.key in under
            # ... and another Go reader next to both.
            async with go_rwlock(name, "read", etcd_endpoints, "--check", check.prefix) as go2:
                await go2.wait_line("ACQUIRED read", HANDOVER_BUDGET)

                async def three_inside() -> bool:
                    return len(await keys_under(client, check.readers)) == 3

                # Go prints ACQUIRED before its occupancy mark lands: wait for the mark, not the line.
                await wait_until(three_inside, HANDOVER_BUDGET, "three readers inside at once")
                assert go.texts("RELEASED") == [] and ours.held
                await stopped_cleanly(go2)
            await check.exit_shared(hid)
        await stopped_cleanly(go)
    assert not check.violations, check.violations
    assert await keys_under(client, ns) == {}
    await assert_clean(client, ns, base)


async def test_go_writer_excludes_our_readers_and_writers(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "rw"
    rw = client.rwlock(name, timeout=20)
    reader, writer = rw.read(), rw.write()
    tasks: list[asyncio.Task[bool]] = []
    try:
        async with go_rwlock(name, "write", etcd_endpoints) as go:
            await go.wait_line("ACQUIRED write", HANDOVER_BUDGET)
            tasks.append(asyncio.create_task(reader.acquire()))
            await wait_until(lambda: is_waiting(reader), 10, "our reader parked behind Go's writer")
            tasks.append(asyncio.create_task(writer.acquire()))
            await wait_until(lambda: is_waiting(writer), 10, "our writer parked")
            await go.assert_no_line("RELEASED", STILL_WAITING_WINDOW)
            assert not reader.held and not writer.held

            await stopped_cleanly(go)
            assert await asyncio.wait_for(tasks[0], HANDOVER_BUDGET)
            assert wakeups(reader) == 1 and not writer.held, "our writer got in next to our reader"
            await reader.release()
            assert await asyncio.wait_for(tasks[1], HANDOVER_BUDGET)
            assert await keys_under(client, ns) == {writer.key: writer.token}
            await writer.release()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await reader.release()
        await writer.release()
    await assert_clean(client, ns, base)


@pytest.mark.parametrize(("ours", "theirs"), [("write", "read"), ("write", "write"), ("read", "write")])
async def test_our_holder_excludes_go(
    client: Client, ns: str, etcd_endpoints: list[str], ours: str, theirs: str
) -> None:
    """Our writer keeps Go's reader and writer out, our reader keeps Go's writer out; each gets in after."""
    base = await baseline(client)
    name = ns + "rw"
    rw = client.rwlock(name, timeout=10)
    handle = rw.read() if ours == "read" else rw.write()
    assert await handle.acquire()
    try:
        async with go_rwlock(name, theirs, etcd_endpoints) as go:

            async def go_queued() -> bool:
                return len(await keys_under(client, f"{name}/{theirs}/")) == (2 if ours == theirs else 1)

            await wait_until(go_queued, 10, "Go's key queued")
            await go.assert_no_line("ACQUIRED", STILL_WAITING_WINDOW)
            released_at = time.monotonic()
            await handle.release()
            got = await go.wait_line(f"ACQUIRED {theirs}", HANDOVER_BUDGET)
            print(f"\nour {ours} -> Go {theirs} hand-over: {(got.at - released_at) * 1000:.1f} ms")
            await stopped_cleanly(go)
    finally:
        await handle.release()
    assert await keys_under(client, ns) == {}
    await assert_clean(client, ns, base)


async def test_go_writer_queued_before_our_reader_goes_first(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    """Our reader holds, Go's writer queues, our second reader comes after it: it waits behind Go's writer
    (queue order across languages, no writer starvation)."""
    base = await baseline(client)
    name = ns + "rw"
    rw = client.rwlock(name, timeout=20)
    first, second = rw.read(), rw.read()
    assert await first.acquire()
    waiting: asyncio.Task[bool] | None = None
    try:
        async with go_rwlock(name, "write", etcd_endpoints) as go:

            async def go_queued() -> bool:
                return len(await keys_under(client, f"{name}/write/")) == 1

            await wait_until(go_queued, 10, "Go's writer queued")
            waiting = asyncio.create_task(second.acquire())
            await wait_until(lambda: is_waiting(second), 10, "our second reader parked behind Go's writer")
            await go.assert_no_line("ACQUIRED", STILL_WAITING_WINDOW)
            assert not second.held

            await first.release()
            await go.wait_line("ACQUIRED write", HANDOVER_BUDGET)
            assert not second.held and not waiting.done()
            await stopped_cleanly(go)
            assert await asyncio.wait_for(waiting, HANDOVER_BUDGET)
            assert wakeups(second) == 1
            await second.release()
    finally:
        if waiting is not None:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        await first.release()
        await second.release()
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# Many rounds, checked on both sides
# ---------------------------------------------------------------------------------------------------------


@dataclass
class OurSide:
    """Our read/write rounds on one name, each inside the shared occupancy check."""

    client: Client
    name: str
    check: RWCheck
    acquired_at: list[float] = field(default_factory=list)

    async def rounds(self, mode: str, n: int) -> None:
        rw = self.client.rwlock(self.name, timeout=RUN_BUDGET)
        handle = rw.read() if mode == "read" else rw.write()
        for _ in range(n):
            async with handle:
                self.acquired_at.append(time.monotonic())
                hid = holder_id()
                if mode == "read":
                    await self.check.enter_shared(hid)
                    await self.check.exit_shared(hid)
                else:
                    await self.check.enter_exclusive(hid)
                    await self.check.exit_exclusive(hid)


MIXES = {
    "go-writer-vs-our-readers-and-writer": (["write"], ["read", "read", "write"]),
    "our-writer-vs-go-readers": (["read", "read"], ["write"]),
    "both-sides-read-and-write": (["read", "write"], ["read", "read", "write"]),
}


@pytest.mark.parametrize("mix", list(MIXES))
async def test_rounds_never_overlap_and_both_sides_progress(
    client: Client, ns: str, etcd_endpoints: list[str], mix: str
) -> None:
    base = await baseline(client)
    go_modes, our_modes = MIXES[mix]
    name, rounds = ns + "rw", 15
    check = RWCheck(client, ns + "occ/")
    ours = OurSide(client, name, check)
    common = ("--check", check.prefix, "--rounds", str(rounds), "--hold-ms", "20")
    async with contextlib.AsyncExitStack() as stack:
        gos = [await stack.enter_async_context(go_rwlock(name, m, etcd_endpoints, *common)) for m in go_modes]
        # Ours start once every Go process has taken its first turn, so the two sides contend.
        for p, m in zip(gos, go_modes, strict=True):
            await p.wait_line(f"ACQUIRED {m}", HANDOVER_BUDGET * 2)
        workers = [asyncio.create_task(ours.rounds(m, rounds), name=f"test:ours-{m}") for m in our_modes]
        try:
            await asyncio.wait_for(asyncio.gather(*workers), RUN_BUDGET)
        finally:
            for t in workers:
                t.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        for p in gos:
            assert await p.wait_exit(RUN_BUDGET) == 0, p.describe()

    for p, m in zip(gos, go_modes, strict=True):
        assert p.texts("VIOLATION ") == [] and p.texts()[-1] == "VIOLATIONS 0", p.describe()
        assert len(p.texts(f"ACQUIRED {m}")) == rounds == len(p.texts(f"RELEASED {m}")), p.describe()
    assert not check.violations, check.violations
    assert len(ours.acquired_at) == rounds * len(our_modes)
    # Both sides made progress while the other was at it: Go acquired after our first turn, and we
    # acquired before Go's last one.
    go_acquired = [line.at for p in gos for line in p.with_prefix("ACQUIRED")]
    assert any(at > min(ours.acquired_at) for at in go_acquired), "Go made no progress once ours started"
    assert min(ours.acquired_at) < max(go_acquired), "ours made no progress while Go ran"
    assert await keys_under(client, ns) == {}, "lock or check keys left"
    await assert_clean(client, ns, base)
