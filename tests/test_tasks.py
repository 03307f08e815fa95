"""Cleanup that must happen (core/tasks.shielded): it runs to the end whatever happens to its caller, and
its caller hears how it ended. No etcd needed: the cleanup here is a plain coroutine."""

from __future__ import annotations

import asyncio
import logging

import pytest

from etcdlock._core.tasks import shielded


async def turns(n: int = 3) -> None:
    """Let the loop run n turns (deterministic scheduling, not a timed wait)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_cleanup_finishes_though_its_caller_is_cancelled_again_and_again() -> None:
    started, go_on = asyncio.Event(), asyncio.Event()
    finished: list[bool] = []

    async def cleanup() -> None:
        started.set()
        await go_on.wait()
        finished.append(True)

    caller = asyncio.create_task(shielded(cleanup(), 5.0))
    await asyncio.wait_for(started.wait(), 5)
    for _ in range(3):  # every cancellation reaches the caller while it waits for the cleanup
        caller.cancel()
        await turns()
        assert not caller.done(), "the caller must wait for its cleanup before it ends"
    go_on.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished == [True], "a repeated cancellation of the caller cut the cleanup short"


async def test_an_error_of_the_cleanup_reaches_its_caller() -> None:
    async def cleanup() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await shielded(cleanup(), 5.0)


async def test_a_cleanup_past_its_deadline_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def cleanup() -> None:
        await asyncio.Event().wait()  # never ends on its own

    with caplog.at_level(logging.WARNING, logger="etcdlock.tasks"):
        await shielded(cleanup(), 0.05)
    assert "did not finish within 0.05s" in caplog.text


async def test_a_cancelled_cleanup_cancels_its_caller() -> None:
    started = asyncio.Event()

    async def cleanup() -> None:
        started.set()
        await asyncio.Event().wait()

    caller = asyncio.create_task(shielded(cleanup(), 5.0))
    await asyncio.wait_for(started.wait(), 5)
    (cleanup_task,) = [t for t in asyncio.all_tasks() if t.get_name() == "etcdlock:cleanup"]
    cleanup_task.cancel()  # as at loop shutdown: the caller must not wait forever
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, 5)
