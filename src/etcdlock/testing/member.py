"""One etcd process on loopback: start, stop, kill, pause, restart, probe, and read its log.

etcd's output goes to a per-member log file (inside the cluster's temporary directory), never to our
stdout/stderr; errors quote the tail of that log.  The process is always signalled by its PID and
reaped, and is killed at exit if still running (:mod:`etcdlock.testing.spawn`).  Every wait polls a
condition against a deadline; nothing sleeps "long enough".
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
from collections.abc import Callable, Sequence
from pathlib import Path

from etcdlock.testing._probes import HTTP_TIMEOUT, POLL_INTERVAL, http_get, http_post_json, request_timeout
from etcdlock.testing.errors import EtcdProcessError, EtcdStartError, EtcdWaitTimeout
from etcdlock.testing.ports import LOOPBACK
from etcdlock.testing.prometheus import parse_prometheus_text
from etcdlock.testing.spawn import forget_at_exit, kill_at_exit, spawn_child

__all__ = ["EtcdMember", "ServerTLS"]

_LOG_TAIL_LINES = 25


@dataclasses.dataclass(frozen=True)
class ServerTLS:
    """Serve clients over TLS with these PEM files; client_cert_auth also demands client certificates.

    Health and metrics then move to a separate plain-http metrics port, so probes need no certificates.
    """

    cert_file: str
    key_file: str
    ca_file: str
    client_cert_auth: bool = True


def _child_env() -> dict[str, str]:
    # etcd reads ETCD_* variables as flags; a developer's ETCD_* settings must not leak into our
    # throwaway servers.  ETCD_UNSUPPORTED_ARCH is kept: etcd refuses to start on some
    # architectures (e.g. arm64 for 3.4) without it.
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_") or k == "ETCD_UNSUPPORTED_ARCH"}


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
            kill_at_exit(self)

    def _poll_ready(self, timeout: float = HTTP_TIMEOUT) -> tuple[bool, str]:
        """One readiness probe: (healthy?, description of the last failure)."""
        try:
            body = http_get(self.probe_url + "/health", timeout=timeout)
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
                http_get(self.peer_url + "/members", timeout=HTTP_TIMEOUT)
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
            ok, last = self._poll_ready(request_timeout(deadline))
            if ok:
                return
            if time.monotonic() >= deadline:
                paused = " (the member is paused)" if self._paused else ""
                raise EtcdWaitTimeout(
                    f"etcd member {self._name}{paused} not healthy at {self.client_url}/health after "
                    f"{timeout:.1f}s; last result: {last}. {self._log_tail_text()}"
                )
            time.sleep(POLL_INTERVAL)

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
            forget_at_exit(self)

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
            body = http_get(url, timeout=timeout)
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
        status = http_post_json(self.client_url + "/v3/maintenance/status", {}, timeout)
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
