"""The fault harness: a 3-member etcd cluster on loopback with a fault-injecting proxy in front of each
member, lock worker processes, and the faults to apply to them.

Clients (the workers) reach the members only through the proxies, so a proxy can cut one client path while
etcd's own peer traffic flows on; a cluster made with ClusterSpec(route_peers=True) carries that peer
traffic through a PeerRouter, so links between members can be cut too. The checker talks to the members
directly: what it observes is not subject to the faults it injects.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from etcdlock._chaos.worker import WorkerConfig
from etcdlock.testing import EtcdCluster, EtcdMember, FaultProxy
from etcdlock.testing.spawn import spawn_child


class WorkerProcess:
    """One lock worker process, owned by the harness; stopped by PID."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.paused = False
        self.killed = False
        with open(cfg.log_path + ".stderr", "wb") as err:
            self.proc = spawn_child(
                [sys.executable, "-m", "etcdlock._chaos.worker", cfg.to_json()], stdout=err, stderr=err
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.killed = True

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (a clean shutdown: the worker releases and closes), SIGKILL past the deadline."""
        if self.proc.poll() is None:
            if self.paused:
                self.resume()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = Path(self.cfg.log_path + ".stderr").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class ClusterSpec:
    """How a scenario's cluster differs from three alike members talking to each other directly."""

    route_peers: bool = False  # member-to-member traffic through a PeerRouter: links can be cut
    member_args: Mapping[int, tuple[str, ...]] = field(default_factory=dict)  # etcd flags, by member


class FaultCluster:
    """Three etcd members; each worker reaches them through proxies of its own (one per member), so a
    fault can cut one client off, or every client off one member, while etcd's peer traffic flows on."""

    def __init__(self, spec: ClusterSpec | None = None, size: int = 3) -> None:
        spec = spec or ClusterSpec()
        self.spec = spec
        self.cluster = EtcdCluster(size, member_args=spec.member_args, route_peers=spec.route_peers)
        self.paths: dict[str, list[FaultProxy]] = {}  # worker -> its proxy in front of each member
        self.workers: list[WorkerProcess] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="etcdlock-chaos-")
        self.dir = Path(self._tmp.name)

    def start(self) -> FaultCluster:
        try:
            self.cluster.start()
        except BaseException:
            self.close()
            raise
        return self

    # ---- addresses ----

    @property
    def direct_endpoints(self) -> list[str]:
        """The members' own endpoints, last member first: faults aim at member 0 (where clients start),
        so the checker's view (its deletion watch, above all) starts on a member they spare."""
        return self.cluster.endpoints[::-1]

    def client_path(self, worker: str, first: int = 0) -> list[str]:
        """Endpoints for WORKER: new proxies of its own, one per member, starting with member FIRST (a
        client starts on its first endpoint); `paths[worker]` keeps them in member order."""
        proxies = self.paths.setdefault(worker, [])
        for member in self.cluster.members[len(proxies) :]:
            proxies.append(FaultProxy(member.endpoint).start())
        endpoints = [p.endpoint for p in proxies]
        return endpoints[first:] + endpoints[:first]

    @property
    def proxies(self) -> list[FaultProxy]:
        return [p for path in self.paths.values() for p in path]

    @property
    def members(self) -> list[EtcdMember]:
        return self.cluster.members

    def member_in_use(self) -> EtcdMember:
        return self.cluster.members[0]

    def proxies_to(self, member: EtcdMember) -> list[FaultProxy]:
        """Every client's proxy in front of MEMBER."""
        i = self.cluster.members.index(member)
        return [path[i] for path in self.paths.values()]

    # ---- workers ----

    def start_worker(self, cfg: WorkerConfig) -> WorkerProcess:
        w = WorkerProcess(cfg)
        self.workers.append(w)
        return w

    def stop_workers(self) -> dict[str, int]:
        return {w.cfg.worker: w.stop() for w in self.workers}

    # ---- etcd faults ----

    def restart_whole_cluster(self) -> None:
        for m in self.cluster.members:
            m.stop()
        for m in self.cluster.members:
            m.start()
        self.cluster.wait_healthy(timeout=30)

    def heal(self) -> None:
        """Every proxy passes traffic, every link between members is up, every member runs and is healthy."""
        for p in self.proxies:
            p.pass_through()
        if self.spec.route_peers:
            self.cluster.peer_router.heal()
        for m in self.cluster.members:
            if m.is_paused:
                m.resume()
            if not m.is_running:
                m.start()
        self.cluster.wait_healthy(timeout=30)

    def close(self) -> None:
        """Stop workers, proxies and etcd, by PID. Idempotent."""
        for w in self.workers:
            w.stop(timeout=10)
        self.workers.clear()
        for p in self.proxies:
            p.close()
        self.paths.clear()
        self.cluster.stop()
        self._tmp.cleanup()

    def __enter__(self) -> FaultCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for(cond: object, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll cond() until true or the deadline passes (AssertionError naming `what`)."""
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
