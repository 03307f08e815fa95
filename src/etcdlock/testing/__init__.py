"""Real etcd servers on loopback for tests (ours and our users').

Independent of the rest of :mod:`etcdlock`: stdlib only.  pytest fixtures live in
:mod:`etcdlock.testing.pytest_plugin` (enable with
``pytest_plugins = ["etcdlock.testing.pytest_plugin"]``); it is not imported here so that this
package does not require pytest.
"""

from etcdlock.testing.binaries import INSTALL_HINT, find_etcd_binary, find_etcdctl_binary
from etcdlock.testing.cluster import EtcdCluster
from etcdlock.testing.errors import EtcdNotInstalledError, EtcdProcessError, EtcdStartError, EtcdWaitTimeout
from etcdlock.testing.member import EtcdMember, ServerTLS
from etcdlock.testing.peers import PeerRouter
from etcdlock.testing.ports import free_port
from etcdlock.testing.prometheus import parse_prometheus_text
from etcdlock.testing.proxy import FaultProxy

__all__ = [
    "INSTALL_HINT",
    "EtcdCluster",
    "EtcdMember",
    "EtcdNotInstalledError",
    "EtcdProcessError",
    "EtcdStartError",
    "EtcdWaitTimeout",
    "FaultProxy",
    "PeerRouter",
    "ServerTLS",
    "find_etcd_binary",
    "find_etcdctl_binary",
    "free_port",
    "parse_prometheus_text",
]
