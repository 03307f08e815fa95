"""Fork safety: a client never hangs in a forked child; it says what happened instead.

gRPC's asyncio engine (its polling threads, completion queues, the channels' sockets) does not survive
fork(). A child that uses a client it inherited, or that makes a new one after its parent had connected,
can hang inside gRPC for good (seen also when the parent had closed its clients before the fork: now and
then, not always). So every client remembers the fork generation it was made in, and every RPC entry
checks it (an integer compare); a child of a process that ever opened a gRPC channel refuses to connect.
A child of a parent that never connected is fine: gRPC's engine starts in the child, untouched.
"""

from __future__ import annotations

import os

from etcdlock._core.errors import ForkError

_generation = 0  # bumped in every forked child
_connected = False  # this process has opened a gRPC channel (gRPC's engine is running)
_forked_from: int | None = None  # pid of the connected process this one was forked from


def _after_fork_in_child() -> None:
    global _generation, _forked_from
    _generation += 1
    if _connected and _forked_from is None:
        _forked_from = os.getppid()


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
    """Raise ForkError in a process forked from one that had connected (gRPC could hang here)."""
    if _forked_from is not None:
        raise ForkError(
            f"this process (pid {os.getpid()}) was forked from pid {_forked_from} after that process had "
            "connected an etcdlock client; gRPC does not survive such a fork and could hang here. Fork "
            "before the parent connects, or use multiprocessing's 'spawn' start method"
        )


def channel_opened() -> None:
    """A channel was opened in this process: its children can no longer connect (see above)."""
    global _connected
    _connected = True


__all__ = ["check_can_connect", "check_same_process", "forked_since", "generation"]
