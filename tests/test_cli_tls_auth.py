"""The command line against a real TLS etcd and a real etcd with auth: etcdctl's flags and variables, the
password from the environment or the terminal, and clear errors when something is missing."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdlock import SyncClient, TLSConfig
from etcdlock._cli.common import EXIT_ERROR
from etcdlock.testing import EtcdCluster, ServerTLS, find_etcdctl_binary
from etcdlock.testing.certs import CertificateSet, make_ca, make_certificates
from tests.test_cli import CLI, cli_env, run_cli

# `lock NAME -- sh -c ...` prints this and the key: proof that it connected, held the lock and ran CMD.
_SAY_HELD = ["--", "sh", "-c", 'echo "held $ETCD_LOCK_KEY"']


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_etcd(certs: CertificateSet) -> Iterator[EtcdCluster]:
    """Serves TLS only, and asks for a client certificate."""
    tls = ServerTLS(certs.server_cert_file, certs.server_key_file, certs.ca_file, client_cert_auth=True)
    with EtcdCluster(1, tls=tls) as cluster:
        yield cluster


def tls_flags(certs: CertificateSet) -> list[str]:
    return ["--cacert", certs.ca_file, "--cert", certs.client_cert_file, "--key", certs.client_key_file]


def assert_held_and_released(r: subprocess.CompletedProcess[str], name: str, client: SyncClient) -> None:
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"held {name}/"), r.stdout
    assert client.get(name, prefix=True).count == 0


@pytest.fixture
def tls_client(tls_etcd: EtcdCluster, certs: CertificateSet) -> Iterator[SyncClient]:
    tls = TLSConfig(ca_file=certs.ca_file, cert_file=certs.client_cert_file, key_file=certs.client_key_file)
    with SyncClient(tls_etcd.endpoints, tls=tls) as c:
        yield c


# ---- TLS ----


def test_tls_flags_connect(
    tls_etcd: EtcdCluster, certs: CertificateSet, tls_client: SyncClient, ns: str
) -> None:
    r = run_cli("lock", ns + "job", *tls_flags(certs), *_SAY_HELD, endpoints=tls_etcd.endpoints)
    assert_held_and_released(r, ns + "job", tls_client)


def test_tls_from_etcdctls_variables(
    tls_etcd: EtcdCluster, certs: CertificateSet, tls_client: SyncClient, ns: str
) -> None:
    env = cli_env(
        tls_etcd.client_urls,  # https://: as etcdctl users write them
        ETCDCTL_CACERT=certs.ca_file,
        ETCDCTL_CERT=certs.client_cert_file,
        ETCDCTL_KEY=certs.client_key_file,
    )
    r = run_cli("lock", ns + "job", *_SAY_HELD, endpoints=None, env=env)
    assert_held_and_released(r, ns + "job", tls_client)


def test_tls_flags_win_over_variables(
    tls_etcd: EtcdCluster, certs: CertificateSet, tls_client: SyncClient, ns: str, tmp_path: Path
) -> None:
    other_ca, _ = make_ca(tmp_path, "other")
    missing = {"ETCDCTL_CERT": "/nonexistent/cert.pem", "ETCDCTL_KEY": "/nonexistent/key.pem"}
    env = cli_env(["127.0.0.1:1"], ETCDCTL_CACERT=other_ca, **missing)
    endpoints = ["--endpoints", ",".join(tls_etcd.endpoints)]
    r = run_cli("lock", ns + "job", *endpoints, *tls_flags(certs), *_SAY_HELD, endpoints=None, env=env)
    assert_held_and_released(r, ns + "job", tls_client)
    # The same variables alone are used, and fail: the flags above really did override them.
    r = run_cli("lock", ns + "job", *endpoints, "--", "true", endpoints=None, env=env)
    assert r.returncode == EXIT_ERROR
    assert "cannot read TLS" in r.stderr and "'/nonexistent/" in r.stderr, r.stderr


# A log line of gRPC's C core, e.g. "E1201 17:26:07.417299    7183 ssl_transport_security_utils.cc:115] ...".
GRPC_LOG_LINE = re.compile(r"^[DIWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w./-]+:\d+\]", re.MULTILINE)


def test_without_cacert_the_error_says_the_certificate_was_not_verified(
    tls_etcd: EtcdCluster, certs: CertificateSet, tls_client: SyncClient, ns: str
) -> None:
    client_cert = ["--cert", certs.client_cert_file, "--key", certs.client_key_file]
    t0 = time.monotonic()
    r = run_cli("lock", ns + "job", *client_cert, "--", "true", endpoints=tls_etcd.endpoints)
    assert r.returncode == EXIT_ERROR
    assert time.monotonic() - t0 < 20
    for part in ("could not be verified (wrong CA?)", "no --cacert given", tls_etcd.endpoints[0]):
        assert part in r.stderr, r.stderr
    assert not GRPC_LOG_LINE.search(r.stderr), f"gRPC's own log lines on stderr:\n{r.stderr}"
    assert tls_client.get(ns, prefix=True).count == 0


def test_without_a_client_certificate_the_error_says_so(
    tls_etcd: EtcdCluster, certs: CertificateSet, tls_client: SyncClient, ns: str
) -> None:
    r = run_cli("lock", ns + "job", "--cacert", certs.ca_file, "--", "true", endpoints=tls_etcd.endpoints)
    assert r.returncode == EXIT_ERROR
    assert "no --cert/--key given: give them if etcd asks for a client certificate" in r.stderr, r.stderr
    assert not GRPC_LOG_LINE.search(r.stderr), f"gRPC's own log lines on stderr:\n{r.stderr}"
    assert tls_client.get(ns, prefix=True).count == 0


def test_grpc_logging_shows_when_asked_for(tls_etcd: EtcdCluster, certs: CertificateSet) -> None:
    """GRPC_VERBOSITY set by the user wins: its log lines are there to debug TLS."""
    env = {**cli_env(tls_etcd.endpoints), "GRPC_VERBOSITY": "INFO"}
    r = run_cli(
        "lock", "job", "--cacert", certs.ca_file, "--timeout", "2", "--", "true", endpoints=None, env=env
    )
    assert r.returncode == EXIT_ERROR
    assert GRPC_LOG_LINE.search(r.stderr), r.stderr


def test_plain_text_against_tls_says_to_give_tls_options(
    tls_etcd: EtcdCluster, tls_client: SyncClient, ns: str
) -> None:
    r = run_cli("lock", ns + "job", "--", "true", endpoints=tls_etcd.endpoints)
    assert r.returncode == EXIT_ERROR
    assert "connected in plain text: if etcd serves TLS, give --cacert" in r.stderr, r.stderr
    assert tls_client.get(ns, prefix=True).count == 0


def test_demo_over_tls(tls_etcd: EtcdCluster, certs: CertificateSet) -> None:
    r = run_cli("demo", "--endpoints", ",".join(tls_etcd.client_urls), *tls_flags(certs), endpoints=None)
    assert r.returncode == 0, r.stderr
    assert "after close" in r.stdout


def test_demo_refuses_tls_options_for_its_throwaway_etcd(certs: CertificateSet) -> None:
    r = run_cli("demo", *tls_flags(certs), endpoints=None)
    assert r.returncode == EXIT_ERROR
    assert "--cacert, --cert, --key: only for a cluster given with --endpoints" in r.stderr
    assert "started a throwaway etcd" not in r.stdout


# ---- auth ----


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster(1, extra_args=["--auth-token=simple"]) as cluster:
        etcdctl = [find_etcdctl_binary(), f"--endpoints={cluster.endpoints[0]}"]
        env = {**cli_env(), "ETCDCTL_API": "3"}
        for args in (["user", "add", "root:rootpw"], ["auth", "enable"]):
            subprocess.run([*etcdctl, *args], env=env, capture_output=True, timeout=20, check=True)
        yield cluster


@pytest.fixture
def root_client(auth_etcd: EtcdCluster) -> Iterator[SyncClient]:
    with SyncClient(auth_etcd.endpoints, username="root", password="rootpw") as c:
        yield c


@pytest.mark.parametrize(
    "variables",
    [
        pytest.param({"ETCDCTL_USER": "root:rootpw"}, id="user:password"),
        pytest.param({"ETCDCTL_USER": "root", "ETCDCTL_PASSWORD": "rootpw"}, id="user+password"),
    ],
)
def test_credentials_from_etcdctls_variables(
    auth_etcd: EtcdCluster, root_client: SyncClient, ns: str, variables: dict[str, str]
) -> None:
    env = cli_env(auth_etcd.endpoints, **variables)
    r = run_cli("lock", ns + "job", *_SAY_HELD, endpoints=None, env=env)
    assert_held_and_released(r, ns + "job", root_client)


def test_user_flag_wins_over_the_variable(auth_etcd: EtcdCluster, root_client: SyncClient, ns: str) -> None:
    env = cli_env(auth_etcd.endpoints, ETCDCTL_USER="root:wrong")
    r = run_cli("lock", ns + "job", "--user", "root:rootpw", *_SAY_HELD, endpoints=None, env=env)
    assert_held_and_released(r, ns + "job", root_client)
    r = run_cli("lock", ns + "job", "--", "true", endpoints=None, env=env)
    assert r.returncode == EXIT_ERROR and "authentication failed" in r.stderr


def test_no_user_on_an_auth_server_says_to_give_one(
    auth_etcd: EtcdCluster, root_client: SyncClient, ns: str
) -> None:
    r = run_cli("lock", ns + "job", "--", "true", endpoints=auth_etcd.endpoints)
    assert r.returncode == EXIT_ERROR
    assert "give --user USER[:PASSWORD], or set ETCDCTL_USER" in r.stderr, r.stderr
    assert "username=" not in r.stderr, f"the API's argument names on the command line: {r.stderr}"
    assert root_client.get(ns, prefix=True).count == 0


def test_missing_password_without_a_terminal_is_a_clear_error(auth_etcd: EtcdCluster) -> None:
    r = run_cli("lock", "job", "--user", "root", "--", "true", endpoints=auth_etcd.endpoints)
    assert r.returncode == EXIT_ERROR
    assert "no password for etcd user 'root', and no terminal to ask on" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def _read_until(fd: int, wanted: bytes, timeout: float = 20) -> bytes:
    """Read from fd until `wanted` has appeared (or fail at the deadline)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {wanted!r}; got {seen!r}"
        if select.select([fd], [], [], left)[0]:
            seen += os.read(fd, 1024)
    return seen


def _read_rest(fd: int) -> bytes:
    """What is left to read from a pty master whose other side is closed (Linux: EIO at the end)."""
    rest = b""
    while select.select([fd], [], [], 0)[0]:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        rest += chunk
    return rest


def test_missing_password_is_asked_on_the_terminal(
    auth_etcd: EtcdCluster, root_client: SyncClient, ns: str
) -> None:
    # stdin and stderr on a pseudo-terminal, in a new session so that it is the only terminal there is.
    master, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*CLI, "lock", ns + "job", "--user", "root", *_SAY_HELD],
            env=cli_env(auth_etcd.endpoints),
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            start_new_session=True,
        )
    finally:
        os.close(terminal)
    try:
        shown = _read_until(master, b"Password for etcd user root: ")
        os.write(master, b"rootpw\n")
        out, _ = proc.communicate(timeout=30)
        shown += _read_rest(master)
        assert proc.returncode == 0, shown.decode(errors="replace")
        assert out.startswith(f"held {ns}job/"), out
        assert b"rootpw" not in shown  # not echoed
        assert root_client.get(ns, prefix=True).count == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
        os.close(master)
