"""What this process holds, read from /proc (Linux): fds, OS threads, TCP connections, resident memory.

OS threads are counted from /proc/self/task because grpcio's threads are native and invisible to
``threading.enumerate()``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TCP_ESTABLISHED = "01"


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _socket_inodes() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def tcp_connections(remote_ports: set[int] | None = None) -> int:
    """Established TCP connections owned by this process, optionally only those to remote_ports."""
    mine = _socket_inodes()
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] != _TCP_ESTABLISHED or fields[9] not in mine:
                        continue
                    port = int(fields[2].rsplit(":", 1)[1], 16)
                    if remote_ports is None or port in remote_ports:
                        count += 1
        except FileNotFoundError:
            continue
    return count


@dataclass(frozen=True)
class ProcessSnapshot:
    fds: int
    threads: int
    rss: int
    tcp: int

    @classmethod
    def take(cls, remote_ports: set[int] | None = None) -> ProcessSnapshot:
        return cls(fd_count(), thread_count(), rss_bytes(), tcp_connections(remote_ports))
