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

from typing import Unpack

from etcdlock._recipes.contender import QueueSpec
from etcdlock._recipes.holdable import Holdable, HoldOptions
from etcdlock._recipes.mutex import check_name
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

    def __init__(self, client: RecipeClient, name: str, **options: Unpack[HoldOptions]) -> None:
        self.name = check_name(name, "read/write lock")
        """The lock's name: readers' keys are NAME/read/<lease hex>, writers' NAME/write/<lease hex>."""
        self._client = client
        self._options = options
        self.read()  # checks the options now, before anything is sent

    def read(self, *, timeout: float | None = None, cancel_on_loss: bool = False) -> ReadLock:
        """A read lock (nothing is sent yet), reusable like a Lock; `timeout` None: the RWLock's."""
        return ReadLock(self._client, self.name, **self._side(timeout, cancel_on_loss))

    def write(self, *, timeout: float | None = None, cancel_on_loss: bool = False) -> WriteLock:
        """A write lock (nothing is sent yet), reusable like a Lock; `timeout` None: the RWLock's."""
        return WriteLock(self._client, self.name, **self._side(timeout, cancel_on_loss))

    def _side(self, timeout: float | None, cancel_on_loss: bool) -> HoldOptions:
        options: HoldOptions = {**self._options, "cancel_on_loss": cancel_on_loss}
        if timeout is not None:
            options["timeout"] = timeout
        return options

    def __repr__(self) -> str:
        return f"<RWLock {self.name!r}>"


__all__ = ["RWLock", "ReadLock", "WriteLock"]
