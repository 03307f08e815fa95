"""TLS (with client certificates) and username/password auth against a real etcd."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from etcdlock import (
    AuthError,
    Client,
    ConnectionFailedError,
    EventType,
    Op,
    PermissionDeniedError,
    TLSConfig,
    WatchEvent,
)
from etcdlock._wire import methods
from etcdlock._wire import rpc_pb2 as pb
from etcdlock.testing import EtcdCluster, ServerTLS, find_etcdctl_binary
from etcdlock.testing.certs import CertificateSet, make_ca, make_certificates
from tests.test_lock import assert_clean, baseline, is_waiting, keys_under
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
    with pytest.raises(ConnectionFailedError, match=tls_etcd.endpoints[0]) as ei:
        async with c:
            pass
    assert WRONG_CA in str(ei.value), str(ei.value)
    assert c.resources().total() == 0


WRONG_CA = "TLS handshake failed: the server's certificate could not be verified (wrong CA?)"
NO_HANG = 15.0  # seconds: far above the clients' timeouts; only there to catch a hang


async def test_lock_with_the_wrong_ca_fails_clearly_and_leaves_nothing(
    tls_etcd: EtcdCluster, tmp_path: Path, certs: CertificateSet, ns: str
) -> None:
    other_ca, _ = make_ca(tmp_path, "other")
    wrong = TLSConfig(ca_file=other_ca, cert_file=certs.client_cert_file, key_file=certs.client_key_file)
    async with Client(tls_etcd.endpoints, tls=_client_tls(certs)) as good:
        base = await baseline(good)
        c = Client(tls_etcd.endpoints, tls=wrong, timeout=1.5)  # not connected first: the lock path itself
        t0 = time.monotonic()
        try:
            with pytest.raises(ConnectionFailedError) as ei:
                async with c.lock(ns + "x", timeout=3):
                    pytest.fail("the body ran over an unverified connection")
        finally:
            await c.close()
        assert time.monotonic() - t0 < NO_HANG
        msg = str(ei.value)
        for part in (WRONG_CA, "CERTIFICATE_VERIFY_FAILED", tls_etcd.endpoints[0]):
            assert part in msg, f"{part!r} not in {msg!r}"
        assert c.resources().total() == 0, c.resources()
        await assert_clean(good, ns, base)


async def test_watch_with_the_wrong_ca_delivers_nothing_and_logs_why(
    tls_etcd: EtcdCluster,
    tmp_path: Path,
    certs: CertificateSet,
    ns: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    other_ca, _ = make_ca(tmp_path, "other")
    wrong = TLSConfig(ca_file=other_ca, cert_file=certs.client_cert_file, key_file=certs.client_key_file)
    # Entering the client checks the connection first: that is where a wrong CA shows up in normal use.
    c = Client(tls_etcd.endpoints, tls=wrong, timeout=1.5)
    with pytest.raises(ConnectionFailedError, match=re.escape(WRONG_CA)):
        async with c:
            pytest.fail("connected with the wrong CA")
    assert c.resources().total() == 0

    # A watch on a client that never checked keeps resuming (a watch outlives outages), but it never
    # trusts the server: nothing is created or delivered, and every failed attempt is logged with the cause.
    caplog.set_level(logging.INFO, logger="etcdlock.watch")
    c = Client(tls_etcd.endpoints, tls=wrong, timeout=1.5)
    try:
        async with Client(tls_etcd.endpoints, tls=_client_tls(certs)) as good:
            w = c.watch(ns + "k")
            w.start()

            def tls_failures_logged() -> int:
                return sum("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records)

            await wait_until(lambda: tls_failures_logged() >= 1, 10, "the watch's TLS failure in the log")
            await good.put(ns + "k", "v")
            after_put = tls_failures_logged()
            await wait_until(lambda: tls_failures_logged() > after_put, 10, "an attempt after the put")
            assert not w.created.is_set() and w.buffered == 0 and not w.done
            w.cancel()
            await good.delete(ns, prefix=True)
    finally:
        await c.close()
    assert c.resources().total() == 0, c.resources()


async def test_plaintext_client_against_tls_server_fails_clearly(tls_etcd: EtcdCluster) -> None:
    c = Client(tls_etcd.endpoints, timeout=1.5)
    with pytest.raises(ConnectionFailedError, match=r"closed the plain-text connection \(if etcd serves TLS"):
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


# ---- TLS and auth together ----


def _etcdctl_tls(cluster: EtcdCluster, certs: CertificateSet, *args: str, user: str | None = None) -> str:
    tls_args = [
        f"--cacert={certs.ca_file}",
        f"--cert={certs.client_cert_file}",
        f"--key={certs.client_key_file}",
    ]
    urls = ",".join(m.client_url for m in cluster.members)
    env = {**os.environ, "ETCDCTL_API": "3"}
    cmd = [find_etcdctl_binary(), f"--endpoints={urls}", *tls_args]
    if user:
        cmd.append(f"--user={user}")
    proc = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=20, check=True)
    return proc.stdout


@pytest.fixture(scope="module")
def tls_auth_etcd(certs: CertificateSet) -> Iterator[EtcdCluster]:
    """Client certificates required AND username/password auth enabled, on one etcd."""
    tls = ServerTLS(certs.server_cert_file, certs.server_key_file, certs.ca_file, client_cert_auth=True)
    with EtcdCluster(1, tls=tls, extra_args=["--auth-token=simple"]) as cluster:
        _etcdctl_tls(cluster, certs, "user", "add", "root:rootpw")
        _etcdctl_tls(cluster, certs, "auth", "enable")
        yield cluster


def _tls_auth_client(cluster: EtcdCluster, certs: CertificateSet, password: str = "rootpw") -> Client:
    return Client(cluster.endpoints, tls=_client_tls(certs), username="root", password=password, timeout=3)


async def test_tls_and_auth_both_enforced(tls_auth_etcd: EtcdCluster, certs: CertificateSet) -> None:
    # The client certificate alone is no login (its CN names no etcd user): auth really is on.
    async with Client(tls_auth_etcd.endpoints, tls=_client_tls(certs), timeout=3) as c:
        with pytest.raises(PermissionDeniedError):
            await c.get("anything")
    c = _tls_auth_client(tls_auth_etcd, certs, password="nope")
    with pytest.raises(AuthError, match="authentication failed"):
        async with c:
            pass
    assert c.resources().total() == 0


async def test_tls_and_auth_lock_contention_fencing_watch_and_keepalive(
    tls_auth_etcd: EtcdCluster, certs: CertificateSet, ns: str
) -> None:
    name, data = ns + "job", ns + "data"
    async with _tls_auth_client(tls_auth_etcd, certs) as a, _tls_auth_client(tls_auth_etcd, certs) as b:
        base = await baseline(a)
        events: list[WatchEvent] = []
        w = b.watch(ns, prefix=True)
        async with w:
            await w.wait_created()

            async def collect() -> None:
                async for ev in w:
                    events.append(ev)

            collector = asyncio.create_task(collect())
            try:
                # A short session TTL so that renewals (every TTL/3 = 1 s) happen within the test.
                async with a.session(3) as session, a.lock(name, session=session, timeout=5) as first:
                    first_key, first_token = first.key, first.token
                    second = b.lock(name, timeout=30)
                    waiting = asyncio.create_task(second.acquire())
                    try:
                        await wait_until(lambda: is_waiting(second), 10, "the second client to queue")
                        assert not waiting.done() and not second.held
                        queued = await keys_under(a, ns)
                        assert len(queued) == 2 and queued[first_key] == first_token, queued
                        (second_key,) = set(queued) - {first_key}
                        fenced = first.is_owner()
                        assert (await first.txn([], [Op.put(data, f"by {first_token}")])).succeeded
                        await wait_until(
                            lambda: session.keeper.renewals >= 1, 10, "a lease renewal over TLS+auth"
                        )
                        assert not first.lost.is_set()
                    except BaseException:
                        waiting.cancel()
                        await asyncio.gather(waiting, return_exceptions=True)
                        raise
                # Released: the waiter gets it, with a larger fencing token; the old holder's fence fails.
                await asyncio.wait_for(waiting, 10)
                try:
                    assert second.held and second.key == second_key
                    second_token = second.token
                    assert second_token > first_token
                    stale = await a.txn([fenced], [Op.put(data, "stale write")])
                    assert not stale.succeeded, "the old holder's fenced write went through"
                    assert (await second.txn([], [Op.put(data, f"by {second_token}")])).succeeded
                    assert (await a.get(data)).kvs[0].value == f"by {second_token}".encode()
                finally:
                    await second.release()
                await a.delete(data)
                expected = [
                    (EventType.PUT, first_key, ""),
                    (EventType.PUT, second_key, ""),
                    (EventType.PUT, data, f"by {first_token}"),
                    (EventType.DELETE, first_key, ""),
                    (EventType.PUT, data, f"by {second_token}"),
                    (EventType.DELETE, second_key, ""),
                    (EventType.DELETE, data, ""),
                ]

                def seen() -> list[tuple[EventType, str, str]]:
                    return [(e.type, e.kv.key.decode(), e.kv.value.decode()) for e in events]

                await wait_until(lambda: len(events) >= len(expected), 10, "the watch to see every event")
                assert seen() == expected
            finally:
                collector.cancel()
                await asyncio.gather(collector, return_exceptions=True)
        await assert_clean(a, ns, base)
    assert a.resources().total() == 0 and b.resources().total() == 0
