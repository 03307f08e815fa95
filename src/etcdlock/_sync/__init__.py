"""The sync API: the asyncio core run on one event-loop thread per client, through a portal.

portal.py owns the loop thread; client.py, lock.py, election.py, observe.py, semaphore.py, rwlock.py,
session.py, keepalive.py, watch.py and debug.py wrap the async objects of the same names, each given the
portal and nothing else of the others (the recipes' twins build on lock.py's SyncLock).
"""

from etcdlock._client import Client
from etcdlock._core.lease import KeepAlive
from etcdlock._core.watch import Watcher
from etcdlock._diagnostics.debug_server import DebugServer
from etcdlock._recipes.election import Election, Term
from etcdlock._recipes.lock import Lock
from etcdlock._recipes.rwlock import RWLock
from etcdlock._recipes.semaphore import Semaphore, Slot
from etcdlock._recipes.session import Session
from etcdlock._sync.client import SyncClient
from etcdlock._sync.debug import SyncDebugServer
from etcdlock._sync.docs import inherit_docs
from etcdlock._sync.election import SyncElection, SyncTerm
from etcdlock._sync.keepalive import SyncKeepAlive
from etcdlock._sync.lock import SyncLock
from etcdlock._sync.observe import SyncObservation
from etcdlock._sync.rwlock import SyncRWLock
from etcdlock._sync.semaphore import SyncSemaphore, SyncSlot
from etcdlock._sync.session import SyncSession
from etcdlock._sync.watch import SyncWatch

for _sync_cls, _async_cls in (
    (SyncClient, Client),
    (SyncLock, Lock),
    (SyncElection, Election),
    (SyncTerm, Term),
    (SyncSemaphore, Semaphore),
    (SyncSlot, Slot),
    (SyncRWLock, RWLock),
    (SyncSession, Session),
    (SyncKeepAlive, KeepAlive),
    (SyncWatch, Watcher),
    (SyncDebugServer, DebugServer),
):
    inherit_docs(_sync_cls, _async_cls)

__all__ = [
    "SyncClient",
    "SyncDebugServer",
    "SyncElection",
    "SyncKeepAlive",
    "SyncLock",
    "SyncObservation",
    "SyncRWLock",
    "SyncSemaphore",
    "SyncSession",
    "SyncSlot",
    "SyncTerm",
    "SyncWatch",
]
