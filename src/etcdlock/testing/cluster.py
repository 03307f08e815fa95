"""A cluster of etcd members on loopback, in a temporary directory: start, stop, find its leader.

Typical use::

    with EtcdCluster(3) as cluster:
        leader = cluster.leader()
        leader.kill()
        cluster.leader()          # waits for a new leader among the two survivors
        leader.restart()          # same ports, same data dir; rejoins the cluster
        cluster.wait_healthy()
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from etcdlock.testing._probes import HTTP_TIMEOUT, POLL_INTERVAL, http_post_json, request_timeout
from etcdlock.testing.binaries import find_etcd_binary
from etcdlock.testing.errors import EtcdProcessError, EtcdWaitTimeout
from etcdlock.testing.member import EtcdMember, ServerTLS
from etcdlock.testing.peers import PeerRouter
from etcdlock.testing.ports import LOOPBACK, free_ports

__all__ = ["EtcdCluster"]

_PORT_ATTEMPTS = 4  # first-start attempts with fresh ports when a port was stolen meanwhile
_MULTI_HEARTBEAT_MS, _MULTI_ELECTION_MS = 50, 500
_SINGLE_HEARTBEAT_MS, _SINGLE_ELECTION_MS = 10, 100


def _port_was_taken(member: EtcdMember) -> bool:
    return any("address already in use" in line for line in member.log_tail(200))


def _probe_leader(member: EtcdMember) -> tuple[bool, str]:
    try:
        is_leader = member.is_leader(timeout=HTTP_TIMEOUT)
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
        ports = free_ports(per * self._size)
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
            per_request = request_timeout(deadline)
            results = _probe_all(pending, functools.partial(EtcdMember._poll_ready, timeout=per_request))
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
            time.sleep(POLL_INTERVAL)

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
            time.sleep(POLL_INTERVAL)

    def transfer_leadership(self, to: EtcdMember, timeout: float = 10.0) -> None:
        """Make TO the leader (etcd's MoveLeader, asked of the current leader) and wait until it is."""
        deadline = time.monotonic() + timeout
        leader = self.leader(timeout)
        if leader is not to:
            target = to.member_id(timeout=request_timeout(deadline))
            http_post_json(
                leader.client_url + "/v3/maintenance/transfer-leadership",
                {"targetID": str(target)},
                max(0.05, deadline - time.monotonic()),
            )
        while self.leader(max(0.0, deadline - time.monotonic())) is not to:
            if time.monotonic() >= deadline:
                raise EtcdWaitTimeout(f"etcd member {to.name} did not become leader within {timeout:.1f}s")
            time.sleep(POLL_INTERVAL)

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
