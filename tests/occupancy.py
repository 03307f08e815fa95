"""Independent evidence of exclusion, kept in etcd by the holders themselves (tests of the semaphore and the
read/write lock).

`RWCheck` is the occupancy protocol of interop/go/main.go's checker, so our holders and Go's
recipe.RWMutex holders check each other in one set of keys under PREFIX:

  exclusive enter: Txn If(version(P+"writer") == 0) Then put(P+"writer", id), count(P+"readers/")
                   -> violation if the If failed or the count > 0
  exclusive exit:  Txn If(value(P+"writer") == id) Then delete(P+"writer") -> violation if it failed
  shared enter:    Txn If(version(P+"writer") == 0) Then put(P+"readers/"+id) -> violation if it failed
  shared exit:     delete(P+"readers/"+id)

The check keys carry no lease on purpose (as in Go): a holder that dies inside leaves them, and the next
one reports it. PREFIX must not be under the lock's NAME/: Go's writer waits for every key under NAME/.

`SlotCheck` counts a semaphore's holders in etcd: each marks PREFIX<token> and counts the marks in the same
Txn, guarded by its slot's is_owner(), so only a holder whose key is still there can mark (and be
counted); a count above the limit is a violation.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

from etcdlock import Client, Compare, Op
from etcdlock._core.types import GetResult
from etcdlock._recipes.holdable import Holdable

_ids = itertools.count(1)


def holder_id() -> str:
    """Unique across our processes and distinct from Go's ids (go-PID-ROUND)."""
    return f"py-{os.getpid()}-{next(_ids)}"


@dataclass
class RWCheck:
    client: Client
    prefix: str
    violations: list[str] = field(default_factory=list)

    @property
    def writer(self) -> str:
        return self.prefix + "writer"

    @property
    def readers(self) -> str:
        return self.prefix + "readers/"

    async def enter_exclusive(self, hid: str) -> None:
        r = await self.client.txn(
            [Compare.version(self.writer, "==", 0)],
            [Op.put(self.writer, hid), Op.get(self.readers, prefix=True, count_only=True)],
        )
        if not r.succeeded:
            self.violations.append(f"exclusive-enter id={hid} writer-present")
            return
        count = r.responses[1]
        assert isinstance(count, GetResult)
        if count.count > 0:
            self.violations.append(f"exclusive-enter id={hid} readers={count.count}")

    async def exit_exclusive(self, hid: str) -> None:
        r = await self.client.txn([Compare.value(self.writer, "==", hid)], [Op.delete(self.writer)])
        if not r.succeeded:
            self.violations.append(f"exclusive-exit id={hid} writer-not-ours")

    async def enter_shared(self, hid: str) -> None:
        r = await self.client.txn([Compare.version(self.writer, "==", 0)], [Op.put(self.readers + hid, "")])
        if not r.succeeded:
            self.violations.append(f"shared-enter id={hid} writer-present")

    async def exit_shared(self, hid: str) -> None:
        await self.client.delete(self.readers + hid)


@dataclass
class SlotCheck:
    prefix: str
    limit: int
    violations: list[str] = field(default_factory=list)
    max_seen: int = 0  # the most marks counted at once

    async def enter(self, slot: Holdable) -> None:
        """Mark PREFIX<token> and count the marks, only while the slot's key is still its own."""
        r = await slot.txn(
            [], [Op.put(f"{self.prefix}{slot.token}", ""), Op.get(self.prefix, prefix=True, count_only=True)]
        )
        count = r.responses[1]
        assert isinstance(count, GetResult)
        self.max_seen = max(self.max_seen, count.count)
        if count.count > self.limit:
            self.violations.append(
                f"token {slot.token} entered with {count.count} marks (limit {self.limit})"
            )

    async def exit(self, slot: Holdable) -> None:
        r = await slot.txn(
            [Compare.version(f"{self.prefix}{slot.token}", ">", 0)], [Op.delete(f"{self.prefix}{slot.token}")]
        )
        if not r.succeeded:
            self.violations.append(f"token {slot.token}: its mark was gone at exit")
