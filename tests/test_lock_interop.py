"""Interop with `etcdctl lock` (Go's concurrency.Mutex): both sides exclude each other on one name, FIFO.

`etcdctl lock NAME` without a command prints the key it got (then the empty value) and holds the lock until
it gets SIGINT/SIGTERM, when it deletes its key (its lease is left to expire). Reading its stdout tells us
when it holds the lock; its key under NAME/ in etcd tells us when it is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest

from etcdlock import Client, KeyValue, Lock
from etcdlock.testing import find_etcdctl_binary
from tests.test_lock import acquired
from tests.waiting import wait_until

# How long a waiter is watched to make sure it does NOT get the lock (a negative check needs a window).
STILL_WAITING_WINDOW = 0.5
# Handover budgets. Ours is event driven (milliseconds); Go's mutex watches from a past revision, which etcd
# answers on its 100 ms sync tick.
OUR_HANDOVER_BUDGET = 1.0
ETCDCTL_HANDOVER_BUDGET = 2.0


def _etcdctl_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return env


class EtcdctlLock:
    """One `etcdctl lock NAME` process. stop() (SIGINT by PID, SIGKILL if it lingers) is idempotent."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.exited_at: float | None = None
        self.stderr = b""

    @classmethod
    async def start(cls, endpoints: list[str], name: str) -> EtcdctlLock:
        proc = await asyncio.create_subprocess_exec(
            find_etcdctl_binary(),
            f"--endpoints={','.join(endpoints)}",
            "--dial-timeout=3s",
            "lock",
            name,
            env=_etcdctl_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def read_key(self, timeout: float) -> str:
        """The key etcdctl prints once it holds the lock (TimeoutError if it does not within `timeout`)."""
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        assert line, f"etcdctl lock exited without printing a key (rc={self.proc.returncode})"
        return line.decode().strip()

    async def assert_not_holding(self, window: float = STILL_WAITING_WINDOW) -> None:
        """etcdctl prints nothing (does not get the lock) for `window` seconds."""
        with pytest.raises(TimeoutError):
            key = await self.read_key(window)
            pytest.fail(f"etcdctl lock got the lock ({key}) while it should still be waiting")
        assert self.proc.returncode is None, "etcdctl lock exited while waiting"

    async def stop(self, sig: int = signal.SIGINT) -> int:
        """Signal it by PID and reap it; returns its exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                await self.proc.wait()
            self.exited_at = time.monotonic()
            _, self.stderr = await self.proc.communicate()
        rc = self.proc.returncode
        assert rc is not None
        return rc


@contextlib.asynccontextmanager
async def etcdctl_lock(endpoints: list[str], name: str) -> AsyncIterator[EtcdctlLock]:
    ctl = await EtcdctlLock.start(endpoints, name)
    try:
        yield ctl
    finally:
        await ctl.stop()


async def queue_of(client: Client, name: str) -> list[KeyValue]:
    """The lock keys under NAME/, oldest (the holder) first."""
    r = await client.get(name + "/", prefix=True, sort_target="create", sort_order="ascend")
    return r.kvs


async def wait_queue_len(client: Client, name: str, n: int, timeout: float = 5.0) -> list[KeyValue]:
    async def check() -> bool:
        return len(await queue_of(client, name)) == n

    await wait_until(check, timeout=timeout, what=f"{n} lock keys under {name}/")
    return await queue_of(client, name)


async def acquire_timed(lock: Lock) -> float:
    """Acquire and return the monotonic time the acquire completed."""
    await acquired(lock)
    return time.monotonic()


async def assert_still_waiting(task: asyncio.Task[float], window: float = STILL_WAITING_WINDOW) -> None:
    done, _ = await asyncio.wait({task}, timeout=window)
    if done:
        task.result()  # an exception explains more than the assertion below
        pytest.fail("our lock() acquired while another holder had the lock")


async def discard(task: asyncio.Task[float], lock: Lock) -> None:
    """Cleanup: stop a pending acquire and release whatever it got."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(BaseException):
        await task
    await lock.release()


def assert_go_key(name: str, kv: KeyValue) -> None:
    """The wire contract: NAME/<lowercase hex lease id>, empty value, on that lease."""
    key = kv.key.decode()
    assert key.startswith(name + "/")
    assert key[len(name) + 1 :] == format(kv.lease, "x"), f"{key} is not on lease {kv.lease:x}"
    assert kv.value == b""


async def assert_no_lock_keys(client: Client, name: str) -> None:
    async def empty() -> bool:
        return (await client.get(name + "/", prefix=True, count_only=True)).count == 0

    await wait_until(empty, timeout=5, what=f"no keys left under {name}/")


# ---- a: etcdctl holds, we wait ---------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_we_wait_for_etcdctl_and_take_over_when_it_exits(
    client: Client, ns: str, etcd_endpoints: list[str], sig: int
) -> None:
    name = ns + "interop-a"
    async with etcdctl_lock(etcd_endpoints, name) as ctl:
        printed = await ctl.read_key(10)
        [theirs] = await queue_of(client, name)
        assert theirs.key.decode() == printed, "etcdctl printed another key than it holds"
        assert_go_key(name, theirs)

        # Free right now? No — and asking leaves no key behind.
        assert await client.try_lock(name) is None
        assert [kv.key for kv in await queue_of(client, name)] == [theirs.key]

        lock = client.lock(name, timeout=30)
        task = asyncio.create_task(acquire_timed(lock))
        try:
            queue = await wait_queue_len(client, name, 2)
            assert queue[0].key == theirs.key, "etcdctl's key must stay first in the queue"
            ours = queue[1]
            assert_go_key(name, ours)
            assert ours.create_revision > theirs.create_revision
            await assert_still_waiting(task)

            signalled_at = time.monotonic()
            rc = await ctl.stop(sig)
            assert rc == 0, f"etcdctl lock exited {rc}: {ctl.stderr.decode()}"
            assert ctl.exited_at is not None
            acquired_at = await asyncio.wait_for(task, 5)

            after_exit = acquired_at - ctl.exited_at
            after_signal = acquired_at - signalled_at
            print(f"\netcdctl -> etcdlock handover: {after_exit * 1000:.1f} ms after etcdctl exited")
            assert after_exit < OUR_HANDOVER_BUDGET, f"acquired {after_exit:.3f}s after etcdctl exited"
            assert after_signal < OUR_HANDOVER_BUDGET + 0.5, f"acquired {after_signal:.3f}s after the signal"
            assert lock.held
            assert lock.key == ours.key.decode()
            assert lock.token == ours.create_revision
            assert lock.token > theirs.create_revision
            assert [kv.key for kv in await queue_of(client, name)] == [ours.key]
        finally:
            await discard(task, lock)
    await assert_no_lock_keys(client, name)


# ---- b: we hold, etcdctl waits ---------------------------------------------------------------------------


async def test_etcdctl_waits_for_us_and_takes_over_when_we_release(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    name = ns + "interop-b"
    async with client.lock(name, timeout=5) as held:
        assert_go_key(name, (await queue_of(client, name))[0])
        async with etcdctl_lock(etcd_endpoints, name) as ctl:
            queue = await wait_queue_len(client, name, 2, timeout=10)
            assert queue[0].key.decode() == held.key
            theirs = queue[1]
            assert_go_key(name, theirs)
            assert theirs.create_revision > held.token
            await ctl.assert_not_holding()
            assert held.held and not held.lost.is_set()

            await held.release()
            released_at = time.monotonic()
            printed = await ctl.read_key(ETCDCTL_HANDOVER_BUDGET)
            took = time.monotonic() - released_at
            assert printed == theirs.key.decode()
            print(f"\netcdlock -> etcdctl handover: {took * 1000:.1f} ms after our release")
            assert took < ETCDCTL_HANDOVER_BUDGET, f"etcdctl got the lock {took:.3f}s after our release"
            assert [kv.key for kv in await queue_of(client, name)] == [theirs.key]

            # Now etcdctl holds: we are kept out.
            assert await client.try_lock(name) is None

            rc = await ctl.stop()
            assert rc == 0, f"etcdctl lock exited {rc}: {ctl.stderr.decode()}"
    await assert_no_lock_keys(client, name)


# ---- c: FIFO across etcdctl and etcdlock waiters -------------------------------------------------------


@pytest.mark.parametrize("first", ["etcdctl", "etcdlock"])
async def test_fifo_between_etcdctl_and_etcdlock_waiters(
    client: Client, ns: str, etcd_endpoints: list[str], first: str
) -> None:
    name = ns + "interop-c"
    async with Client(etcd_endpoints) as other:
        holder = await acquired(client.lock(name, timeout=5))
        waiter = other.lock(name, timeout=30)
        task: asyncio.Task[float] | None = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                if first == "etcdctl":
                    ctl = await stack.enter_async_context(etcdctl_lock(etcd_endpoints, name))
                    await wait_queue_len(client, name, 2, timeout=10)
                    task = asyncio.create_task(acquire_timed(waiter))
                else:
                    task = asyncio.create_task(acquire_timed(waiter))
                    await wait_queue_len(client, name, 2)
                    ctl = await stack.enter_async_context(etcdctl_lock(etcd_endpoints, name))
                queue = await wait_queue_len(client, name, 3, timeout=10)
                assert queue[0].key.decode() == holder.key
                first_kv, second_kv = queue[1], queue[2]
                assert first_kv.create_revision < second_kv.create_revision
                theirs, ours = (first_kv, second_kv) if first == "etcdctl" else (second_kv, first_kv)

                # Both wait while the holder holds.
                await assert_still_waiting(task)
                await ctl.assert_not_holding(0.05)

                await holder.release()
                released_at = time.monotonic()
                if first == "etcdctl":
                    # etcdctl queued first: it gets the lock; our waiter keeps waiting.
                    printed = await ctl.read_key(ETCDCTL_HANDOVER_BUDGET)
                    assert printed == theirs.key.decode()
                    assert time.monotonic() - released_at < ETCDCTL_HANDOVER_BUDGET
                    await assert_still_waiting(task)
                    assert [kv.key for kv in await queue_of(client, name)] == [theirs.key, ours.key]

                    rc = await ctl.stop()
                    assert rc == 0, f"etcdctl lock exited {rc}: {ctl.stderr.decode()}"
                    assert ctl.exited_at is not None
                    acquired_at = await asyncio.wait_for(task, 5)
                    took = acquired_at - ctl.exited_at
                    assert took < OUR_HANDOVER_BUDGET, f"acquired {took:.3f}s after etcdctl exited"
                    assert waiter.token == ours.create_revision > theirs.create_revision
                    await waiter.release()
                else:
                    # We queued first: our waiter gets the lock; etcdctl keeps waiting.
                    acquired_at = await asyncio.wait_for(task, 5)
                    took = acquired_at - released_at
                    assert took < OUR_HANDOVER_BUDGET, f"acquired {took:.3f}s after the release"
                    assert waiter.token == ours.create_revision < theirs.create_revision
                    await ctl.assert_not_holding()
                    assert [kv.key for kv in await queue_of(client, name)] == [ours.key, theirs.key]

                    await waiter.release()
                    released_at = time.monotonic()
                    printed = await ctl.read_key(ETCDCTL_HANDOVER_BUDGET)
                    assert printed == theirs.key.decode()
                    took = time.monotonic() - released_at
                    assert took < ETCDCTL_HANDOVER_BUDGET, f"etcdctl got the lock {took:.3f}s after release"
                    rc = await ctl.stop()
                    assert rc == 0, f"etcdctl lock exited {rc}: {ctl.stderr.decode()}"
        finally:
            if task is not None:
                await discard(task, waiter)
            await holder.release()
    await assert_no_lock_keys(client, name)
