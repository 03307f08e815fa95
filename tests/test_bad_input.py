"""Bad input and bad surroundings, each with a specific error, a clear message, and nothing left behind.

The plain argument checks (empty or non-str names, TTL <= 0, negative timeouts, `a` vs `a/b`) are in
test_lock.py; wrong password and TLS set-ups in test_auth_tls.py. Here: a TTL below the server's minimum
lease TTL, credentials against a server without auth, and locks on endpoints nobody answers on.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from etcdlock import AuthError, Client, ConfigError, ConnectionFailedError, EtcdTimeoutError
from etcdlock._cli.lock_cmd import EXIT_ERROR
from etcdlock._core.errors import TTLBelowMinimumError
from etcdlock.testing import EtcdCluster
from tests.test_cli import run_cli
from tests.test_lock import assert_clean, baseline, grants_metric, keys_under
from tests.waiting import wait_until

# ---------------------------------------------------------------------------------------------------------
# A TTL below the server's minimum lease TTL
# ---------------------------------------------------------------------------------------------------------

# etcd's minimum lease TTL is 1.5 x its election timeout, rounded up to whole seconds; etcd raises a smaller
# TTL to it without a word. With etcd's own default timings (100 ms heartbeat, 1 s election) that is 2 s.
# (The test harness's fast timings give 1 s, the smallest TTL there is, so the session etcd can't show it.)
MIN_TTL = 2


@pytest.fixture(scope="module")
def etcd_default_timing() -> Iterator[EtcdCluster]:
    with EtcdCluster(1, heartbeat_ms=100, election_ms=1000) as cluster:
        yield cluster


@pytest.fixture
async def dt_client(etcd_default_timing: EtcdCluster) -> AsyncIterator[Client]:
    c = Client(etcd_default_timing.endpoints)
    async with c:
        yield c
    assert c.resources().total() == 0, f"client still holds resources after close: {c.resources()}"


async def test_the_server_really_raises_a_small_ttl(dt_client: Client) -> None:
    """The premise: the core grant() reports the TTL etcd granted, unchanged, and it is the raised one."""
    grant = await dt_client.grant(1)
    try:
        assert grant.ttl == MIN_TTL
    finally:
        await dt_client.revoke(grant.id)


async def _lock(client: Client, name: str, ttl: int) -> None:
    async with client.lock(name, ttl=ttl, timeout=5):
        pytest.fail("the body ran on a lease longer than the TTL asked for")


async def _try_lock(client: Client, name: str, ttl: int) -> None:
    held = await client.try_lock(name, ttl=ttl)
    if held is not None:
        await held.release()
    pytest.fail(f"try_lock answered {held!r} instead of raising")


async def _session(client: Client, name: str, ttl: int) -> None:
    async with client.session(ttl):
        pytest.fail("the session started on a lease longer than the TTL asked for")


@pytest.mark.parametrize("how", [_lock, _try_lock, _session], ids=["lock", "try_lock", "session"])
async def test_ttl_below_the_servers_minimum_is_refused_and_its_lease_revoked(
    dt_client: Client, etcd_default_timing: EtcdCluster, ns: str, how: Any
) -> None:
    base = await baseline(dt_client)
    granted = grants_metric(etcd_default_timing)
    with pytest.raises(TTLBelowMinimumError) as ei:
        await how(dt_client, ns + "short", 1)
    err = ei.value
    assert isinstance(err, ConfigError)
    assert (err.ttl, err.minimum) == (1, MIN_TTL)
    msg = str(err)
    for part in ("ttl=1 s", "below the minimum lease TTL", etcd_default_timing.endpoints[0], "use ttl >= 2"):
        assert part in msg, f"{part!r} not in {msg!r}"
    # Only the server could tell: a lease was granted, and it was revoked again before the error.
    assert grants_metric(etcd_default_timing) == granted + 1
    assert set(await dt_client.leases()) == set(base.leases), "the raised lease was left behind"
    await assert_clean(dt_client, ns, base)


async def test_ttl_at_the_servers_minimum_is_accepted(dt_client: Client, ns: str) -> None:
    base = await baseline(dt_client)
    async with dt_client.lock(ns + "ok", ttl=MIN_TTL, timeout=5) as held:
        assert (await dt_client.time_to_live(held.lease)).granted_ttl == MIN_TTL
        assert await keys_under(dt_client, ns) == {held.key: held.token}
    await assert_clean(dt_client, ns, base)


async def test_cli_lock_with_a_ttl_below_the_minimum_is_an_error_exit(
    dt_client: Client, etcd_default_timing: EtcdCluster, ns: str
) -> None:
    base = await baseline(dt_client)
    r = await asyncio.to_thread(
        run_cli,
        "lock",
        ns + "job",
        "--ttl",
        "1",
        "--",
        "sh",
        "-c",
        "echo command-ran",
        endpoints=etcd_default_timing.endpoints,
    )
    assert r.returncode == EXIT_ERROR, (r.returncode, r.stdout, r.stderr)
    assert "command-ran" not in r.stdout, "the command ran without a lock of the TTL asked for"
    assert "ttl=1 s is below the minimum lease TTL" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    await assert_clean(dt_client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# Credentials against a server without auth
# ---------------------------------------------------------------------------------------------------------


def _assert_auth_not_enabled(err: BaseException, endpoint: str) -> None:
    msg = str(err)
    for part in ("authentication is not enabled", "'root'", endpoint, "were not used"):
        assert part in msg, f"{part!r} not in {msg!r}"


async def test_credentials_against_a_server_without_auth_are_an_auth_error(etcd: EtcdCluster) -> None:
    # Auth was asked for, and the server would serve anyone: refuse rather than carry on unauthenticated.
    c = Client(etcd.endpoints, username="root", password="secret", timeout=2)
    with pytest.raises(AuthError) as ei:
        async with c:
            pytest.fail("connected to a server without auth although credentials were given")
    _assert_auth_not_enabled(ei.value, etcd.endpoints[0])
    assert c.resources().total() == 0


async def test_lock_with_credentials_on_a_server_without_auth_is_an_auth_error(
    client: Client, etcd: EtcdCluster, ns: str
) -> None:
    base = await baseline(client)
    granted = grants_metric(etcd)
    c = Client(etcd.endpoints, username="root", password="secret", timeout=2)
    try:
        with pytest.raises(AuthError) as ei:
            async with c.lock(ns + "x", timeout=2):
                pytest.fail("the body ran")
    finally:
        await c.close()
    _assert_auth_not_enabled(ei.value, etcd.endpoints[0])
    assert grants_metric(etcd) == granted, "a lease was granted without the credentials being checked"
    assert c.resources().total() == 0
    await assert_clean(client, ns, base)


# ---------------------------------------------------------------------------------------------------------
# Unreachable endpoints
# ---------------------------------------------------------------------------------------------------------

NO_HANG = 15.0  # seconds: far above the 1 s client timeout; only there to catch a hang


@pytest.fixture(params=["refused", "silent"])
def dead_endpoint(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """("refused", ep): a port bound but not listening (connection refused); ("silent", ep): a port that
    accepts TCP connections but never speaks HTTP/2. Held open for the test, so nobody else takes it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        if request.param == "silent":
            sock.listen(16)
        yield request.param, f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.mark.parametrize("how", [_lock, _try_lock, _session], ids=["lock", "try_lock", "session"])
async def test_lock_on_an_unreachable_endpoint_fails_clearly_within_the_timeout(
    dead_endpoint: tuple[str, str], how: Any
) -> None:
    kind, endpoint = dead_endpoint
    tasks_before = set(asyncio.all_tasks())
    c = Client([endpoint], timeout=1)
    t0 = time.monotonic()
    try:
        with pytest.raises((ConnectionFailedError, EtcdTimeoutError)) as ei:
            await how(c, "/t/unreachable/x", 10)
        elapsed = time.monotonic() - t0
    finally:
        await c.close()
    assert elapsed < NO_HANG, f"took {elapsed:.1f}s to fail for a 1 s timeout"
    assert elapsed >= 0.9, f"gave up after {elapsed:.2f}s, before the 1 s timeout"
    msg = str(ei.value)
    assert endpoint in msg and ("within 1s" in msg or "after 1s" in msg), msg
    if kind == "refused":
        assert isinstance(ei.value, ConnectionFailedError)
        assert "Connection refused" in msg, msg
        assert ei.value.endpoints == (endpoint,)
    assert c.resources().total() == 0, c.resources()
    me = asyncio.current_task()

    def no_new_tasks() -> bool:
        return not [t for t in asyncio.all_tasks() if t is not me and t not in tasks_before and not t.done()]

    await wait_until(no_new_tasks, 3, "the failed lock's tasks to end")
