"""pytest fixtures running real etcd servers on loopback.

Enable in a test module or the root ``conftest.py``::

    pytest_plugins = ["etcdlock.testing.pytest_plugin"]

Fixtures:

``etcd`` (session)
    A running 1-member :class:`~etcdlock.testing.EtcdCluster`, shared by the whole session.
``etcd_endpoints`` (function)
    ``list[str]`` of the session server's ``"127.0.0.1:PORT"`` endpoints (a fresh list per test).
``etcd_cluster3`` (module)
    A running 3-member cluster shared by one test module.  Tests that kill or pause members
    must restart/resume them; teardown tolerates dead or paused members.
``etcd_fresh`` (function)
    A brand-new, empty 1-member cluster for one test (compaction, metrics baselines, ...).

If etcd is not installed the fixtures error with :class:`~etcdlock.testing.EtcdNotInstalledError`,
whose message gives the install command.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from etcdlock.testing.cluster import EtcdCluster

__all__ = ["etcd", "etcd_cluster3", "etcd_endpoints", "etcd_fresh"]


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdCluster]:
    """A running 1-member etcd cluster for the whole test session."""
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture
def etcd_endpoints(etcd: EtcdCluster) -> list[str]:
    """The session etcd's endpoints, ``["127.0.0.1:PORT"]``."""
    return list(etcd.endpoints)


@pytest.fixture(scope="module")
def etcd_cluster3() -> Iterator[EtcdCluster]:
    """A running 3-member etcd cluster for one test module."""
    with EtcdCluster(3) as cluster:
        yield cluster


@pytest.fixture
def etcd_fresh() -> Iterator[EtcdCluster]:
    """A brand-new 1-member etcd cluster, just for this test."""
    with EtcdCluster(1) as cluster:
        yield cluster
