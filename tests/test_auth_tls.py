"""TLS (with client certificates) and username/password auth against a real etcd."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from etcdlock import AuthError, Client, ConnectionFailedError, TLSConfig
from etcdlock._wire import methods
from etcdlock._wire import rpc_pb2 as pb
from etcdlock.testing import EtcdCluster, ServerTLS, find_etcdctl_binary
from etcdlock.testing.certs import CertificateSet, make_ca, make_certificates
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_etcd(certs: CertificateSet) -> Iterator[EtcdCluster]:
    tls = ServerTLS(certs.server_cert_file, certs.server_key_file, certs.ca_file, client_cert_auth=True)
    with EtcdCluster(1, tls=tls) as cluster:
        yield cluster


def _client_tls(certs: CertificateSet) -> TLSConfig:
    return TLSConfig(ca_file=certs.ca_file, cert_file=certs.client_cert_file, key_file=certs.client_key_file)


async def test_tls_with_client_certificate_serves_kv_watch_and_keepalive(
    tls_etcd: EtcdCluster, certs: CertificateSet
) -> None:
    async with Client(tls_etcd.endpoints, tls=_client_tls(certs)) as c:
        w = c.watch("tls/k")
        async with w:
            await w.wait_created()
            await c.put("tls/k", "secret")
            ev = await asyncio.wait_for(w.next_event(), 5)
        assert ev.kv.value == b"secret"
        lease = await c.grant(5)
        keeper = c.keep_alive(lease.id, lease.ttl)
        await wait_until(lambda: keeper.renewals >= 1, what="a renewal over TLS")
        keeper.stop()
        await c.revoke(lease.id)
    assert c.resources().total() == 0


async def test_tls_with_the_wrong_ca_fails_clearly(
    tls_etcd: EtcdCluster, tmp_path: Path, certs: CertificateSet
) -> None:
    other_ca, _ = make_ca(tmp_path, "other")
    tls = TLSConfig(ca_file=other_ca, cert_file=certs.client_cert_file, key_file=certs.client_key_file)
    c = Client(tls_etcd.endpoints, tls=tls, timeout=1.5)
    with pytest.raises(ConnectionFailedError, match=tls_etcd.endpoints[0]):
        async with c:
            pass
    assert c.resources().total() == 0


async def test_plaintext_client_against_tls_server_fails_clearly(tls_etcd: EtcdCluster) -> None:
    c = Client(tls_etcd.endpoints, timeout=1.5)
    with pytest.raises(ConnectionFailedError):
        async with c:
            pass


# ---- auth ----


def _etcdctl(cluster: EtcdCluster, *args: str, user: str | None = None) -> str:
    env = {**os.environ, "ETCDCTL_API": "3"}
    cmd = [find_etcdctl_binary(), f"--endpoints={','.join(cluster.endpoints)}"]
    if user:
        cmd.append(f"--user={user}")
    proc = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=20, check=True)
    return proc.stdout


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[EtcdCluster]:
    # A 1 s token TTL lets the refresh-on-expiry path run for real.
    with EtcdCluster(1, extra_args=["--auth-token=simple", "--auth-token-ttl=1"]) as cluster:
        _etcdctl(cluster, "user", "add", "root:rootpw")
        _etcdctl(cluster, "auth", "enable")
        yield cluster


async def test_auth_with_right_password_serves_kv_watch_and_keepalive(auth_etcd: EtcdCluster) -> None:
    async with Client(auth_etcd.endpoints, username="root", password="rootpw") as c:
        w = c.watch("auth/k")
        async with w:
            await w.wait_created()
            await c.put("auth/k", "v")
            ev = await asyncio.wait_for(w.next_event(), 5)
        assert ev.kv.value == b"v"
        lease = await c.grant(5)
        keeper = c.keep_alive(lease.id, lease.ttl)
        await wait_until(lambda: keeper.renewals >= 1, what="a renewal with auth")
        keeper.stop()
        await c.revoke(lease.id)


async def test_wrong_password_is_an_auth_error(auth_etcd: EtcdCluster) -> None:
    c = Client(auth_etcd.endpoints, username="root", password="nope", timeout=2)
    with pytest.raises(AuthError, match="authentication failed"):
        async with c:
            pass
    assert c.resources().total() == 0


async def test_missing_credentials_on_an_auth_server_say_so(auth_etcd: EtcdCluster) -> None:
    async with Client(auth_etcd.endpoints, timeout=2) as c:  # Status needs no auth
        with pytest.raises(AuthError, match="pass username= and password="):
            await c.get("auth/k")


async def test_rejected_token_is_refreshed(auth_etcd: EtcdCluster) -> None:
    async with Client(auth_etcd.endpoints, username="root", password="rootpw") as c:
        await c.put("auth/t", "1")
        c._conn._token = "not-a-valid-token.1"
        assert (await c.get("auth/t")).kvs[0].value == b"1"
        assert c._conn._token != "not-a-valid-token.1"


async def test_expired_token_is_refreshed(auth_etcd: EtcdCluster) -> None:
    async with Client(auth_etcd.endpoints, username="root", password="rootpw") as c:
        await c.put("auth/e", "1")
        token = c._conn._token
        assert token is not None

        async def token_expired() -> bool:
            async with grpc.aio.insecure_channel(auth_etcd.endpoints[0]) as ch:
                rpc = ch.unary_unary(
                    methods.RANGE.path,
                    request_serializer=methods.RANGE.serializer(),
                    response_deserializer=methods.RANGE.deserializer(),
                )
                try:
                    await rpc(pb.RangeRequest(key=b"auth/e"), metadata=[("token", token)], timeout=2)
                except grpc.aio.AioRpcError as e:
                    return "invalid auth token" in (e.details() or "")
                return False

        # Any use of a simple token renews it, so the only way to expire it is to leave it unused past its
        # TTL (1 s, checked by etcd once a second): that passage of time is what this test is about.
        last_use = time.monotonic()
        await wait_until(lambda: time.monotonic() - last_use > 3.0, timeout=5, what="token TTL to pass")
        assert await token_expired(), "etcd still accepts the token; the test would prove nothing"
        assert (await c.get("auth/e")).kvs[0].value == b"1"
        assert c._conn._token != token
