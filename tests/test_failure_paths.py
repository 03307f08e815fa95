"""Clean failures: a refused lock says only what happened, with a readable message, and leaves nothing."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator

import pytest

from etcdlock import Client, ConfigError, LockTimeout, PermissionDeniedError, SyncClient
from etcdlock._recipes.mutex import MAX_NAME_BYTES
from etcdlock.testing import EtcdCluster, find_etcdctl_binary

MESSAGE_LIMIT = 600  # characters: an error about a huge name stays a readable line


def _etcdctl(cluster: EtcdCluster, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    cmd = [find_etcdctl_binary(), f"--endpoints={','.join(cluster.endpoints)}", "--user=root:rootpw"]
    subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=20, check=True)


@pytest.fixture(scope="module")
def read_only_etcd() -> Iterator[EtcdCluster]:
    """etcd with auth on, and a user "reader" that may only read keys under locks/."""
    with EtcdCluster(1) as cluster:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        env["ETCDCTL_API"] = "3"
        base = [find_etcdctl_binary(), f"--endpoints={','.join(cluster.endpoints)}"]
        subprocess.run([*base, "user", "add", "root:rootpw"], env=env, check=True, capture_output=True)
        subprocess.run([*base, "auth", "enable"], env=env, check=True, capture_output=True)
        _etcdctl(cluster, "role", "add", "readonly")
        _etcdctl(cluster, "role", "grant-permission", "--prefix=true", "readonly", "read", "locks/")
        _etcdctl(cluster, "user", "add", "reader:readerpw")
        _etcdctl(cluster, "user", "grant-role", "reader", "readonly")
        yield cluster


async def test_a_refused_create_warns_of_no_key_and_leaves_nothing(
    read_only_etcd: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="etcdlock")
    async with Client(read_only_etcd.endpoints, username="reader", password="readerpw", timeout=3) as client:
        with pytest.raises(PermissionDeniedError):
            async with client.lock("locks/job", timeout=3):
                pytest.fail("the body ran without the lock")
    cleanup_lines = [r.getMessage() for r in caplog.records if "delete" in r.getMessage()]
    assert not cleanup_lines, f"cleanup of a key that was never written: {cleanup_lines}"
    async with Client(read_only_etcd.endpoints, username="root", password="rootpw") as root:
        assert (await root.get("locks/", prefix=True)).kvs == []


async def test_a_name_too_large_for_etcd_is_refused_up_front(client: Client, ns: str) -> None:
    huge = ns + "n" * (2 * 1024 * 1024)
    for make in (
        lambda: client.lock(huge),
        lambda: client.election(huge),
        lambda: client.semaphore(huge, 2),
        lambda: client.rwlock(huge),
    ):
        with pytest.raises(ConfigError, match=r"2,\d{3},\d{3} bytes; names can be up to 65,536 bytes") as e:
            make()
        assert len(str(e.value)) < MESSAGE_LIMIT, f"{len(str(e.value))} characters"
    assert (await client.get(ns, prefix=True)).kvs == []


async def test_long_names_work_and_are_shortened_in_messages(client: Client, ns: str) -> None:
    name = ns + "x" * (MAX_NAME_BYTES - len(ns.encode()))
    async with client.lock(name, timeout=5) as held:
        other = client.lock(name)
        assert not await other.acquire(timeout=0)
        with pytest.raises(LockTimeout) as e:
            async with client.lock(name, timeout=0.2):
                pass
        assert len(str(e.value)) < MESSAGE_LIMIT, str(e.value)[:200]
        assert "characters]" in str(e.value)  # the name, shortened, with its length
        assert held.held
    assert (await client.get(ns, prefix=True)).kvs == []


@pytest.mark.parametrize("timeout", [1e-9, 1e-6])
async def test_a_timeout_that_ends_during_setup_is_a_lock_timeout(
    client: Client, ns: str, timeout: float
) -> None:
    # A TTL no lock of this client used yet: the timeout ends while its session is being started.
    with pytest.raises(LockTimeout):
        async with client.lock(ns + "setup", ttl=17, timeout=timeout):
            pytest.fail("the body ran")
    assert not await client.lock(ns + "setup2", ttl=19, timeout=timeout).acquire()
    assert (await client.get(ns, prefix=True)).kvs == []


@pytest.mark.parametrize("timeout", [1e-9, 1e-6])
def test_a_sync_timeout_that_ends_during_setup_is_a_lock_timeout(
    etcd_endpoints: list[str], ns: str, timeout: float
) -> None:
    with SyncClient(etcd_endpoints) as sync_client:
        _sync_setup_timeouts(sync_client, ns, timeout)


def _sync_setup_timeouts(sync_client: SyncClient, ns: str, timeout: float) -> None:
    with pytest.raises(LockTimeout), sync_client.lock(ns + "setup", ttl=23, timeout=timeout):
        pytest.fail("the body ran")
    assert not sync_client.lock(ns + "setup2", ttl=29).acquire(timeout=timeout)
    assert sync_client.get(ns, prefix=True).kvs == []
