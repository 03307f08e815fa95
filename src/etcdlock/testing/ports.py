"""Free TCP ports on loopback, where every test server listens."""

from __future__ import annotations

import socket
from collections.abc import Iterable

__all__ = ["LOOPBACK", "free_port", "free_ports"]

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(n: int, exclude: Iterable[int] = ()) -> list[int]:
    """``n`` distinct free ports, none of them in ``exclude``."""
    taken = set(exclude)
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in taken:
            taken.add(p)
            ports.append(p)
    return ports
