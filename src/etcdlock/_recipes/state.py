"""What the coordination recipes keep per client, with one owner: the client.

Every recipe of a client shares three things: the lock-queue watchers by name (queue.py), the default
sessions by TTL (session_pool.py) and the counters the metrics render (stats.py). They live in one
`Recipes` object, made on the client's first recipe call (inside its event loop) and closed with the client
through its close hooks. No module-level table maps clients to state: state dies with its client.
"""

from __future__ import annotations

import functools

from etcdlock._core.client import CoreClient
from etcdlock._recipes.queue import QueueRegistry
from etcdlock._recipes.session_pool import SessionPool
from etcdlock._recipes.stats import LockStats


class Recipes:
    """The recipe state of one client."""

    def __init__(self, client: RecipeClient) -> None:
        self.stats = LockStats()
        self.queues = QueueRegistry(client)
        self.sessions = SessionPool(client)


class RecipeClient(CoreClient):
    """A core client that owns recipe state (the base of `etcdlock.Client`). @private"""

    @functools.cached_property
    def _recipes(self) -> Recipes:
        """This client's recipe state, made on first use. @private"""
        return Recipes(self)


__all__ = ["RecipeClient", "Recipes"]
