"""The debug endpoint and metrics, against a real etcd: every route answers; /metrics parses with
prometheus-client's parser and its numbers match what the locks did."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from etcdlock import Client, LockTimeout
from tests.test_lock import acquired
from tests.waiting import wait_until

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url: str) -> tuple[int, str]:
    try:
        with _OPENER.open(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def no_tracemalloc_left() -> Iterator[None]:
    was = tracemalloc.is_tracing()
    yield
    if not was and tracemalloc.is_tracing():
        tracemalloc.stop()


async def test_every_route_answers_and_metrics_match(
    etcd_endpoints: list[str], ns: str, no_tracemalloc_left: None
) -> None:
    async with Client(etcd_endpoints) as client, Client(etcd_endpoints) as other:
        server = await client.serve_debug()
        assert server.host == "127.0.0.1" and server.port > 0
        for _ in range(3):
            async with client.lock(ns + "a"):
                pass
        async with client.lock(ns + "b"):
            with pytest.raises(LockTimeout):
                async with client.lock(ns + "b", timeout=0.1):
                    pass
        held = await acquired(client.lock(ns + "c"))
        await other.revoke(held.lease)
        await wait_until(lambda: held.lost.is_set(), what="loss seen")
        await held.release()

        status, text = await asyncio.to_thread(fetch, server.url + "/metrics")
        assert status == 200, text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = {s.name: s.value for f in families.values() for s in f.samples if not s.labels}
        assert families["etcdlock_lock_wait_seconds"].type == "histogram"
        assert families["etcdlock_locks_acquired"].type == "counter"
        assert "etcdlock_locks_acquired_total" not in families, "a counter was split into two families"
        assert samples["etcdlock_lock_wait_seconds_count"] == 5  # 3 x a, b, c
        assert samples["etcdlock_lock_hold_seconds_count"] == 5
        assert samples["etcdlock_locks_acquired_total"] == 5
        assert samples["etcdlock_locks_lost_total"] == 1
        assert samples["etcdlock_lock_acquire_timeouts_total"] == 1
        assert samples["etcdlock_locks_held"] == 0
        assert samples["etcdlock_process_open_fds"] > 0

        status, text = await asyncio.to_thread(fetch, server.url + "/debug/memory")
        assert status == 200, text
        assert "top allocation sites" in text and "baseline set" in text
        status, text = await asyncio.to_thread(fetch, server.url + "/debug/memory")
        assert "growth since baseline" in text and "baseline set" not in text
        status, text = await asyncio.to_thread(fetch, server.url + "/debug/memory?reset=1")
        assert "baseline set" in text

        status, text = await asyncio.to_thread(fetch, server.url + "/debug/gc")
        report = json.loads(text)
        assert status == 200, text
        assert report["collected"] >= 0 and report["objects_after"] > 0

        status, text = await asyncio.to_thread(fetch, server.url + "/debug/tasks")
        assert status == 200, text
        assert "etcdlock:" in text and "tasks" in text.splitlines()[0]

        status, text = await asyncio.to_thread(fetch, server.url + "/debug/resources")
        report = json.loads(text)
        assert report["client"]["channels"] == 1 and report["locks"]["acquired"] == 5
        assert report["process"]["fds"] > 0

        assert (await asyncio.to_thread(fetch, server.url + "/nope"))[0] == 404
    # Closed with the client: nothing listens any more.
    with pytest.raises(urllib.error.URLError):
        _OPENER.open(server.url + "/metrics", timeout=2)


async def test_debug_server_close_is_idempotent_and_leaves_no_tasks(etcd_endpoints: list[str]) -> None:
    async with Client(etcd_endpoints) as client:
        before = len(asyncio.all_tasks())
        server = await client.serve_debug()
        status, text = await asyncio.to_thread(fetch, server.url + "/debug/resources")
        assert status == 200, text
        await server.close()
        await server.close()
        assert len(asyncio.all_tasks()) == before
