"""Our election against Go's: `etcdctl elect` and a program on etcd's concurrency.Election (interop/go's
`elect`, `leader` and `observe` subcommands), on one name and real etcd.

`etcdctl elect NAME PROPOSAL` prints its key and value once it leads and resigns on SIGINT (its lease is
left to expire); `etcdctl elect -l NAME` prints KEY and VALUE lines for each leader value it observes. Every
process is stopped by PID when its test ends (tests/go_interop.py). Budgets below are deadlines for what
must happen, not speed checks: Go waits with watches from a past revision (etcd's 100 ms sync tick) and
the machine is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from etcdlock import Client, KeyValue, Term
from tests.go_interop import GoProc, etcdctl_argv, etcdctl_env, go_interop_binary, go_proc
from tests.holdables import is_waiting, wakeups
from tests.occupancy import RWCheck, holder_id
from tests.test_election import identity, leading, observing, term_identity
from tests.test_lock import Baseline, assert_clean, baseline, keys_under
from tests.waiting import wait_until

# A negative check ("it still waits") needs a window.
STILL_WAITING_WINDOW = 0.5
HANDOVER_BUDGET = 5.0
RUN_BUDGET = 120.0


@pytest.fixture(scope="module")
def go_binary() -> str:
    """The Go program, built before any test holds a lease: the build blocks the event loop (for half a
    minute when cold), long enough for a held lease to expire."""
    return go_interop_binary()


@contextlib.asynccontextmanager
async def etcdctl_elect(endpoints: list[str], *args: str) -> AsyncIterator[GoProc]:
    """`etcdctl elect ARGS`, stopped with SIGINT by PID (SIGKILL if it lingers) whatever happens."""
    p = await GoProc.spawn(etcdctl_argv(endpoints, "elect", *args), etcdctl_env())
    try:
        yield p
    finally:
        await p.stop(signal.SIGINT)


async def candidates(client: Client, name: str, n: int) -> list[KeyValue]:
    """Wait until there are n keys under NAME/; them, oldest (the leader) first."""

    async def check() -> bool:
        return (await client.get(name + "/", prefix=True, count_only=True)).count == n

    await wait_until(check, 10, f"{n} candidates under {name}/")
    r = await client.get(name + "/", prefix=True, sort_target="create", sort_order="ascend")
    return r.kvs


def assert_go_key(name: str, kv: KeyValue, value: bytes) -> None:
    """The wire contract: NAME/<lowercase hex lease id>, the proposal as value, on that lease."""
    key = kv.key.decode()
    assert key == f"{name}/{kv.lease:x}", f"{key} is not NAME/<its lease {kv.lease:x}>"
    assert kv.value == value


async def assert_clean_beside(client: Client, ns: str, base: Baseline, foreign: set[int]) -> None:
    """Nothing of ours left; `foreign` leases are etcdctl's (it leaves them to expire)."""
    await assert_clean(client, ns, base, leases=frozenset(foreign))


# ---------------------------------------------------------------------------------------------------------
# etcdctl elect
# ---------------------------------------------------------------------------------------------------------


async def test_etcdctl_campaigns_while_we_lead_and_leads_right_after_we_resign(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "elect"
    election = client.election(name)
    async with election.campaign("ours", timeout=5) as term:
        async with etcdctl_elect(etcd_endpoints, name, "theirs") as ctl:
            ours, theirs = await candidates(client, name, 2)
            assert ours.key.decode() == term.key
            assert_go_key(name, theirs, b"theirs")
            assert theirs.create_revision > term.token
            await ctl.assert_no_line(name, STILL_WAITING_WINDOW)  # it prints its key once it leads
            leader = await election.leader()
            assert leader is not None and identity(leader) == term_identity(term)

            await term.resign()
            await ctl.wait_line(theirs.key.decode(), HANDOVER_BUDGET)
            await ctl.wait_line("theirs", HANDOVER_BUDGET)
            leader = await election.leader()
            assert leader is not None and leader.key == theirs.key.decode() and leader.proposal == "theirs"
            assert leader.token == theirs.create_revision

            assert await ctl.stop(signal.SIGINT) == 0, ctl.describe()
        assert await keys_under(client, ns) == {}
    await assert_clean_beside(client, ns, base, {theirs.lease})


async def test_we_lead_right_after_etcdctls_leader_exits(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "elect"
    election = client.election(name)
    term = election.campaign("ours", timeout=30)
    task: asyncio.Task[Term] | None = None
    try:
        async with etcdctl_elect(etcd_endpoints, name, "theirs") as ctl:
            printed = (await ctl.wait_line(name + "/", 10)).text
            await ctl.wait_line("theirs")
            [theirs] = await candidates(client, name, 1)
            assert theirs.key.decode() == printed, "etcdctl printed another key than it leads with"
            assert_go_key(name, theirs, b"theirs")

            task = asyncio.create_task(leading(term))
            await wait_until(lambda: is_waiting(term), 10, "our candidacy parked behind etcdctl")
            leader = await election.leader()
            assert leader is not None and leader.key == printed and leader.proposal == "theirs"
            assert not task.done() and wakeups(term) == 0

            assert await ctl.stop(signal.SIGINT) == 0, ctl.describe()  # it resigns: deletes its key
            await asyncio.wait_for(task, HANDOVER_BUDGET)
        assert wakeups(term) == 1, "we were not woken (once) by the deletion of etcdctl's key"
        assert term.token > theirs.create_revision
        leader = await election.leader()
        assert leader is not None and identity(leader) == term_identity(term)
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await term.resign()
    await assert_clean_beside(client, ns, base, {theirs.lease})


async def test_etcdctl_listen_prints_our_proclaimed_values_and_leaders(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "elect"
    election = client.election(name)
    first = await leading(election.campaign("v0", timeout=5))
    a = first.key
    second = election.campaign("w0", timeout=30)
    task = asyncio.create_task(leading(second))
    try:
        await wait_until(lambda: is_waiting(second), 10, "the second candidate parked")
        before = set(await client.leases())
        async with etcdctl_elect(etcd_endpoints, "-l", name) as ctl:
            await ctl.wait_line("v0", 10)  # the current leader first
            foreign = set(await client.leases()) - before  # etcdctl's session, made before it observed
            for value in ("v1", "v2"):
                await first.proclaim(value)
                await ctl.wait_line(value, HANDOVER_BUDGET)
            await first.resign()
            await asyncio.wait_for(task, HANDOVER_BUDGET)
            b = second.key
            await ctl.wait_line("w0", HANDOVER_BUDGET)
            await second.proclaim("w1")
            await ctl.wait_line("w1", HANDOVER_BUDGET)
            assert ctl.texts() == [a, "v0", a, "v1", a, "v2", b, "w0", b, "w1"], ctl.describe()
            assert await ctl.stop(signal.SIGINT) == 0, ctl.describe()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await first.resign()
        await second.resign()
    await assert_clean_beside(client, ns, base, foreign)


async def test_our_observe_and_leader_see_etcdctls_proposal(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "elect"
    election = client.election(name)
    async with observing(election) as obs:
        async with etcdctl_elect(etcd_endpoints, name, "from-etcdctl") as ctl:
            printed = (await ctl.wait_line(name + "/", 10)).text
            [theirs] = await candidates(client, name, 1)
            seen = await obs.next()
            assert (seen.key, seen.value, seen.token, seen.lease) == (
                printed,
                b"from-etcdctl",
                theirs.create_revision,
                theirs.lease,
            )
            assert seen.proposal == "from-etcdctl"
            leader = await election.leader()
            assert leader is not None and identity(leader) == identity(seen)

            # We queue behind it; when it exits, our observer sees us lead next, nothing in between.
            term = election.campaign("ours", timeout=30)
            task = asyncio.create_task(leading(term))
            try:
                await wait_until(lambda: is_waiting(term), 10, "our candidacy parked")
                assert await ctl.stop(signal.SIGINT) == 0, ctl.describe()
                await asyncio.wait_for(task, HANDOVER_BUDGET)
                await obs.expect(term)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await term.resign()
        assert len(obs.seen) == 2, [identity(s) for s in obs.seen]
    await assert_clean_beside(client, ns, base, {theirs.lease})


# ---------------------------------------------------------------------------------------------------------
# Go's concurrency.Election (interop/go)
# ---------------------------------------------------------------------------------------------------------


async def test_go_leader_and_observe_see_our_leader_and_values(
    client: Client, ns: str, etcd_endpoints: list[str], go_binary: str
) -> None:
    base = await baseline(client)
    name = ns + "elect"
    async with client.election(name).campaign("ours", timeout=5) as term:
        async with go_proc("leader", "--name", name, endpoints=etcd_endpoints) as q:
            assert await q.wait_exit() == 0, q.describe()
            assert q.texts() == ["LEADER ours"]
        async with go_proc("observe", "--name", name, "--count", "2", endpoints=etcd_endpoints) as o:
            await o.wait_line("OBSERVED ours", 10)
            await term.proclaim("proclaimed")
            assert await o.wait_exit() == 0, o.describe()
            assert o.texts() == ["OBSERVED ours", "OBSERVED proclaimed"]
    async with go_proc("leader", "--name", name, endpoints=etcd_endpoints) as q:
        assert await q.wait_exit() == 0, q.describe()
        assert q.texts() == ["NOLEADER"]
    await assert_clean(client, ns, base)


@dataclass
class OurCandidate:
    """Rounds of campaign, proclaim, occupancy check, resign: what interop/go's `elect --rounds --check
    --proclaim` does, in a coroutine of its own."""

    client: Client
    name: str
    who: str
    check: RWCheck
    terms: list[tuple[int, str, list[bytes]]] = field(default_factory=list)  # (token, key, values)

    async def rounds(self, n: int, hold: float) -> None:
        for r in range(n):
            async with self.client.election(self.name).campaign(f"{self.who}-r{r}", timeout=RUN_BUDGET) as t:
                await t.proclaim(f"{self.who}-p{r}")
                self.terms.append((t.token, t.key, [f"{self.who}-r{r}".encode(), t.value]))
                hid = holder_id()
                await self.check.enter_exclusive(hid)
                await asyncio.sleep(hold)  # the leader's work (not a synchronization)
                await t.ensure_held()
                await self.check.exit_exclusive(hid)


def go_terms(p: GoProc, proposal: str, proclaimed: str) -> list[tuple[int, str, list[bytes]]]:
    """(token, key, values) of each term a Go `elect` process printed (LEADER KEY REV)."""
    out = []
    for text in p.texts("LEADER "):
        _, key, rev = text.split()
        out.append((int(rev), key, [proposal.encode(), proclaimed.encode()]))
    return out


async def test_go_elections_and_ours_contend_one_leader_at_a_time(
    client: Client, ns: str, etcd_endpoints: list[str], go_binary: str
) -> None:
    """Two Go processes on concurrency.Election and two of our candidates (each on a client of its own)
    campaign for the same name for N rounds each, every leader inside the shared occupancy check. Nobody
    sees a violation, everybody leads N times, and an observer of ours sees every term, in token order,
    with its proposal and then its proclaimed value: one leader at a time, as etcd ordered them."""
    base = await baseline(client)
    name = ns + "elect"
    check_prefix = ns + "occ/"  # outside NAME/: Go's candidates wait for every key under NAME/
    n, hold_ms = 8, 20
    async with (
        Client(etcd_endpoints) as c1,
        Client(etcd_endpoints) as c2,
        observing(client.election(name)) as obs,
    ):
        ours = [
            OurCandidate(c, name, f"py{i}", RWCheck(c, check_prefix)) for i, c in enumerate((c1, c2), start=1)
        ]
        go_args = ("--name", name, "--rounds", str(n), "--hold-ms", str(hold_ms), "--check", check_prefix)
        async with contextlib.AsyncExitStack() as stack:
            gos = [
                await stack.enter_async_context(
                    go_proc(
                        "elect",
                        *go_args,
                        "--proposal",
                        f"{g}-r",
                        "--proclaim",
                        f"{g}-p",
                        endpoints=etcd_endpoints,
                    )
                )
                for g in ("go1", "go2")
            ]
            await asyncio.wait_for(asyncio.gather(*(o.rounds(n, hold_ms / 1000) for o in ours)), RUN_BUDGET)
            for g in gos:
                rc = await g.wait_exit(RUN_BUDGET)
                assert rc == 0 and g.texts()[-1] == "VIOLATIONS 0", g.describe()
                assert g.texts("VIOLATION ") == [], g.describe()
        for o in ours:
            assert o.check.violations == [], o.check.violations

        # Everybody led N times.
        terms = {g: go_terms(p, f"{g}-r", f"{g}-p") for g, p in zip(("go1", "go2"), gos, strict=True)}
        terms |= {o.who: o.terms for o in ours}
        for who, ts in terms.items():
            assert len(ts) == n, f"{who} led {len(ts)} times, not {n}"
        every = sorted(itertools.chain.from_iterable(terms.values()))
        tokens = [t for t, _, _ in every]
        assert len(set(tokens)) == len(tokens) == 4 * n, "two terms with one token"
        who_led = {token: who for who, ts in terms.items() for token, _, _ in ts}
        order = [who_led[token] for token in tokens]
        print(f"\nleadership order by token: {' '.join(order)}")

        # The observer saw each term, proposal then proclaimed value, in token order: no term missing (none
        # was skipped: they never overlapped), none repeated.
        expected = [(key, token, value) for token, key, values in every for value in values]
        await wait_until(lambda: len(obs.seen) >= len(expected), 20, "every observation")
        got = [identity(s) for s in obs.seen]
        assert got == expected, f"observed {len(got)}, expected {len(expected)}: first difference at " + str(
            next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None)
        )
    assert await keys_under(client, ns) == {}
    await assert_clean(client, ns, base)
