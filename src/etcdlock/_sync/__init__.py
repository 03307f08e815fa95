"""The sync API: the asyncio core run on one event-loop thread per client, through a portal.

portal.py owns the loop thread; client.py, lock.py, session.py, keepalive.py, watch.py and debug.py wrap
the async objects of the same names, each given the portal and nothing else of the others.
"""

from etcdlock._sync.client import SyncClient
from etcdlock._sync.debug import SyncDebugServer
from etcdlock._sync.keepalive import SyncKeepAlive
from etcdlock._sync.lock import SyncLock
from etcdlock._sync.session import SyncSession
from etcdlock._sync.watch import SyncWatch

__all__ = ["SyncClient", "SyncDebugServer", "SyncKeepAlive", "SyncLock", "SyncSession", "SyncWatch"]
