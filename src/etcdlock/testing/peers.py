"""Partitions between etcd members: a router that carries their peer traffic and can cut links.

A :class:`FaultProxy` in front of one member's peer port cannot isolate it: the proxy only sees what
others send to that member, while the member still reaches the others over its own outbound connections.
The router puts one proxy (a *front*) in front of every member's peer port. Each member listens on its
own port but advertises its front (``--initial-advertise-peer-urls``, and the fronts in
``--initial-cluster``), so every peer connection, whichever member opens it, enters through the front
of the member it is for; the router knows the destination by the front, and the sender by asking the
kernel which member process owns the other end of the connection (Linux ``/proc``).

Why the kernel and not etcd's ``X-Server-From`` header (measured on etcd 3.4.23): raft streams
(``GET /raft/stream/{msgapp,message}/<id>``) and pipeline posts (``POST /raft``) carry the header, but
the pipeline's keep-alive connections usually open with a ``GET /raft/probing`` that does not, and
followers forward their clients' lease renewals to the leader as ``POST /leases`` (and
``/leases/internal``) without it, as they ask ``/version`` and ``/members``. A partition must cut those
too (a follower cut off from the leader must not renew leases through it), so the sender of every
connection must be known from its first byte, not from a header that may come later or never.

Cutting is per link: :meth:`PeerRouter.cut` blackholes every connection between two members, opened by
either (an HTTP exchange runs both ways on one connection, so a one-way cut would not mean much).
Connections from processes that are not members (a test's own probes) always pass. Client traffic does
not go through the router: an isolated member still serves its clients.

Stdlib only, like the rest of :mod:`etcdlock.testing`.  Typical use (``EtcdCluster`` does the wiring)::

    with EtcdCluster(3, route_peers=True) as cluster:
        router = cluster.peer_router
        router.isolate(cluster.leader().name)   # the others elect a new leader
        router.heal()                           # the old one rejoins as a follower
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from etcdlock.testing.proxy import FaultProxy

__all__ = ["PeerRouter"]

# Where the kernel lists this network namespace's IPv4 TCP sockets; the fronts listen on 127.0.0.1 only.
_PROC_TCP = Path("/proc/net/tcp")


def _proc_address(host: str, port: int) -> str:
    """An IPv4 address as /proc/net/tcp prints it: the 32-bit address in host byte order, then the port."""
    return f"{int.from_bytes(socket.inet_aton(host), sys.byteorder):08X}:{port:04X}"


def _socket_inode(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The inode of the TCP socket whose own address is LOCAL and whose peer is REMOTE, if it exists."""
    want = (_proc_address(*local), _proc_address(*remote))
    with contextlib.suppress(OSError):
        for line in _PROC_TCP.read_text().splitlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == want:
                return int(fields[9])
    return None


def _owns_socket(pid: int, inode: int) -> bool:
    link = f"socket:[{inode}]"
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False  # gone, or not ours to look at
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"{fd_dir}/{fd}") == link:
                return True
    return False


class PeerRouter:
    """One front per member; cut or mend the links between members. Thread-safe; a context manager.

    ``pids()`` gives the current PID of each member by name (None while it is not running); it is
    asked on each new connection, so members may be restarted under the router.
    """

    def __init__(self, pids: Callable[[], Mapping[str, int | None]]) -> None:
        self._pids = pids
        self._fronts: dict[str, FaultProxy] = {}
        self._cut: set[frozenset[str]] = set()
        # Serialises changes to the links. Never taken by the fronts' threads: a change waits for them.
        self._lock = threading.Lock()
        # (sender, member) of every connection a front accepted; sender None: not a member's.
        self._seen: collections.Counter[tuple[str | None, str]] = collections.Counter()
        self._seen_lock = threading.Lock()

    # ---- wiring ----

    def add(self, member: str, target: str) -> str:
        """Start MEMBER's front, forwarding to its listener TARGET ("host:port"); the URL to advertise."""
        with self._lock:
            if member in self._fronts:
                raise ValueError(f"member {member!r} already has a front")
            front = FaultProxy(target, identify=lambda sock: self._identify(member, sock)).start()
            self._fronts[member] = front
        return f"http://{front.endpoint}"

    def front(self, member: str) -> FaultProxy:
        return self._fronts[member]

    @property
    def members(self) -> list[str]:
        return list(self._fronts)

    # ---- faults ----

    def cut(self, a: str, b: str) -> None:
        """Cut the link between members A and B: every connection between them, opened by either, is
        blackholed from now on (existing ones included) until :meth:`mend` or :meth:`heal`."""
        self._check(a, b)
        self._change(add=[frozenset((a, b))])

    def mend(self, a: str, b: str) -> None:
        """Undo :meth:`cut`; connections that lived through it are reset (their streams are corrupt)."""
        self._check(a, b)
        self._change(remove=[frozenset((a, b))])

    def isolate(self, member: str) -> None:
        """Cut MEMBER off from every other member, both ways, at once; its clients still reach it."""
        self._check(member)
        self._change(add=[frozenset((member, other)) for other in self._fronts if other != member])

    def heal(self) -> None:
        """Mend every link."""
        self._change(remove=list(self._cut))

    def is_cut(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self._cut

    @property
    def connections_seen(self) -> dict[tuple[str | None, str], int]:
        """How many connections each (sender, member) pair opened through the fronts; sender None: a
        process that is not a member."""
        with self._seen_lock:
            return dict(self._seen)

    # ---- internals ----

    def _check(self, *members: str) -> None:
        if any(m not in self._fronts for m in members) or len(set(members)) != len(members):
            raise ValueError(f"expected distinct members of {self.members}, got {list(members)}")

    def _change(
        self, *, add: list[frozenset[str]] | None = None, remove: list[frozenset[str]] | None = None
    ) -> None:
        with self._lock:
            self._cut.update(add or [])
            self._cut.difference_update(remove or [])
            # Each front blackholes the senders whose link to its member is cut.
            for member, front in self._fronts.items():
                front.cut_off(other for other in self._fronts if frozenset((member, other)) in self._cut)

    def _identify(self, member: str, sock: socket.socket) -> str | None:
        """Which member opened SOCK (accepted by MEMBER's front): the one whose process owns its other end."""
        sender = self._owner(remote=sock.getsockname(), local=sock.getpeername())
        with self._seen_lock:
            self._seen[(sender, member)] += 1
        return sender

    def _owner(self, *, local: tuple[str, int], remote: tuple[str, int]) -> str | None:
        inode = _socket_inode(local, remote)
        if inode is None:
            return None
        for name, pid in self._pids().items():
            if pid is not None and _owns_socket(pid, inode):
                return name
        return None

    # ---- lifecycle ----

    def close(self) -> None:
        """Close every front (their connections are reset). Idempotent."""
        with self._lock:
            fronts = list(self._fronts.values())
            self._fronts.clear()
            self._cut.clear()
        errors: list[BaseException] = []
        for front in fronts:
            try:
                front.close()
            except Exception as e:
                errors.append(e)
        if errors:
            raise RuntimeError(f"peer router: fronts failed to close: {errors!r}") from errors[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        cut = sorted("-".join(sorted(link)) for link in self._cut)
        return f"<PeerRouter members={self.members} cut={cut}>"
