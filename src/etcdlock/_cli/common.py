"""Pieces the commands share: endpoint options and a local etcd when none is given."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator, Sequence

from etcdlock.testing import EtcdCluster


def add_endpoint_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoints",
        default=None,
        help="comma-separated etcd endpoints (host:port); default: start a throwaway local etcd",
    )
    p.add_argument("--user", default=None, help="etcd user name (asks for auth; needs --password)")
    p.add_argument("--password", default=None, help="etcd password")


def given_endpoints(args: argparse.Namespace) -> list[str]:
    """--endpoints, else $ETCDLOCK_ENDPOINTS, else $ETCDCTL_ENDPOINTS (as etcdctl), else localhost."""
    text = args.endpoints or os.environ.get("ETCDLOCK_ENDPOINTS") or os.environ.get("ETCDCTL_ENDPOINTS")
    text = text or "127.0.0.1:2379"
    return [e.strip() for e in text.split(",") if e.strip()]


@contextlib.contextmanager
def endpoints_or_local(
    args: argparse.Namespace, say: bool = True, etcd_args: Sequence[str] = ()
) -> Iterator[list[str]]:
    """The endpoints given, or those of a local etcd started now and stopped (by PID) on the way out."""
    if args.endpoints:
        yield [e.strip() for e in args.endpoints.split(",") if e.strip()]
        return
    with EtcdCluster(1, extra_args=etcd_args) as cluster:
        if say:
            member = cluster.members[0]
            print(f"started a throwaway etcd at {member.endpoint} (pid {member.pid})", flush=True)
        yield cluster.endpoints
