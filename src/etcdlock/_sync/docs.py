"""Docstrings of the sync twins come from their async originals, so the two cannot say different things.

A twin that has a docstring of its own keeps it (where the sync behaviour differs: timeouts that raise,
threading.Event instead of asyncio.Event, ...); the others get the original's, after a line naming it.
"""

from __future__ import annotations

import inspect
from typing import Any


def _doc(member: Any) -> str | None:
    if isinstance(member, property):
        member = member.fget
    return inspect.getdoc(member) if member is not None else None


def inherit_docs(sync_cls: type, async_cls: type) -> None:
    """Give every public member of sync_cls without a docstring the one of its async twin."""
    for name, member in list(vars(sync_cls).items()):
        if name.startswith("_") or _doc(member):
            continue
        original = getattr(async_cls, name, None)
        text = _doc(original) if original is not None else None
        if not text:
            continue
        doc = f"Sync twin of `{async_cls.__name__}.{name}`; blocks until it is done.\n\n{text}"
        if isinstance(member, property):
            setattr(sync_cls, name, property(member.fget, member.fset, member.fdel, doc))
        elif callable(member):
            member.__doc__ = doc
