"""Leak tests for the lock recipes: released locks are freed by reference counting alone (no cycles left
for the cyclic GC: callbacks and futures that point back at their owners), and no library object survives
its lock."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from etcdlock import Client
from etcdlock._core.lease import KeepAlive
from etcdlock._recipes.contender import Contender
from etcdlock._recipes.lock import Lock
from etcdlock._recipes.session import Session


@pytest.fixture
def save_all_garbage() -> Iterator[list[object]]:
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def test_released_locks_leave_no_reference_cycles(
    client: Client, ns: str, save_all_garbage: list[object]
) -> None:
    async with client.lock(ns + "a"):  # warm-up: the name's queue watcher, the streams
        pass
    gc.collect()
    save_all_garbage.clear()
    for _ in range(25):
        async with client.lock(ns + "a"):
            pass
        held = await client.try_lock(ns + "a")
        assert held is not None
        await held.release()
        del held
    gc.collect()
    kinds = sorted({type(o).__name__ for o in save_all_garbage})
    assert not save_all_garbage, (
        f"{len(save_all_garbage)} objects in reference cycles after 50 locks: {kinds}"
    )


async def test_no_library_object_outlives_its_lock(client: Client, ns: str) -> None:
    refs: list[weakref.ref[object]] = []
    sessions: set[Session] = set()
    for _ in range(10):
        lock = client.lock(ns + "b")
        async with lock:
            mutex = lock._last
            assert mutex is not None
            refs += [weakref.ref(lock), weakref.ref(mutex)]
            sessions.add(mutex.session)
        del lock, mutex
    alive = [type(r()).__name__ for r in refs if r() is not None]
    assert not alive, f"still alive without a gc pass: {alive}"
    # The session (and its keepalive) is the client's default one, kept for the next lock: one for all ten.
    (session,) = sessions
    assert session in client._recipes.sessions.sessions() and isinstance(session.keeper, KeepAlive)
    assert {Lock, Contender}  # the kinds checked above
