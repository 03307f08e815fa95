"""Fork safety: a client never hangs in a forked child; it says what happened instead.

gRPC's asyncio engine (its polling threads, completion queues, the channels' sockets) does not survive
fork(). A child that uses a client it inherited, or that makes a new one while its parent had channels
open at the fork, hangs inside gRPC for good. So every client remembers the fork generation it was made
in, and every RPC entry checks it (an integer compare); a child forked while channels were open refuses
to make clients at all. A child of a parent that had closed its clients (or never connected) is fine:
gRPC's state is only torn when live channels were carried across.
"""

from __future__ import annotations

import os

from etcdlock._core.errors import ForkError

_generation = 0  # bumped in every forked child
_live_channels = 0  # connections of this process with gRPC channels open
_forked_live_from: int | None = None  # pid of the parent that forked with channels open


def _after_fork_in_child() -> None:
    global _generation, _live_channels, _forked_live_from
    _generation += 1
    if _live_channels:
        _forked_live_from = os.getppid()
    _live_channels = 0  # the inherited ones are dead weight here, never used


os.register_at_fork(after_in_child=_after_fork_in_child)


def generation() -> int:
    """The current fork generation: record it when making something that must stay in this process."""
    return _generation


def forked_since(made_in: int) -> bool:
    return made_in != _generation


def check_same_process(made_in: int, what: str = "this etcdlock client") -> None:
    """Raise ForkError if `what` was made before a fork (this is the child)."""
    if made_in != _generation:
        raise ForkError(
            f"{what} was made in the parent of this forked process (pid {os.getpid()}); gRPC does not "
            "survive fork(), so it cannot be used here. Make clients after the fork (e.g. gunicorn's "
            "post_fork hook, Celery's worker_process_init), or use multiprocessing's 'spawn' start method"
        )


def check_can_connect() -> None:
    """Raise ForkError in a child forked while its parent had channels open (gRPC would hang)."""
    if _forked_live_from is not None:
        raise ForkError(
            f"this process (pid {os.getpid()}) was forked from pid {_forked_live_from} while that process "
            "had an etcdlock client connected; gRPC does not survive such a fork and would hang here. Fork "
            "before making clients (or close them first), or use multiprocessing's 'spawn' start method"
        )


def channels_opened() -> None:
    global _live_channels
    _live_channels += 1


def channels_closed(made_in: int) -> None:
    global _live_channels
    if made_in == _generation:
        _live_channels -= 1


__all__ = ["check_can_connect", "check_same_process", "forked_since", "generation"]
