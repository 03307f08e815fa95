"""`etcdlock etcd`: start a local etcd (1 or 3 members) on loopback and keep it until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from etcdlock.testing import EtcdCluster


def register(sub: Any) -> None:
    p = sub.add_parser(
        "etcd",
        help="start a local etcd on loopback until Ctrl-C",
        description="Start a local etcd of 1 or 3 members on loopback, with free ports and a temporary "
        "data directory, and keep it until Ctrl-C (or SIGTERM); its data is deleted when it stops. "
        "It prints each member's endpoint and an ETCDCTL_ENDPOINTS=... line for etcdctl and etcdlock.",
    )
    p.add_argument("--members", type=int, choices=(1, 3), default=1, help="cluster size (default 1)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with EtcdCluster(args.members) as cluster:
        for m in cluster.members:
            print(f"{m.name}: endpoint {m.endpoint}  pid {m.pid}  data {m.data_dir}")
        print(f"ETCDCTL_ENDPOINTS={','.join(cluster.endpoints)}  (Ctrl-C stops it)", flush=True)
        stop.wait()
    print("stopped")
    return 0
