"""The Go interop programs (interop/go) work: etcd's Go Election and contrib/recipes RWMutex, checked against
each other and against etcdctl only, with a real etcd.

These tests deliberately use no etcdlock recipe: they prove the Go side and the occupancy-check protocol on
their own, so the interop tests of our Python election and read/write lock can rely on them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import time

from tests.go_interop import (
    GoProc,
    etcdctl,
    etcdctl_argv,
    etcdctl_env,
    go_interop_binary,
    go_proc,
    keys_under,
    spawned,
)
from tests.waiting import wait_until

# A negative check ("it still waits") needs a window.
STILL_WAITING_WINDOW = 0.5
# Go's recipes wait with watches from a past revision, which etcd serves on its 100 ms sync tick; a hand-over
# takes up to about that, plus process scheduling on a loaded machine.
HANDOVER_BUDGET = 3.0
# Upper bound for a process that runs its rounds and exits on its own.
RUN_BUDGET = 60.0


async def wait_keys(endpoints: list[str], prefix: str, n: int, timeout: float = 10.0) -> list[str]:
    async def check() -> bool:
        return len(await keys_under(endpoints, prefix)) == n

    await wait_until(check, timeout=timeout, what=f"{n} keys under {prefix}")
    return await keys_under(endpoints, prefix)


async def finished_cleanly(p: GoProc, timeout: float = RUN_BUDGET) -> None:
    """The process ran to its end by itself: exit 0, no violation, `VIOLATIONS 0` last."""
    rc = await p.wait_exit(timeout)
    assert rc == 0, p.describe()
    assert p.texts("VIOLATION ") == [], p.describe()
    assert p.texts()[-1] == "VIOLATIONS 0", p.describe()


async def stopped_cleanly(p: GoProc) -> None:
    """SIGTERM makes it resign/unlock and exit 0 with `VIOLATIONS 0` last."""
    rc = await p.stop()
    assert rc == 0, p.describe()
    assert p.texts("VIOLATION ") == [], p.describe()
    assert p.texts()[-1] == "VIOLATIONS 0", p.describe()


def test_bad_usage_exits_2() -> None:
    binary = go_interop_binary()
    for argv in (
        [],
        ["nope"],
        ["elect", "--name", "x"],  # no --proposal
        ["rwlock", "--name", "x", "--mode", "both"],
        ["electbench", "--name", "x", "--workers", "0", "--duration-s", "1"],
        ["leader", "--name", "x", "extra"],
    ):
        r = subprocess.run([binary, *argv], capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 2, (argv, r.stderr)
        assert r.stdout == "", argv


# ---- elect -------------------------------------------------------------------------------------------------


async def test_two_go_leaders_alternate_and_never_overlap(etcd_endpoints: list[str], ns: str) -> None:
    name, check = ns + "elect", ns + "occ/"
    args = ("--name", name, "--rounds", "5", "--hold-ms", "200", "--check", check)
    async with (
        go_proc("elect", *args, "--proposal", "a", endpoints=etcd_endpoints) as a,
        go_proc("elect", *args, "--proposal", "b", endpoints=etcd_endpoints) as b,
    ):
        await finished_cleanly(a)
        await finished_cleanly(b)

    terms: list[tuple[int, str, str]] = []  # (create_revision, who, key)
    for who, p in (("a", a), ("b", b)):
        leader_lines = p.texts("LEADER ")
        assert len(leader_lines) == 5 and len(p.texts("RESIGNED")) == 5, p.describe()
        keys = set()
        for text in leader_lines:
            _, key, rev = text.split()
            keys.add(key)
            terms.append((int(rev), who, key))
        # One session per process: every round campaigns with the same key NAME/<lease hex>.
        [key] = keys
        assert key.startswith(name + "/") and int(key[len(name) + 1 :], 16) > 0
    terms.sort()
    order = "".join(who for _, who, _ in terms)
    # Election is FIFO by create revision: once both are queued, they take turns. Only the start (before the
    # second process queued) and the end (after one ran out of rounds) may repeat a process.
    interior = order.lstrip(order[0]).rstrip(order[-1])
    assert all(x != y for x, y in itertools.pairwise(interior)), order
    switches = sum(x != y for x, y in itertools.pairwise(order))
    print(f"\nleadership order by create revision: {order}")
    assert switches >= 5, f"they barely contended: {order}"
    assert await keys_under(etcd_endpoints, ns) == []


async def test_etcdctl_sees_go_leader_and_its_proclamation(etcd_endpoints: list[str], ns: str) -> None:
    name = ns + "elect"
    async with spawned(etcdctl_argv(etcd_endpoints, "elect", "-l", name), etcdctl_env()) as ctl:
        async with go_proc(
            "elect", "--name", name, "--proposal", "p1", "--proclaim", "v1", endpoints=etcd_endpoints
        ) as go:
            _, key, rev = (await go.wait_line("LEADER ")).fields()
            await go.wait_line("PROCLAIMED v1")
            assert await keys_under(etcd_endpoints, name + "/") == [key]

            # `etcdctl elect -l` prints KEY then VALUE for each leader value it observes; the proclaimed value
            # comes last (p1 too if it was watching before the campaign).
            value_line = await ctl.wait_line("v1", timeout=10)
            idx = ctl.lines.index(value_line)
            assert idx >= 1 and ctl.lines[idx - 1].text == key, ctl.describe()
            assert set(ctl.texts()) <= {key, "p1", "v1"}, ctl.describe()

            async with go_proc("leader", "--name", name, endpoints=etcd_endpoints) as q:
                assert await q.wait_exit() == 0, q.describe()
                assert q.texts() == ["LEADER v1"]
            async with go_proc("observe", "--name", name, "--count", "1", endpoints=etcd_endpoints) as o:
                assert await o.wait_exit() == 0, o.describe()
                assert o.texts() == ["OBSERVED v1"]

            await stopped_cleanly(go)
            assert go.texts() == [f"LEADER {key} {rev}", "PROCLAIMED v1", "RESIGNED", "VIOLATIONS 0"]
        assert await ctl.stop() == 0, ctl.describe()

    async with go_proc("leader", "--name", name, endpoints=etcd_endpoints) as q:
        assert await q.wait_exit() == 0, q.describe()
        assert q.texts() == ["NOLEADER"]
    # `etcdctl elect -l` leaves its (keyless) session lease to expire; no key is left.
    assert await keys_under(etcd_endpoints, ns) == []


async def test_go_follows_etcdctl_leader(etcd_endpoints: list[str], ns: str) -> None:
    name = ns + "elect"
    async with spawned(etcdctl_argv(etcd_endpoints, "elect", name, "from-etcdctl"), etcdctl_env()) as ctl:
        ctl_key = (await ctl.wait_line(name + "/", timeout=10)).text
        await ctl.wait_line("from-etcdctl")

        async with go_proc("leader", "--name", name, endpoints=etcd_endpoints) as q:
            assert await q.wait_exit() == 0, q.describe()
            assert q.texts() == ["LEADER from-etcdctl"]
        async with go_proc("observe", "--name", name, "--count", "1", endpoints=etcd_endpoints) as o:
            assert await o.wait_exit() == 0, o.describe()
            assert o.texts() == ["OBSERVED from-etcdctl"]

        async with go_proc("elect", "--name", name, "--proposal", "go", endpoints=etcd_endpoints) as go:
            queued = await wait_keys(etcd_endpoints, name + "/", 2)
            assert ctl_key in queued
            await go.assert_no_line("LEADER ", STILL_WAITING_WINDOW)

            # etcdctl resigns on SIGINT (deletes its key; its lease is left to expire).
            assert await ctl.stop() == 0, ctl.describe()
            assert ctl.signalled_at is not None
            led = await go.wait_line("LEADER ", HANDOVER_BUDGET)
            took = (led.at - ctl.signalled_at) * 1000
            print(f"\netcdctl -> Go election hand-over: {took:.1f} ms after signalling etcdctl")
            [go_key] = [k for k in queued if k != ctl_key]
            assert led.fields()[1] == go_key
            await stopped_cleanly(go)
    assert await keys_under(etcd_endpoints, ns) == []


async def test_go_election_waiter_leaves_cleanly_on_sigterm(etcd_endpoints: list[str], ns: str) -> None:
    name = ns + "elect"
    async with go_proc("elect", "--name", name, "--proposal", "first", endpoints=etcd_endpoints) as first:
        first_key = (await first.wait_line("LEADER ")).fields()[1]
        async with go_proc(
            "elect", "--name", name, "--proposal", "second", endpoints=etcd_endpoints
        ) as second:
            await wait_keys(etcd_endpoints, name + "/", 2)
            # It never led, so there is nothing to resign: only the summary line.
            await stopped_cleanly(second)
            assert second.texts() == ["VIOLATIONS 0"]
        assert await keys_under(etcd_endpoints, name + "/") == [first_key]
        await stopped_cleanly(first)
    assert await keys_under(etcd_endpoints, ns) == []


# ---- rwlock ------------------------------------------------------------------------------------------------


async def test_go_readers_share_and_a_writer_waits_for_both(etcd_endpoints: list[str], ns: str) -> None:
    name, check = ns + "rw", ns + "occ/"
    common = ("--name", name, "--check", check)
    async with contextlib.AsyncExitStack() as stack:
        r1 = await stack.enter_async_context(
            go_proc("rwlock", *common, "--mode", "read", endpoints=etcd_endpoints)
        )
        r2 = await stack.enter_async_context(
            go_proc("rwlock", *common, "--mode", "read", endpoints=etcd_endpoints)
        )
        # Both readers hold at once: each printed ACQUIRED and neither has released (they hold until SIGTERM).
        await r1.wait_line("ACQUIRED read")
        await r2.wait_line("ACQUIRED read")
        assert r1.texts("RELEASED") == [] and r2.texts("RELEASED") == []
        assert len(await keys_under(etcd_endpoints, check + "readers/")) == 2

        w = await stack.enter_async_context(
            go_proc("rwlock", *common, "--mode", "write", endpoints=etcd_endpoints)
        )
        [write_key] = await wait_keys(etcd_endpoints, name + "/write/", 1)
        await w.assert_no_line("ACQUIRED", STILL_WAITING_WINDOW)

        # A reader arriving after the queued writer waits behind it (the recipe's writers are not starved).
        r3 = await stack.enter_async_context(
            go_proc("rwlock", *common, "--mode", "read", endpoints=etcd_endpoints)
        )
        await wait_keys(etcd_endpoints, name + "/read/", 3)

        await stopped_cleanly(r1)
        assert r1.texts() == ["ACQUIRED read", "RELEASED read", "VIOLATIONS 0"]
        await w.assert_no_line("ACQUIRED", STILL_WAITING_WINDOW)

        await stopped_cleanly(r2)
        assert r2.signalled_at is not None
        got = await w.wait_line("ACQUIRED write", HANDOVER_BUDGET)
        took = (got.at - r2.signalled_at) * 1000
        print(f"\nGo RWMutex read -> write hand-over: {took:.1f} ms after signalling the last reader")
        assert await keys_under(etcd_endpoints, name + "/write/") == [write_key]
        await r3.assert_no_line("ACQUIRED", STILL_WAITING_WINDOW)

        await stopped_cleanly(w)
        assert w.texts() == ["ACQUIRED write", "RELEASED write", "VIOLATIONS 0"]
        await r3.wait_line("ACQUIRED read", HANDOVER_BUDGET)
        await stopped_cleanly(r3)
    assert await keys_under(etcd_endpoints, ns) == []


async def test_go_writers_and_readers_never_overlap(etcd_endpoints: list[str], ns: str) -> None:
    name, check = ns + "rw", ns + "occ/"
    rounds = 8
    common = ("--name", name, "--check", check, "--rounds", str(rounds), "--hold-ms", "20")
    modes = ["write", "read", "write", "read"]
    async with contextlib.AsyncExitStack() as stack:
        procs = [
            await stack.enter_async_context(go_proc("rwlock", *common, "--mode", m, endpoints=etcd_endpoints))
            for m in modes
        ]
        for p in procs:
            await finished_cleanly(p)
    for p, m in zip(procs, modes, strict=True):
        assert p.texts(f"ACQUIRED {m}") == [f"ACQUIRED {m}"] * rounds, p.describe()
        assert p.texts(f"RELEASED {m}") == [f"RELEASED {m}"] * rounds, p.describe()
    # They really ran at the same time: every process acquired for the first time before any of them ended.
    first_acquired = max(p.with_prefix("ACQUIRED")[0].at for p in procs)
    last_released = min(p.with_prefix("RELEASED")[-1].at for p in procs)
    assert first_acquired < last_released
    assert await keys_under(etcd_endpoints, ns) == []


# ---- electbench --------------------------------------------------------------------------------------------


async def test_electbench_reports_handovers(etcd_endpoints: list[str], ns: str) -> None:
    args = ("--name", ns + "bench", "--workers", "2", "--duration-s", "1")
    async with go_proc("electbench", *args, endpoints=etcd_endpoints) as p:
        t0 = time.monotonic()
        assert await p.wait_exit(30) == 0, p.describe()
        took = time.monotonic() - t0
    [line] = p.texts()
    result = json.loads(line)
    print(f"\n{line}")
    assert result["mode"] == "electbench"
    assert result["handovers"] > 0 and result["errors"] == 0
    assert 1.0 <= result["seconds"] < took + 0.1
    assert result["ops_per_s"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"]
    assert await keys_under(etcd_endpoints, ns) == []


async def test_go_proc_stop_is_idempotent_and_reaps(etcd_endpoints: list[str], ns: str) -> None:
    p = await GoProc.start("observe", "--name", ns + "nobody", endpoints=etcd_endpoints)
    try:
        # `observe` with no leader prints nothing and runs until signalled.
        await p.assert_no_line("OBSERVED", 0.2)
    finally:
        rc = await p.stop()
    assert rc == 0, p.describe()
    assert await p.stop() == 0
    assert p.proc.returncode == 0


async def test_etcdctl_helper_reads_keys(etcd_endpoints: list[str], ns: str) -> None:
    await etcdctl(etcd_endpoints, "put", ns + "k", "v")
    assert await keys_under(etcd_endpoints, ns) == [ns + "k"]
    await etcdctl(etcd_endpoints, "del", "--prefix", ns)
    assert await keys_under(etcd_endpoints, ns) == []
