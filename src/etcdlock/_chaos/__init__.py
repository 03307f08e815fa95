"""Fault testing for locks: a fenced resource, lock workers, a fault harness and a safety checker.

Above the recipes and `etcdlock.testing` in the layering: it runs real etcd clusters (testing), real lock
clients in worker processes (recipes) and checks what they did against a resource that enforces fencing.
"""

from etcdlock._chaos.checker import run_scenario
from etcdlock._chaos.harness import FaultCluster
from etcdlock._chaos.report import RunReport
from etcdlock._chaos.resource import FencedResource, Write
from etcdlock._chaos.scenarios import SCENARIOS, Scenario

__all__ = ["SCENARIOS", "FaultCluster", "FencedResource", "RunReport", "Scenario", "Write", "run_scenario"]
