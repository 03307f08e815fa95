"""Failover on a real 3-member cluster: unary calls move on, watches resume without loss or duplicates."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from etcdlock import Client, ConnectionFailedError
from etcdlock._core.watch import STREAM_KEY
from etcdlock.testing import EtcdCluster, EtcdMember
from tests.waiting import wait_until


@pytest.fixture
def cluster(etcd_cluster3: EtcdCluster) -> Iterator[EtcdCluster]:
    yield etcd_cluster3
    # Leave the module's cluster whole for the next test.
    for m in etcd_cluster3.members:
        if m.is_paused:
            m.resume()
        if not m.is_running:
            m.restart()
    etcd_cluster3.wait_healthy(timeout=20)


async def test_unary_calls_fail_over_when_the_member_in_use_dies(cluster: EtcdCluster, ns: str) -> None:
    async with Client(cluster.endpoints, timeout=5) as c:
        first = c.current_endpoint
        await c.put(ns + "k", "before")
        victim = next(m for m in cluster.members if m.endpoint == first)
        victim.kill()
        r = await c.get(ns + "k")
        assert r.kvs[0].value == b"before"
        assert c.current_endpoint != first


async def test_dead_first_endpoint_is_skipped(cluster: EtcdCluster, ns: str) -> None:
    dead = cluster.members[0]
    dead.kill()
    async with Client([dead.endpoint, cluster.members[1].endpoint], timeout=5) as c:
        await c.put(ns + "k", "v")
        assert c.current_endpoint == cluster.members[1].endpoint


async def test_only_unreachable_endpoints_fail_clearly_within_the_timeout() -> None:
    c = Client(["127.0.0.1:1", "127.0.0.1:2"], timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(ConnectionFailedError) as info:
        async with c:
            pass
    elapsed = time.monotonic() - t0
    assert elapsed < 3.0
    assert "127.0.0.1:1" in str(info.value) and "127.0.0.1:2" in str(info.value)
    assert c.resources().total() == 0


def _member_of(cluster: EtcdCluster, endpoint: str) -> EtcdMember:
    return next(m for m in cluster.members if m.endpoint == endpoint)


async def test_watch_resumes_on_another_member_without_loss_or_duplicates(
    cluster: EtcdCluster, ns: str
) -> None:
    total = 300
    async with Client(cluster.endpoints, timeout=5) as watcher_client:
        watched_member = _member_of(cluster, watcher_client.current_endpoint)
        others = [m.endpoint for m in cluster.members if m is not watched_member]
        async with Client(others, timeout=10) as writer:
            seen: list[tuple[bytes, int]] = []
            w = watcher_client.watch(ns, prefix=True)
            async with w:
                await w.wait_created()
                stream = watcher_client._watch._streams[STREAM_KEY]

                async def write_all() -> None:
                    for i in range(total):
                        await writer.put(f"{ns}{i:04d}", str(i))
                        if i == total // 3:
                            watched_member.kill()  # the stream breaks mid-flow

                async def read_all() -> None:
                    while len(seen) < total:
                        ev = await w.next_event()
                        seen.append((ev.kv.key, ev.revision))

                await asyncio.wait_for(asyncio.gather(write_all(), read_all()), 30)
                assert stream.generations >= 2, "the stream never broke; the test proves nothing"
            assert [k for k, _ in seen] == [f"{ns}{i:04d}".encode() for i in range(total)]
            revisions = [r for _, r in seen]
            assert revisions == sorted(set(revisions)), "duplicate or out-of-order events"
            assert watcher_client.current_endpoint != watched_member.endpoint
            await wait_until(lambda: watcher_client.resources().watch_streams == 0, what="stream closed")
