"""`client.lock_status(name)` and `etcdlock status` for every recipe: lock, election, semaphore, read/write
lock, told apart by their keys alone, on real etcd.

Holders are real recipe handles; waiters are real acquires parked in etcd's queue (tasks, cancelled at the
end). Each test ends with nothing left under its namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator

import pytest

from etcdlock import Client, LockHolder, LockStatus
from etcdlock._recipes.contender import Contender
from etcdlock._recipes.holdable import Holdable
from etcdlock._recipes.status import _kind_of, recipe_status
from tests.test_cli import run_cli
from tests.test_lock import assert_clean, baseline, second_client
from tests.waiting import wait_until

DEADLINE = 20.0  # generous: the machine is small and shared


async def key_count(client: Client, prefix: str) -> int:
    return (await client.get(prefix, prefix=True, count_only=True)).count


@contextlib.asynccontextmanager
async def waiting(client: Client, prefix: str, *handles: Holdable) -> AsyncIterator[None]:
    """Each handle's acquire parked in the queue, one after the other (so their order is known); every
    one cancelled at the end (its key taken back)."""
    tasks: list[asyncio.Task[bool]] = []
    try:
        for handle in handles:
            before = await key_count(client, prefix)
            tasks.append(asyncio.create_task(handle.acquire()))
            await wait_until(functools.partial(_more, client, prefix, before), DEADLINE, "the waiter's key")
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for handle in handles:
            await handle.release()


async def _more(client: Client, prefix: str, before: int) -> bool:
    return await key_count(client, prefix) > before


async def cli(*args: str, endpoints: list[str]) -> str:
    r = await asyncio.to_thread(run_cli, "status", *args, endpoints=endpoints)
    assert r.returncode == 0 and r.stderr == "", r
    return r.stdout


def triples(entries: tuple[LockHolder, ...]) -> list[tuple[str, int, bytes]]:
    return [(e.key, e.token, e.value) for e in entries]


def contender(handle: Holdable) -> Contender:
    """The handle's latest acquisition (a waiter's, while it waits)."""
    assert handle._last is not None
    return handle._last


# ---- the kind, from the values alone (no etcd) ----


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ([], "lock"),
        ([b"", b""], "lock"),
        ([b"2", b"2", b"2"], "semaphore"),
        ([b"1"], "semaphore"),
        ([b"2", b"3"], "election"),  # not one limit: proposals that happen to be numbers
        ([b"0"], "election"),  # no semaphore has limit 0
        ([b"node-a", b""], "election"),
        ([b"node-a"], "election"),
    ],
)
def test_kind_from_values(values: list[bytes], kind: str) -> None:
    assert _kind_of(values) == kind


def test_lock_status_made_as_before_still_means_a_lock() -> None:
    holder = LockHolder("a/1", 1, 5, 7)
    status = LockStatus("a", holder, (), 9)
    assert (status.kind, status.holders, status.limit, holder.value, holder.mode) == (
        "lock",
        (holder,),
        None,
        b"",
        None,
    )
    assert LockStatus("a", None, (), 9).holders == ()
    assert LockHolder("a/read/1f", 0x1F, 5, 7).mode == "read"
    assert LockHolder("a/write/1f", 0x1F, 5, 7).mode == "write"


# ---- each kind through client.lock_status ----


async def test_lock_still_shows_as_a_lock(client: Client, ns: str) -> None:
    base = await baseline(client)
    name = ns + "job"
    async with client.lock(name, timeout=DEADLINE) as held:
        status = await client.lock_status(name)
        assert status.kind == "lock" and status.limit is None
        assert status.holder is not None and status.holder.key == held.key and status.holder.value == b""
        assert status.holders == (status.holder,) and status.waiters == ()
    free = await client.lock_status(name)
    assert free == LockStatus(name, None, (), free.revision)
    await assert_clean(client, ns, base)


async def test_election_shows_the_leader_its_proposal_and_the_candidates(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "svc"
    async with second_client(etcd_endpoints) as other:
        election = client.election(name)
        async with election.campaign("node-a", ttl=10, timeout=DEADLINE) as leader:
            await leader.proclaim("node-a v2")
            candidate = other.election(name).campaign("node-b", ttl=20, timeout=DEADLINE)
            async with waiting(client, name + "/", candidate):
                status = await client.lock_status(name)
                assert status.kind == "election" and status.limit is None
                assert status.holder is not None and status.holders == (status.holder,)
                assert triples(status.holders) == [(leader.key, leader.token, b"node-a v2")]
                assert [(e.value, e.lease) for e in status.waiters] == [
                    (b"node-b", contender(candidate).lease)
                ]
                assert 0 < status.holder.ttl_left <= 10 and 0 < status.waiters[0].ttl_left <= 20
                now = await election.leader()
                assert now is not None and (now.key, now.value) == (status.holder.key, status.holder.value)
    await assert_clean(client, ns, base)


async def test_semaphore_shows_its_limit_its_holders_and_its_waiters(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "pool"
    async with second_client(etcd_endpoints) as other:
        sem = client.semaphore(name, 2, timeout=DEADLINE)
        first, second = sem.slot(), other.semaphore(name, 2).slot()
        async with first, second:
            later = [other.semaphore(name, 2).slot(), sem.slot()]
            async with waiting(client, name + "/", *later):
                status = await client.lock_status(name)
                assert (status.kind, status.limit) == ("semaphore", 2)
                assert triples(status.holders) == [
                    (first.key, first.token, b"2"),
                    (second.key, second.token, b"2"),
                ]
                assert status.holder == status.holders[0]
                assert [e.token for e in status.waiters] == [contender(h).token for h in later]
                assert all(e.ttl_left > 0 for e in (*status.holders, *status.waiters))
    await assert_clean(client, ns, base)


async def test_rwlock_shows_readers_together_or_the_writer_and_who_waits(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    name = ns + "catalog"
    async with second_client(etcd_endpoints) as other:
        rw, rw_other = client.rwlock(name, timeout=DEADLINE), other.rwlock(name, timeout=DEADLINE)
        readers = [rw.read(), rw_other.read()]
        writer, late_reader = rw_other.write(), rw.read()
        async with readers[0], readers[1], waiting(client, name + "/", writer, late_reader):
            status = await client.lock_status(name)
            assert status.kind == "rwlock" and status.limit is None
            assert [(e.key, e.mode) for e in status.holders] == [(r.key, "read") for r in readers]
            assert [e.mode for e in status.waiters] == ["write", "read"]  # a reader waits behind it
            await asyncio.gather(readers[0].release(), readers[1].release())
            await wait_until(lambda: writer.held, DEADLINE, "the writer to hold")
            status = await client.lock_status(name)
            assert [(e.key, e.mode) for e in status.holders] == [(writer.key, "write")]
            assert [e.mode for e in status.waiters] == ["read"]
    await assert_clean(client, ns, base)


# ---- etcdlock status: every kind under one prefix, grouped ----


async def test_status_command_lists_every_kind_under_a_prefix_once(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    base = await baseline(client)
    async with second_client(etcd_endpoints) as other:
        lock = client.lock(ns + "job", timeout=DEADLINE)
        term = client.election(ns + "svc").campaign("node-a", timeout=DEADLINE)
        slots = [client.semaphore(ns + "pool", 2).slot(), other.semaphore(ns + "pool", 2).slot()]
        reader = client.rwlock(ns + "catalog").read()
        async with lock, term, slots[0], slots[1], reader:
            waiters = [
                other.lock(ns + "job"),
                other.election(ns + "svc").campaign("node-b"),
                other.semaphore(ns + "pool", 2).slot(),
                other.rwlock(ns + "catalog").write(),
            ]
            async with contextlib.AsyncExitStack() as stack:
                for w in waiters:
                    await stack.enter_async_context(waiting(client, w.name + "/", w))
                text = await cli(ns, endpoints=etcd_endpoints)
                data = json.loads(await cli(ns, "--json", endpoints=etcd_endpoints))

    sections = _sections(text)
    assert list(sections) == ["locks:", "elections:", "semaphores:", "read/write locks:"], text
    assert sections["locks:"][0] == f"  {ns}job  (1 waiting)"
    assert sections["elections:"][0] == f"  {ns}svc  leader 'node-a'  (1 waiting)"
    assert sections["semaphores:"][0] == f"  {ns}pool  limit 2  (2 holding, 1 waiting)"
    assert sections["read/write locks:"][0] == f"  {ns}catalog  (1 reading, 1 waiting)"
    assert any(line.strip().startswith("candidate") and "'node-b'" in line for line in sections["elections:"])
    assert sum(line.strip().startswith("holder") for line in sections["semaphores:"]) == 2
    assert any(line.split()[:2] == ["waiter", "write"] for line in sections["read/write locks:"])
    assert f"{ns}catalog/read " not in text and f"{ns}catalog/write " not in text

    assert sorted(data) == sorted(ns + n for n in ("job", "svc", "pool", "catalog"))
    kinds = {name: {e["kind"] for e in entries} for name, entries in data.items()}
    assert kinds == {
        ns + "job": {"lock"},
        ns + "svc": {"election"},
        ns + "pool": {"semaphore"},
        ns + "catalog": {"rwlock"},
    }
    assert [(e["role"], e["value"]) for e in data[ns + "svc"]] == [("holder", "node-a"), ("waiter", "node-b")]
    assert [e["role"] for e in data[ns + "pool"]] == ["holder", "holder", "waiter"]
    assert [(e["role"], e["mode"]) for e in data[ns + "catalog"]] == [("holder", "read"), ("waiter", "write")]
    assert [e["role"] for e in data[ns + "job"]] == ["holder", "waiter"]
    await assert_clean(client, ns, base)


async def test_go_rwmutex_keys_show_as_one_read_write_lock(
    client: Client, ns: str, etcd_endpoints: list[str]
) -> None:
    # Go's contrib/recipes RWMutex names its keys NAME/read/<UnixNano>, on the session's lease.
    base = await baseline(client)
    name = ns + "go-rw"
    lease = (await client.grant(30)).id
    try:
        for mode in ("read", "read", "write"):
            await client.put(f"{name}/{mode}/{time.time_ns()}", "", lease=lease)
        status = await recipe_status(client, name)
        assert status.kind == "rwlock"
        assert [e.mode for e in status.holders] == ["read", "read"]
        assert [e.mode for e in status.waiters] == ["write"]
        text = await cli(ns, endpoints=etcd_endpoints)
        assert f"  {name}  (2 reading, 1 waiting)" in text and f"{name}/read " not in text
    finally:
        await client.revoke(lease)
    assert "nothing held under" in await cli(ns, endpoints=etcd_endpoints)
    await assert_clean(client, ns, base)


def _sections(text: str) -> dict[str, list[str]]:
    """The output's sections: each title line and the lines under it."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if not line.startswith(" "):
            current = sections.setdefault(line, [])
        else:
            current.append(line)
    return sections
