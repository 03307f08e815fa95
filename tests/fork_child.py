"""Fork scenarios, each run in a fresh interpreter by tests/test_fork.py: `python -m tests.fork_child
SCENARIO ENDPOINT`. Prints one JSON line per forked child with what the child saw; the parent waits for each
child with a deadline and reports a hang as such (then kills it by PID)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from etcdlock import Client, ForkError, SyncClient

CHILD_DEADLINE = 10.0  # seconds: a child not done by then hung


def outcome(fn: Callable[[], object]) -> dict[str, object]:
    started = time.monotonic()
    try:
        fn()
        result = "ok"
    except ForkError as e:
        result = f"ForkError: {e}"
    except BaseException as e:  # anything else is reported as it is
        result = f"{type(e).__name__}: {e}"
    return {"result": result, "seconds": round(time.monotonic() - started, 3)}


def in_child(fn: Callable[[], object]) -> dict[str, object]:
    """Fork; the child runs fn and writes its outcome to a pipe; the parent waits with a deadline."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.write(write_end, json.dumps(outcome(fn)).encode())
        os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + CHILD_DEADLINE
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            data = os.read(read_end, 65536)
            os.close(read_end)
            child = json.loads(data) if data else {"result": f"no report, exit {status}"}
            child["exit"] = os.waitstatus_to_exitcode(status)
            return child
        time.sleep(0.05)  # polling a child process: no event to wait on without a thread
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(read_end)
    return {"result": "HUNG"}


def new_async_client(endpoint: str) -> Callable[[], object]:
    async def use() -> None:
        async with Client([endpoint], timeout=2) as client:
            await client.put("fork/child", "x")

    return lambda: asyncio.run(asyncio.wait_for(use(), 5))


def new_sync_client(endpoint: str) -> Callable[[], object]:
    def use() -> None:
        with SyncClient([endpoint], timeout=2) as client:
            client.put("fork/child", "x")

    return use


def main() -> None:
    scenario, endpoint = sys.argv[1], sys.argv[2]
    report: dict[str, object] = {}
    if scenario == "sync-open":
        # A SyncClient connected in the parent: the inherited one and a new one, in children.
        parent = SyncClient([endpoint])
        parent.put("fork/parent", "x")
        report["inherited"] = in_child(lambda: parent.put("fork/inherited", "x"))
        report["inherited_close"] = in_child(parent.close)
        report["new_async"] = in_child(new_async_client(endpoint))
        report["new_sync"] = in_child(new_sync_client(endpoint))
        parent.put("fork/parent-after", "x")  # the parent's client still works
        parent.close()
    elif scenario == "async-open":
        # An asyncio Client connected on a loop in another thread of the parent.
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        client = asyncio.run_coroutine_threadsafe(Client([endpoint]).connect(), loop).result(10)

        def use_inherited() -> None:
            asyncio.run(client.put("fork/inherited", "x"))

        report["inherited"] = in_child(use_inherited)
        report["new_async"] = in_child(new_async_client(endpoint))
        asyncio.run_coroutine_threadsafe(client.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    elif scenario == "closed-before-fork":
        # The parent used a client and closed it: gRPC's engine still runs in it, and a child could hang.
        new_sync_client(endpoint)()
        report["new_async"] = in_child(new_async_client(endpoint))
        report["new_sync"] = in_child(new_sync_client(endpoint))
    elif scenario == "never-connected":
        # The parent made a client but never connected (e.g. at import time, before a server forks its
        # workers): children may connect, each with clients of its own.
        unused = Client([endpoint])
        report["new_async"] = in_child(new_async_client(endpoint))
        report["new_sync"] = in_child(new_sync_client(endpoint))
        report["unused"] = in_child(lambda: asyncio.run(unused.put("fork/inherited", "x")))
        new_sync_client(endpoint)()  # and the parent itself still can
    elif scenario == "pool":
        # multiprocessing's fork pool, made while the parent holds a connected client.
        parent = SyncClient([endpoint])
        parent.put("fork/parent", "x")
        with multiprocessing.get_context("fork").Pool(2) as pool:
            report["pool"] = pool.apply_async(_pool_task, (endpoint,)).get(CHILD_DEADLINE)
        parent.close()
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            report["spawn_pool"] = pool.apply_async(_pool_task, (endpoint,)).get(60)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    print(json.dumps(report), flush=True)


def _pool_task(endpoint: str) -> dict[str, object]:
    return outcome(new_sync_client(endpoint))


if __name__ == "__main__":
    main()
