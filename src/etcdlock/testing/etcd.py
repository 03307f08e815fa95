"""Start and stop real etcd processes on loopback, for tests.

This module is deliberately independent of the rest of :mod:`etcdlock` (stdlib only, plus the
stdlib-only private :mod:`etcdlock._procutil` it shares with the CLI), so it can be used to test
the client itself as well as by our users' own test suites.

Typical use::

    with EtcdCluster(3) as cluster:
        leader = cluster.leader()
        leader.kill()
        cluster.leader()          # waits for a new leader among the two survivors
        leader.restart()          # same ports, same data dir; rejoins the cluster
        cluster.wait_healthy()

Guarantees:

* etcd's output goes to a per-member log file inside a temporary directory owned by the cluster,
  never to our stdout/stderr.  Errors quote the tail of that log.
* Every child gets ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (Linux), so it dies if the process that
  spawned it dies, even on SIGKILL.  All children are forked from one long-lived internal thread
  because the kernel delivers the "parent death" signal when the *thread* that forked the child
  exits, not when the process does.
* Processes are always signalled by PID and reaped; an ``atexit`` hook kills anything still
  running when the interpreter exits normally.
* Every wait polls a condition against a deadline; nothing sleeps "long enough".
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from etcdlock._procutil import die_with_parent_preexec
from etcdlock.testing.peers import PeerRouter

__all__ = [
    "INSTALL_HINT",
    "EtcdCluster",
    "EtcdMember",
    "EtcdNotInstalledError",
    "EtcdProcessError",
    "EtcdStartError",
    "EtcdWaitTimeout",
    "ServerTLS",
    "find_etcd_binary",
    "find_etcdctl_binary",
    "free_port",
    "parse_prometheus_text",
]

INSTALL_HINT = "apt-get install etcd-server etcd-client"
"""How to install etcd (server and etcdctl) on Debian/Ubuntu."""

LOOPBACK = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class ServerTLS:
    """Serve clients over TLS with these PEM files; client_cert_auth also demands client certificates.

    Health and metrics then move to a separate plain-http metrics port, so probes need no certificates.
    """

    cert_file: str
    key_file: str
    ca_file: str
    client_cert_auth: bool = True


_ENV_ETCD = "ETCDLOCK_ETCD_BINARY"
_ENV_ETCDCTL = "ETCDLOCK_ETCDCTL_BINARY"

_POLL_INTERVAL = 0.02  # seconds between polls of a condition
_HTTP_TIMEOUT = 1.0  # per-request cap for /health and /metrics polls
_PORT_ATTEMPTS = 4  # first-start attempts with fresh ports when a port was stolen meanwhile
_LOG_TAIL_LINES = 25
_MULTI_HEARTBEAT_MS, _MULTI_ELECTION_MS = 50, 500
_SINGLE_HEARTBEAT_MS, _SINGLE_ELECTION_MS = 10, 100


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class EtcdNotInstalledError(RuntimeError):
    """No etcd binary could be found.  The message says how to install it."""


class EtcdProcessError(RuntimeError):
    """Base class for failures of the test launcher (not of etcd's API)."""


class EtcdStartError(EtcdProcessError):
    """An etcd process exited while we were waiting for it to become ready."""


class EtcdWaitTimeout(EtcdProcessError):
    """A condition on etcd (health, leader, ...) was not met before its deadline."""


# --------------------------------------------------------------------------------------------
# Binaries
# --------------------------------------------------------------------------------------------


def _is_executable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _find_binary(name: str, env_var: str) -> str:
    override = os.environ.get(env_var)
    if override:
        if _is_executable_file(override):
            return override
        raise EtcdNotInstalledError(
            f"{env_var}={override!r} does not point at an executable file. "
            f"Fix or unset {env_var}, or install etcd with: {INSTALL_HINT}"
        )
    found = shutil.which(name)
    if found:
        return found
    fallback = f"/usr/bin/{name}"
    if _is_executable_file(fallback):
        return fallback
    raise EtcdNotInstalledError(
        f"the {name!r} binary was not found ({env_var} is unset, {name!r} is not on PATH and "
        f"{fallback} does not exist). Install etcd with: {INSTALL_HINT} "
        f"(or point {env_var} at an etcd {name} binary)"
    )


def find_etcd_binary() -> str:
    """Path of the etcd server binary.

    ``$ETCDLOCK_ETCD_BINARY`` if set (it must then exist), else ``etcd`` on ``PATH``, else
    ``/usr/bin/etcd``.  Raises :class:`EtcdNotInstalledError` with the install command otherwise.
    """
    return _find_binary("etcd", _ENV_ETCD)


def find_etcdctl_binary() -> str:
    """Path of etcdctl, looked up like :func:`find_etcd_binary` (``$ETCDLOCK_ETCDCTL_BINARY``)."""
    return _find_binary("etcdctl", _ENV_ETCDCTL)


# --------------------------------------------------------------------------------------------
# Ports, HTTP, metrics parsing
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _free_ports(n: int, exclude: Iterable[int] = ()) -> list[int]:
    taken = set(exclude)
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in taken:
            taken.add(p)
            ports.append(p)
    return ports


def _request_timeout(deadline: float) -> float:
    """Per-request timeout for a poll: never much past ``deadline``, never more than 1 s."""
    return min(_HTTP_TIMEOUT, max(0.05, deadline - time.monotonic()))


# Never go through an HTTP proxy from the environment for loopback requests.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_get(url: str, timeout: float) -> bytes:
    with _HTTP.open(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


def _http_post_json(url: str, body: dict[str, object], timeout: float) -> dict[str, object]:
    """POST a JSON body to etcd's gRPC gateway (``/v3/...``) and return the JSON answer."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with _HTTP.open(request, timeout=timeout) as resp:
            answer = json.loads(resp.read())
    except (OSError, ValueError) as exc:  # includes URLError/HTTPError, timeouts and bad JSON
        raise EtcdProcessError(f"POST {url} failed: {exc}") from exc
    if not isinstance(answer, dict):
        raise EtcdProcessError(f"POST {url} returned {answer!r}")
    return answer


_METRIC_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _label_block_end(line: str, start: int) -> int:
    """Index of the ``}`` closing the label block opened at ``line[start] == "{"``, or -1."""
    in_quotes = False
    i = start + 1
    while i < len(line):
        c = line[i]
        if in_quotes:
            if c == "\\":
                i += 1  # skip the escaped character
            elif c == '"':
                in_quotes = False
        elif c == '"':
            in_quotes = True
        elif c == "}":
            return i
        i += 1
    return -1


def parse_prometheus_text(text: str) -> dict[str, float]:
    """Parse the Prometheus text exposition format into ``{sample: value}``.

    Keys are the sample names exactly as printed, labels included, e.g.
    ``'etcd_server_is_leader'`` or
    ``'grpc_server_started_total{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"}'``.
    Comment (``# HELP``/``# TYPE``) and blank lines are skipped, as are malformed lines;
    timestamps are ignored.  ``NaN``/``+Inf``/``-Inf`` become the corresponding floats.
    """
    samples: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _METRIC_NAME.match(line)
        if m is None:
            continue
        end = m.end()
        if end < len(line) and line[end] == "{":
            close = _label_block_end(line, end)
            if close == -1:
                continue
            end = close + 1
        key, rest = line[:end], line[end:].split()
        if not rest:
            continue
        try:
            samples[key] = float(rest[0])
        except ValueError:
            continue
    return samples


# --------------------------------------------------------------------------------------------
# Spawning children with PR_SET_PDEATHSIG
# --------------------------------------------------------------------------------------------


class _Spawner:
    """Forks every etcd child from one long-lived daemon thread.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits.  Spawning from
    whatever thread happens to call ``start()`` (a ThreadPoolExecutor worker, an
    ``asyncio.to_thread`` call, ...) would make etcd die as soon as that thread is retired.
    This thread lives until the process exits.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = -1
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[], subprocess.Popen[bytes]], concurrent.futures.Future[subprocess.Popen[bytes]]]
        ] = queue.SimpleQueue()

    def _run(self) -> None:
        while True:
            fn, fut = self._jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def spawn(self, fn: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                # (Re)start after fork(), too: threads do not survive it.
                self._jobs = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run, name="etcdlock-etcd-spawner", daemon=True)
                self._thread.start()
                self._pid = os.getpid()
            fut: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
            self._jobs.put((fn, fut))
        return fut.result()


_SPAWNER = _Spawner()


def spawn_child(
    argv: Sequence[str],
    *,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a helper process (a test's worker, say) that is SIGKILLed if we die: forked from the same
    long-lived thread as etcd, with PR_SET_PDEATHSIG. The caller owns it and stops it by PID."""
    preexec = die_with_parent_preexec()

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            close_fds=True,
            cwd=cwd,
            env=env,
            preexec_fn=preexec,
        )

    return _SPAWNER.spawn(popen)


# Members with a live (unreaped) process; killed by the atexit hook if still there.
_LIVE: set[EtcdMember] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        members = list(_LIVE)
    for member in members:
        with contextlib.suppress(Exception):
            member.kill()


def _child_env() -> dict[str, str]:
    # etcd reads ETCD_* variables as flags; a developer's ETCD_* settings must not leak into our
    # throwaway servers.  ETCD_UNSUPPORTED_ARCH is kept: etcd refuses to start on some
    # architectures (e.g. arm64 for 3.4) without it.
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_") or k == "ETCD_UNSUPPORTED_ARCH"}


# --------------------------------------------------------------------------------------------
# One member
# --------------------------------------------------------------------------------------------


class EtcdMember:
    """One etcd process, normally created and started by :class:`EtcdCluster`.

    The member's files live in ``base_dir`` (``data_dir`` and ``log_path``), which belongs to
    the cluster's temporary directory; they survive :meth:`stop` and :meth:`kill` so the member
    can be restarted with its data.
    """

    def __init__(
        self,
        name: str,
        *,
        base_dir: str | os.PathLike[str],
        client_port: int,
        peer_port: int,
        initial_cluster: str,
        cluster_token: str,
        binary: str,
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        extra_args: Sequence[str] = (),
        tls: ServerTLS | None = None,
        metrics_port: int | None = None,
        advertise_peer_url: str | None = None,
    ) -> None:
        if tls is not None and metrics_port is None:
            raise ValueError("a TLS member needs a metrics_port for plain-http health and metrics probes")
        self._tls = tls
        self._metrics_port = metrics_port
        self._name = name
        self._base_dir = Path(base_dir)
        self._client_port = client_port
        self._peer_port = peer_port
        self._initial_cluster = initial_cluster
        self._cluster_token = cluster_token
        self._binary = binary
        self._heartbeat_ms = heartbeat_ms
        self._election_ms = election_ms
        self._extra_args = list(extra_args)
        self._advertise_peer_url = advertise_peer_url
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._starts = 0
        self._lock = threading.RLock()

    # ---- identity -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def client_port(self) -> int:
        return self._client_port

    @property
    def peer_port(self) -> int:
        return self._peer_port

    @property
    def endpoint(self) -> str:
        """``"127.0.0.1:PORT"``: what a gRPC client dials."""
        return f"{LOOPBACK}:{self._client_port}"

    @property
    def client_url(self) -> str:
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{LOOPBACK}:{self._client_port}"

    @property
    def probe_url(self) -> str:
        """Plain-http base URL for /health and /metrics (the metrics port when serving TLS)."""
        if self._metrics_port is not None:
            return f"http://{LOOPBACK}:{self._metrics_port}"
        return self.client_url

    @property
    def tls(self) -> ServerTLS | None:
        return self._tls

    @property
    def peer_url(self) -> str:
        """Where this member listens for its peers."""
        return f"http://{LOOPBACK}:{self._peer_port}"

    @property
    def advertised_peer_url(self) -> str:
        """Where its peers reach it: its own listener, or a router in front of it (see PeerRouter)."""
        return self._advertise_peer_url or self.peer_url

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def data_dir(self) -> Path:
        return self._base_dir / "data"

    @property
    def log_path(self) -> Path:
        """etcd's combined stdout/stderr (zap JSON lines), appended to across restarts."""
        return self._base_dir / "etcd.log"

    @property
    def extra_args(self) -> list[str]:
        return list(self._extra_args)

    # ---- process state --------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the current process, or None if it is not running (exited processes are reaped)."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return None
            return proc.pid

    @property
    def is_running(self) -> bool:
        """The process exists (it may be paused)."""
        return self.pid is not None

    @property
    def is_paused(self) -> bool:
        return self.is_running and self._paused

    @property
    def returncode(self) -> int | None:
        """Exit status of the last process once it has exited (negative: killed by that signal)."""
        proc = self._proc
        return None if proc is None else proc.poll()

    def __repr__(self) -> str:
        state = "paused" if self.is_paused else "running" if self.is_running else "stopped"
        return f"<EtcdMember {self._name} {self.endpoint} pid={self.pid} {state}>"

    def command(self, *, cluster_state: str = "new") -> list[str]:
        """The etcd command line used to start this member."""
        return [
            self._binary,
            f"--name={self._name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.advertised_peer_url}",
            f"--initial-cluster={self._initial_cluster}",
            f"--initial-cluster-state={cluster_state}",
            f"--initial-cluster-token={self._cluster_token}",
            f"--heartbeat-interval={self._heartbeat_ms}",
            f"--election-timeout={self._election_ms}",
            "--logger=zap",
            "--log-outputs=stderr",
            "--enable-v2=false",
            *self._tls_args(),
            *self._extra_args,  # last, so they can override the above
        ]

    def _tls_args(self) -> list[str]:
        args = [] if self._metrics_port is None else [f"--listen-metrics-urls={self.probe_url}"]
        if self._tls is not None:
            args += [
                f"--cert-file={self._tls.cert_file}",
                f"--key-file={self._tls.key_file}",
                f"--trusted-ca-file={self._tls.ca_file}",
            ]
            if self._tls.client_cert_auth:
                args.append("--client-cert-auth")
        return args

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn etcd (does not wait; see :meth:`wait_ready`).

        The first start bootstraps with ``--initial-cluster-state=new``; later starts use
        ``existing`` (etcd then recovers membership from the WAL in the data dir).
        """
        with self._lock:
            if self.is_running:
                raise EtcdProcessError(f"etcd member {self._name} is already running (pid {self.pid})")
            self._reap()
            state = "existing" if self._starts > 0 or (self.data_dir / "member").exists() else "new"
            argv = self.command(cluster_state=state)
            self._base_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
                log.write(f"### etcdlock.testing {stamp}: start #{self._starts + 1}: {argv}\n".encode())
                log.flush()
                self._proc = spawn_child(
                    argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(self._base_dir), env=_child_env()
                )
            # Our copy of the log fd is closed here; the child keeps its own.
            self._paused = False
            self._starts += 1
            with _LIVE_LOCK:
                _LIVE.add(self)

    def _poll_ready(self, timeout: float = _HTTP_TIMEOUT) -> tuple[bool, str]:
        """One readiness probe: (healthy?, description of the last failure)."""
        try:
            body = _http_get(self.probe_url + "/health", timeout=timeout)
        except urllib.error.HTTPError as exc:  # etcd answers 503 {"health":"false"} when unhealthy
            with exc:
                detail = exc.read(1024).decode(errors="replace").strip()
            return False, f"GET /health returned HTTP {exc.code} {detail}"
        except OSError as exc:  # includes URLError and timeouts
            return False, f"GET /health failed: {exc}"
        try:
            health = json.loads(body).get("health")
        except (ValueError, AttributeError):
            return False, f"GET /health returned {body!r}"
        if health == "true":
            return True, ""
        return False, f"GET /health returned {body.decode(errors='replace').strip()}"

    def _wait_peer_serving(self, deadline: float) -> None:
        """Wait until this member answers HTTP on its peer port (any status counts)."""
        while True:
            if not self.is_running:
                raise self._exited_error("while waiting for it to serve peer traffic")
            try:
                _http_get(self.peer_url + "/members", timeout=_HTTP_TIMEOUT)
                return
            except urllib.error.HTTPError as exc:
                exc.close()
                return  # it answered
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise EtcdWaitTimeout(
                    f"etcd member {self._name} not serving peer traffic at {self.peer_url} before the "
                    f"deadline. {self._log_tail_text()}"
                )
            time.sleep(0.005)

    def _exited_error(self, what: str) -> EtcdStartError:
        return EtcdStartError(
            f"etcd member {self._name} ({self.client_url}) exited with status {self.returncode} "
            f"{what}. {self._log_tail_text()}"
        )

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Poll ``GET /health`` until it reports ``{"health": "true"}``.

        Raises :class:`EtcdStartError` if the process exits and :class:`EtcdWaitTimeout` if
        the deadline passes; both quote the tail of the etcd log.
        """
        deadline = time.monotonic() + timeout
        last = "no attempt made"
        while True:
            if not self.is_running:
                if self._proc is None:
                    raise EtcdProcessError(f"etcd member {self._name} was never started")
                raise self._exited_error("while waiting for it to become healthy")
            ok, last = self._poll_ready(_request_timeout(deadline))
            if ok:
                return
            if time.monotonic() >= deadline:
                paused = " (the member is paused)" if self._paused else ""
                raise EtcdWaitTimeout(
                    f"etcd member {self._name}{paused} not healthy at {self.client_url}/health after "
                    f"{timeout:.1f}s; last result: {last}. {self._log_tail_text()}"
                )
            time.sleep(_POLL_INTERVAL)

    def _signal(self, sig: int) -> bool:
        """Send ``sig`` to our (unreaped) child by PID.  False if it has already exited."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return False
        # Not reaped yet, so the PID cannot have been reused by another process.
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def _reap(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            self._paused = False
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, wait up to ``timeout``, then SIGKILL; always reaps.  Idempotent."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if self._signal(signal.SIGTERM):
                self._signal(signal.SIGCONT)  # a stopped process only acts on SIGTERM once continued
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    proc.wait()
            else:
                proc.wait()
            self._reap()

    def kill(self) -> None:
        """SIGKILL by PID and reap (a crash).  The data dir is kept, so :meth:`restart` works."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            self._signal(signal.SIGKILL)
            proc.wait()
            self._reap()

    def pause(self, timeout: float = 5.0) -> None:
        """SIGSTOP: the process freezes (no heartbeats, requests hang) until :meth:`resume`."""
        with self._lock:
            if not self._signal(signal.SIGSTOP):
                raise self._exited_error("before it could be paused")
            self._paused = True
            self._wait_proc_state(lambda s: s in ("T", "t"), "stopped", timeout)

    def resume(self, timeout: float = 5.0) -> None:
        """SIGCONT after :meth:`pause`."""
        with self._lock:
            if not self._signal(signal.SIGCONT):
                raise self._exited_error("before it could be resumed")
            self._paused = False
            self._wait_proc_state(lambda s: s not in ("T", "t"), "continued", timeout)

    def _wait_proc_state(self, cond: Callable[[str], bool], what: str, timeout: float) -> None:
        """Wait until /proc/PID/stat's state satisfies ``cond`` (skipped where /proc is absent)."""
        proc = self._proc
        if proc is None:
            return
        stat = Path(f"/proc/{proc.pid}/stat")
        deadline = time.monotonic() + timeout
        while True:
            try:
                # "pid (comm) S ..." - comm may contain spaces/parens, so split after the last ')'.
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return
            if cond(state) or state in ("Z", "X"):
                return
            if time.monotonic() >= deadline:
                raise EtcdWaitTimeout(
                    f"etcd member {self._name} (pid {proc.pid}) not {what} after {timeout:.1f}s "
                    f"(process state {state!r})"
                )
            time.sleep(0.005)

    def restart(self, *, wait: bool = True, timeout: float = 15.0) -> None:
        """Start again on the same ports and data dir (stopping first if still running).

        etcd is started with ``--initial-cluster-state=existing`` and recovers its membership
        from its WAL, so a cluster member rejoins its cluster.  With ``wait`` (default), returns
        once this member reports healthy, which for a cluster member requires a quorum.
        """
        with self._lock:
            if self.is_running:
                self.stop()
            self.start()
        if wait:
            self.wait_ready(timeout)

    # ---- observation ----------------------------------------------------------------------

    def metrics(self, timeout: float = 5.0) -> dict[str, float]:
        """All samples of ``GET /metrics``, keyed by name with labels exactly as printed."""
        url = self.probe_url + "/metrics"
        try:
            body = _http_get(url, timeout=timeout)
        except OSError as exc:  # includes URLError/HTTPError and timeouts
            raise EtcdProcessError(f"etcd member {self._name}: GET {url} failed: {exc}") from exc
        return parse_prometheus_text(body.decode("utf-8", errors="replace"))

    def metric(self, name: str, timeout: float = 5.0) -> float:
        """The value of one *unlabeled* sample; KeyError if etcd does not export it."""
        samples = self.metrics(timeout=timeout)
        try:
            return samples[name]
        except KeyError:
            labeled = sorted(k for k in samples if k.startswith(name + "{"))
            hint = (
                f"; it only exists with labels, e.g. {labeled[0]} (use metrics())"
                if labeled
                else "; etcd does not export it (check the name and the --metrics level)"
            )
            raise KeyError(
                f"no unlabeled sample {name!r} at {self.client_url}/metrics of member {self._name}{hint}"
            ) from None

    def member_id(self, timeout: float = 5.0) -> int:
        """This member's ID in the cluster (asked through its gRPC gateway; plain-http members only)."""
        if self._tls is not None:
            raise EtcdProcessError("member_id() asks over plain http; this member serves TLS")
        status = _http_post_json(self.client_url + "/v3/maintenance/status", {}, timeout)
        header = status.get("header")
        if not isinstance(header, dict) or "member_id" not in header:
            raise EtcdProcessError(f"etcd member {self._name}: status without a member_id: {status!r}")
        return int(header["member_id"])

    def is_leader(self, timeout: float = 5.0) -> bool:
        """Whether this member currently believes it is the raft leader (etcd_server_is_leader)."""
        return self.metric("etcd_server_is_leader", timeout=timeout) == 1.0

    # ---- logs -----------------------------------------------------------------------------

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> list[str]:
        """The last ``lines`` lines of the etcd log ([] if there is none)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 64 * 1024))
                data = f.read()
        except OSError:
            return []
        return data.decode("utf-8", errors="replace").splitlines()[-lines:]

    def _log_tail_text(self) -> str:
        tail = self.log_tail()
        if not tail:
            return f"(etcd log {self.log_path} is empty or missing)"
        return f"Last {len(tail)} lines of {self.log_path}:\n" + "\n".join(tail)


# --------------------------------------------------------------------------------------------
# A cluster
# --------------------------------------------------------------------------------------------


def _port_was_taken(member: EtcdMember) -> bool:
    return any("address already in use" in line for line in member.log_tail(200))


def _probe_leader(member: EtcdMember) -> tuple[bool, str]:
    try:
        is_leader = member.is_leader(timeout=_HTTP_TIMEOUT)
    except (EtcdProcessError, KeyError) as exc:
        return False, f"error: {exc}"
    return is_leader, "leader" if is_leader else "follower"


def _probe_all(
    members: Sequence[EtcdMember], probe: Callable[[EtcdMember], tuple[bool, str]]
) -> list[tuple[bool, str]]:
    """Run ``probe`` on every member concurrently; results in ``members`` order."""
    if len(members) <= 1:
        return [probe(m) for m in members]
    with concurrent.futures.ThreadPoolExecutor(len(members), thread_name_prefix="etcdlock-probe") as pool:
        return list(pool.map(probe, members))


class EtcdCluster:
    """``size`` etcd members on loopback, in a temporary directory removed by :meth:`stop`.

    Use as a context manager (``with EtcdCluster(3) as c:``) or call :meth:`start`/:meth:`stop`.
    ``heartbeat_ms``/``election_ms`` (etcd requires ``election_ms >= 5 * heartbeat_ms``) default
    to fast test values: 50/500 ms for a multi-member cluster (a failover takes about 0.5-1 s),
    10/100 ms for a single member.  A single member has nobody to lose an election to, but it
    still waits out one randomized election timeout (``election_ms`` to ``2 * election_ms``)
    before electing itself, on every start and restart, so a short timeout makes it ready in
    ~0.1 s instead of ~0.5-1 s.  ``extra_args`` are appended to every member's command
    line (TLS, ``--auto-compaction-*``, ``--experimental-*``, ``--auth-token`` ...), then
    ``member_args[i]`` to member i's only (etcd takes the last of a repeated flag, so e.g.
    ``{0: ["--election-timeout=3000"]}`` gives member 0 a timeout of its own).

    ``route_peers=True`` carries all member-to-member traffic through a :class:`PeerRouter`
    (:attr:`peer_router`), which can cut the links between members; clients still reach every
    member directly.

    Staggered bootstrap: members are all spawned before any is waited on for health (a member
    only becomes healthy once a quorum is up), but each is spawned once the previous one answers
    on its peer port.  A new etcd 3.4 member first asks its peers whether the cluster is already
    bootstrapped, with a fixed 1 s timeout; a peer whose port is open but not yet served (it is
    doing the same check) makes that ask hang for the full second, so fully simultaneous starts
    take 1-2 s instead of ~0.3 s, at random.
    """

    def __init__(
        self,
        size: int = 1,
        *,
        extra_args: Sequence[str] = (),
        heartbeat_ms: int | None = None,
        election_ms: int | None = None,
        start_timeout: float = 20.0,
        binary: str | None = None,
        tls: ServerTLS | None = None,
        member_args: Mapping[int, Sequence[str]] | None = None,
        route_peers: bool = False,
    ) -> None:
        self._tls = tls
        if size < 1:
            raise ValueError(f"an etcd cluster needs at least one member, got size={size}")
        if heartbeat_ms is None:
            heartbeat_ms = _SINGLE_HEARTBEAT_MS if size == 1 else _MULTI_HEARTBEAT_MS
        if election_ms is None:
            election_ms = max(5 * heartbeat_ms, _SINGLE_ELECTION_MS if size == 1 else _MULTI_ELECTION_MS)
        if heartbeat_ms < 1 or election_ms < 5 * heartbeat_ms:
            raise ValueError(
                f"etcd requires election_ms >= 5 * heartbeat_ms (got heartbeat_ms={heartbeat_ms}, "
                f"election_ms={election_ms})"
            )
        self._size = size
        self._extra_args = list(extra_args)
        self._member_args = {i: list(args) for i, args in (member_args or {}).items()}
        if not set(self._member_args) <= set(range(size)):
            raise ValueError(f"member_args names members {sorted(self._member_args)} of a cluster of {size}")
        self._route_peers = route_peers
        self._router: PeerRouter | None = None
        self._heartbeat_ms = heartbeat_ms
        self._election_ms = election_ms
        self._start_timeout = start_timeout
        self._binary = binary
        self._tmp_dir: Path | None = None
        self._token = f"etcdlock-test-{uuid.uuid4().hex[:12]}"
        self.members: list[EtcdMember] = []

    # ---- properties -----------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    @property
    def endpoints(self) -> list[str]:
        """``"127.0.0.1:PORT"`` of every member (what gRPC clients dial)."""
        return [m.endpoint for m in self.members]

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def tmp_dir(self) -> Path | None:
        """The temporary directory holding every member's data and log (None when stopped)."""
        return self._tmp_dir

    @property
    def cluster_token(self) -> str:
        return self._token

    @property
    def peer_router(self) -> PeerRouter:
        """The router carrying peer traffic (``route_peers=True`` only), while the cluster is started."""
        if self._router is None:
            raise EtcdProcessError(
                "this cluster routes no peer traffic (make it with route_peers=True and start it)"
            )
        return self._router

    def __repr__(self) -> str:
        return f"<EtcdCluster size={self._size} members={self.members!r}>"

    # ---- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _make_members(self, binary: str, tmp: Path) -> list[EtcdMember]:
        per = 3 if self._tls is not None else 2
        ports = _free_ports(per * self._size)
        names = [f"m{i}" for i in range(self._size)]
        advertised = self._peer_urls(names, [ports[per * i + 1] for i in range(self._size)])
        initial_cluster = ",".join(f"{name}={advertised[name]}" for name in names)
        return [
            EtcdMember(
                name,
                base_dir=tmp / name,
                client_port=ports[per * i],
                peer_port=ports[per * i + 1],
                tls=self._tls,
                metrics_port=ports[per * i + 2] if self._tls is not None else None,
                initial_cluster=initial_cluster,
                cluster_token=self._token,
                binary=binary,
                heartbeat_ms=self._heartbeat_ms,
                election_ms=self._election_ms,
                extra_args=[*self._extra_args, *self._member_args.get(i, [])],
                advertise_peer_url=advertised[name],
            )
            for i, name in enumerate(names)
        ]

    def _peer_urls(self, names: list[str], peer_ports: list[int]) -> dict[str, str]:
        """Where each member is reached by its peers: its own port, or its front on a new router."""
        if not self._route_peers:
            return {name: f"http://{LOOPBACK}:{port}" for name, port in zip(names, peer_ports, strict=True)}
        self._close_router()  # a retry on fresh ports gets fresh fronts
        self._router = PeerRouter(lambda: {m.name: m.pid for m in self.members})
        return {
            name: self._router.add(name, f"{LOOPBACK}:{port}")
            for name, port in zip(names, peer_ports, strict=True)
        }

    def _close_router(self) -> None:
        router, self._router = self._router, None
        if router is not None:
            router.close()

    def start(self) -> Self:
        """Spawn all members at once (they need each other to elect a leader), wait until healthy.

        If a member fails because one of its ports was grabbed by someone else between our
        choosing it and etcd binding it, the whole cluster is retried on fresh ports.
        """
        if self._tmp_dir is not None:
            raise EtcdProcessError("this EtcdCluster is already started")
        binary = self._binary or find_etcd_binary()
        self._tmp_dir = Path(tempfile.mkdtemp(prefix="etcdlock-etcd-"))
        try:
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                self.members = self._make_members(binary, self._tmp_dir)
                try:
                    deadline = time.monotonic() + self._start_timeout
                    for i, m in enumerate(self.members):
                        m.start()
                        if i < len(self.members) - 1:
                            # See "Staggered bootstrap" in the class docstring.
                            m._wait_peer_serving(deadline)
                    self._wait_ready(self.members, max(0.0, deadline - time.monotonic()))
                    return self
                except EtcdProcessError:
                    for m in self.members:
                        m.kill()
                    if attempt == _PORT_ATTEMPTS or not any(_port_was_taken(m) for m in self.members):
                        raise
                    for m in self.members:
                        shutil.rmtree(m.base_dir, ignore_errors=True)
            raise AssertionError("unreachable")
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, members: Sequence[EtcdMember], timeout: float) -> None:
        """Wait for all ``members`` to be healthy, failing fast if any of them exits.

        Members are probed in parallel: etcd accepts client connections before it serves them,
        so a probe of a member that is still joining hangs until its per-request timeout.
        """
        deadline = time.monotonic() + timeout
        pending = list(members)
        last: dict[str, str] = {}
        while True:
            for m in pending:
                if not m.is_running:
                    raise m._exited_error(
                        "while waiting for the cluster to become healthy"
                        if m._proc is not None
                        else "(it is not running)"
                    )
            request_timeout = _request_timeout(deadline)
            results = _probe_all(pending, functools.partial(EtcdMember._poll_ready, timeout=request_timeout))
            for m, (ok, why) in zip(list(pending), results, strict=True):
                last[m.name] = why
                if ok:
                    pending.remove(m)
            if not pending:
                return
            if time.monotonic() >= deadline:
                details = "\n\n".join(
                    f"member {m.name}{' (paused)' if m.is_paused else ''} at {m.client_url}/health: "
                    f"{last.get(m.name, '')}. {m._log_tail_text()}"
                    for m in pending
                )
                raise EtcdWaitTimeout(
                    f"etcd cluster not healthy after {timeout:.1f}s; "
                    f"{len(pending)} of {len(members)} member(s) not ready:\n{details}"
                )
            time.sleep(_POLL_INTERVAL)

    def wait_healthy(self, timeout: float = 15.0, *, only_running: bool = False) -> None:
        """Wait until every member reports healthy.

        By default every member must be running; a stopped/killed member is an immediate error.
        With ``only_running=True`` members that are not running are ignored (there must still
        be at least one).  A paused member never becomes healthy, so this will time out.
        """
        members = self.members
        if only_running:
            members = [m for m in members if m.is_running]
            if not members:
                raise EtcdProcessError("no etcd member of this cluster is running")
        else:
            dead = [m.name for m in members if not m.is_running]
            if dead:
                raise EtcdProcessError(
                    f"etcd member(s) {', '.join(dead)} not running; restart them or pass only_running=True"
                )
        self._wait_ready(members, timeout)

    def leader(self, timeout: float = 10.0) -> EtcdMember:
        """Wait until exactly one running, unpaused member reports being leader, and return it."""
        deadline = time.monotonic() + timeout
        while True:
            status: dict[str, str] = {}
            leaders: list[EtcdMember] = []
            live: list[EtcdMember] = []
            for m in self.members:
                if not m.is_running:
                    status[m.name] = "not running"
                elif m.is_paused:
                    status[m.name] = "paused"
                else:
                    live.append(m)
            for m, (is_leader, why) in zip(live, _probe_all(live, _probe_leader), strict=True):
                status[m.name] = why
                if is_leader:
                    leaders.append(m)
            if len(leaders) == 1:
                return leaders[0]
            if time.monotonic() >= deadline:
                raise EtcdWaitTimeout(
                    f"no single etcd leader after {timeout:.1f}s: "
                    + ", ".join(f"{name}={s}" for name, s in status.items())
                )
            time.sleep(_POLL_INTERVAL)

    def transfer_leadership(self, to: EtcdMember, timeout: float = 10.0) -> None:
        """Make TO the leader (etcd's MoveLeader, asked of the current leader) and wait until it is."""
        deadline = time.monotonic() + timeout
        leader = self.leader(timeout)
        if leader is not to:
            target = to.member_id(timeout=_request_timeout(deadline))
            _http_post_json(
                leader.client_url + "/v3/maintenance/transfer-leadership",
                {"targetID": str(target)},
                max(0.05, deadline - time.monotonic()),
            )
        while self.leader(max(0.0, deadline - time.monotonic())) is not to:
            if time.monotonic() >= deadline:
                raise EtcdWaitTimeout(f"etcd member {to.name} did not become leader within {timeout:.1f}s")
            time.sleep(_POLL_INTERVAL)

    def followers(self, timeout: float = 10.0) -> list[EtcdMember]:
        """All members except the current :meth:`leader`."""
        leader = self.leader(timeout)
        return [m for m in self.members if m is not leader]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every member by PID (whatever its state) and remove the temp dir.  Idempotent.

        Paused members are resumed and followers are stopped before leaders: on SIGTERM an
        etcd 3.4 leader first tries to hand leadership to its best-connected follower and, if
        that follower is paused, waits 5 s + 2 * election timeout for it.
        """
        errors: list[BaseException] = []
        for m in self.members:
            if m.is_paused:
                with contextlib.suppress(EtcdProcessError):
                    m.resume()
        order = list(self.members)
        running = [m for m in self.members if m.is_running]
        if len(running) > 1:
            with contextlib.suppress(Exception):  # ordering is an optimisation; never block cleanup
                flags = [ok for ok, _ in _probe_all(running, _probe_leader)]
                leaders = {m.name for m, ok in zip(running, flags, strict=True) if ok}
                order.sort(key=lambda m: m.name in leaders)
        for m in order:
            try:
                m.stop(timeout)
            except Exception as exc:
                errors.append(exc)
                with contextlib.suppress(Exception):
                    m.kill()
        try:
            self._close_router()
        except Exception as exc:
            errors.append(exc)
        tmp, self._tmp_dir = self._tmp_dir, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if errors:
            raise EtcdProcessError(f"errors while stopping etcd members: {errors!r}") from errors[0]
