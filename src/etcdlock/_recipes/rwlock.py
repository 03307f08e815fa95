"""Read/write lock: etcd's contrib/recipes RWMutex protocol, so Go programs using it take part.

The wire contract we share with Go's recipe.NewRWMutex: a reader's key is under NAME/read/, a writer's
under NAME/write/, on the holder's lease, and the queue is ordered by create revision. A reader holds once
no writer's key below its own remains; a writer once no key at all (reader or writer) below its own
remains. Queue order decides, so a writer is not starved by a stream of readers: readers that come after
it wait behind it. (Go names its keys by time; ours are SLOT/<lease hex>, like the mutex's: the protocol
only looks at the prefixes and the revisions.) Waiting, loss and release are the shared queue's
(contender.py).
"""

from __future__ import annotations

from etcdlock._recipes.contender import QueueSpec, check_timeout
from etcdlock._recipes.holdable import Holdable
from etcdlock._recipes.mutex import check_name
from etcdlock._recipes.session import DEFAULT_TTL, Session
from etcdlock._recipes.state import RecipeClient


class ReadLock(Holdable):
    """The shared side of a read/write lock: held together with other readers, never with a writer."""

    def _spec(self) -> QueueSpec:
        writers = (self.name + "/write/").encode()
        return QueueSpec(
            kind="read lock",
            name=self.name,
            slot=self.name + "/read",
            blockers=writers,
            is_blocker=lambda key: key.startswith(writers),
        )


class WriteLock(Holdable):
    """The exclusive side of a read/write lock: held by nobody else, reader or writer."""

    def _spec(self) -> QueueSpec:
        readers, writers = (self.name + "/read/").encode(), (self.name + "/write/").encode()
        return QueueSpec(
            kind="write lock",
            name=self.name,
            slot=self.name + "/write",
            blockers=(self.name + "/").encode(),
            is_blocker=lambda key: key.startswith((readers, writers)),
        )


class RWLock:
    """A read/write lock on NAME: ``async with rw.read():`` shared, ``async with rw.write():`` exclusive."""

    def __init__(
        self,
        client: RecipeClient,
        name: str,
        *,
        ttl: int = DEFAULT_TTL,
        timeout: float | None = None,
        session: Session | None = None,
    ) -> None:
        self.name = check_name(name, "read/write lock")
        """The lock's name: readers' keys are NAME/read/<lease hex>, writers' NAME/write/<lease hex>."""
        check_timeout(timeout)
        self._client = client
        self._ttl = ttl
        self._timeout = timeout
        self._session = session
        self.read()  # checks the options now, before anything is sent

    def read(self, *, timeout: float | None = None, cancel_on_loss: bool = False) -> ReadLock:
        """A read lock (nothing is sent yet), reusable like a Lock; `timeout` None: the RWLock's."""
        return ReadLock(
            self._client,
            self.name,
            ttl=self._ttl,
            timeout=self._timeout if timeout is None else timeout,
            session=self._session,
            cancel_on_loss=cancel_on_loss,
        )

    def write(self, *, timeout: float | None = None, cancel_on_loss: bool = False) -> WriteLock:
        """A write lock (nothing is sent yet), reusable like a Lock; `timeout` None: the RWLock's."""
        return WriteLock(
            self._client,
            self.name,
            ttl=self._ttl,
            timeout=self._timeout if timeout is None else timeout,
            session=self._session,
            cancel_on_loss=cancel_on_loss,
        )

    def __repr__(self) -> str:
        return f"<RWLock {self.name!r}>"


__all__ = ["RWLock", "ReadLock", "WriteLock"]
