"""A fenced resource: the thing a lock (or an election's leader) protects, which accepts a write only with
a fencing token at least as high as the highest it has accepted for that name; and its counterpart for a
semaphore, which accepts no more than `limit` holders' tokens at once.

Locks alone cannot give mutual exclusion (a paused holder acts after its lease is gone); a resource that
checks tokens can. It lives in the checker process, outside etcd, so etcd faults do not touch it, and it
logs every request it is offered so the checker can verify its decisions independently.

Protocol, one line per request over TCP:  "W <name> <token> <worker> <seq>\n"
answered "OK\n" or "STALE <highest>\n". The counting resource also takes "E <name> <token> <worker> 0\n"
(a holder enters: registers its token) and "X <name> <token> <worker> 0\n" (it leaves), and answers a
refused write "OVER <tokens at once>\n" or "NOTIN\n".
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Write:
    at: float  # time.monotonic() at receipt (CLOCK_MONOTONIC: one clock for every process on the host)
    name: str
    token: int
    worker: str
    seq: int
    accepted: bool
    op: str = "W"  # W: a write; E / X: a holder entering / leaving (the counting resource)


class FencedResource:
    """A TCP server on loopback, run by one owned thread with its own event loop."""

    def __init__(self, *, enforce: bool = True) -> None:
        # enforce=False turns fencing off: only for proving that the checker notices stale writes.
        self.enforce = enforce
        self.writes: list[Write] = []
        self._highest: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._stopping = asyncio.Event()  # bound to the server's loop on first use, in its thread
        self._error: BaseException | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FencedResource:
        self._thread = threading.Thread(target=self._run, name="etcdlock-fenced-resource", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"fenced resource did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopping.wait()
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while line := await reader.readline():
                writer.write(self._decide(line.decode()).encode())
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    OPS = frozenset({"W"})

    def _decide(self, line: str) -> str:
        try:
            op, name, token_s, worker, seq_s = line.split()
            token, seq = int(token_s), int(seq_s)
            if op not in self.OPS:
                raise ValueError(op)
        except ValueError:
            return "ERR bad request\n"
        with self._lock:
            at = time.monotonic()
            refusal = self._refusal(op, name, token, at)
            accepted = refusal is None or not self.enforce
            if accepted:
                self._accept(op, name, token, at)
            self.writes.append(Write(at, name, token, worker, seq, accepted, op))
        return "OK\n" if accepted else f"{refusal}\n"

    def _refusal(self, op: str, name: str, token: int, at: float) -> str | None:
        """Why this request must be refused (the reply), or None. Called under the lock."""
        highest = self._highest.get(name, 0)
        return None if token >= highest else f"STALE {highest}"

    def _accept(self, op: str, name: str, token: int, at: float) -> None:
        self._highest[name] = max(self._highest.get(name, 0), token)

    def snapshot(self) -> list[Write]:
        with self._lock:
            return list(self.writes)

    def close(self) -> None:
        """Stop serving and join the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._stopping.set)
            thread.join(10)
        self._thread = None

    def __enter__(self) -> FencedResource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class CountingResource(FencedResource):
    """What a semaphore of `limit` protects: no more than `limit` holders may act on it at once.

    A holder registers its token when it enters ("E"), then writes with it ("W"), and leaves ("X"). A
    holder counts as acting from its entry to its last accepted write: a killed holder stops counting at
    its last write (it never leaves), and a paused one too, unless it writes again after it resumes,
    which is what must not happen once `limit` others have come in meanwhile. So a write is refused when
    accepting it would make its holder's time of acting (entry to now) overlap `limit` others' at once;
    a holder that followed the semaphore never gets such a refusal, since it acts only while etcd counts
    it among the `limit` holders. A write of a token that has not entered, or has left, is refused too.
    """

    OPS = frozenset({"E", "W", "X"})

    def __init__(self, limit: int, *, enforce: bool = True) -> None:
        super().__init__(enforce=enforce)
        self.limit = limit
        self._acting: dict[str, Acting] = {}

    def _refusal(self, op: str, name: str, token: int, at: float) -> str | None:
        if op != "W":
            return None
        acting = self._acting.setdefault(name, Acting())
        if not acting.inside(token):
            return "NOTIN"
        at_once = acting.at_once_with(token, at)
        return f"OVER {at_once}" if at_once > self.limit else None

    def _accept(self, op: str, name: str, token: int, at: float) -> None:
        acting = self._acting.setdefault(name, Acting())
        if op == "E":
            acting.enter(token, at)
        elif op == "X":
            acting.leave(token)
        else:
            acting.wrote(token, at)


class Acting:
    """The holders of one name at a counting resource: when each entered, when it last wrote."""

    def __init__(self) -> None:
        self.spans: dict[int, list[float]] = {}  # token -> [entered at, last accepted write at]
        self.left: set[int] = set()

    def enter(self, token: int, at: float) -> None:
        self.spans.setdefault(token, [at, at])
        self.left.discard(token)

    def leave(self, token: int) -> None:
        self.left.add(token)

    def inside(self, token: int) -> bool:
        return token in self.spans and token not in self.left

    def wrote(self, token: int, at: float) -> None:
        self.spans.setdefault(token, [at, at])[1] = at  # (entered or not: with enforcement off)

    def at_once_with(self, token: int, at: float) -> int:
        """How many holders would act at once, at most, if TOKEN's write at AT were accepted: TOKEN
        (acting from its entry to AT) and the others acting at some moment of that time."""
        start = self.spans[token][0]
        edges = []
        for other, (entered, last) in self.spans.items():
            if other != token and last >= start:
                edges += [(max(entered, start), 0), (last, 1)]  # (moment, 0: begins / 1: ends)
        return 1 + max_at_once(edges)


def max_at_once(edges: list[tuple[float, int]]) -> int:
    """The most intervals covering one moment, given each closed interval's begin (moment, 0) and end
    (moment, 1): at equal moments begins count first, so intervals that only touch overlap."""
    most = now = 0
    for _, kind in sorted(edges):
        now += 1 if kind == 0 else -1
        most = max(most, now)
    return most


def over_limit(writes: list[Write], limit: int) -> list[tuple[str, list[int]]]:
    """(name, tokens) for each time more than LIMIT holders acted on a counting resource at once, a
    holder acting from its accepted entry (or first accepted write) to its last accepted write.

    Recomputed from the log over every holder's whole time of acting at the end, not from the resource's
    bookkeeping, which judged each write against what it knew then."""
    spans: dict[tuple[str, int], list[float]] = {}
    for w in writes:
        if w.accepted and w.op in ("E", "W"):
            span = spans.setdefault((w.name, w.token), [w.at, w.at])
            if w.op == "W":
                span[1] = w.at
    out: list[tuple[str, list[int]]] = []
    for name in sorted({n for n, _ in spans}):
        out += [
            (name, tokens) for tokens in crowds({t: s for (n, t), s in spans.items() if n == name}, limit)
        ]
    return out


def crowds(spans: dict[int, list[float]], limit: int) -> list[list[int]]:
    """Each distinct set of more than LIMIT keys whose closed intervals [begin, end] all cover one moment
    (checked at every begin, where such a set first forms)."""
    found: list[list[int]] = []
    for _, (begin, _) in sorted(spans.items(), key=lambda item: item[1][0]):
        covering = sorted(t for t, (b, e) in spans.items() if b <= begin <= e)
        if len(covering) > limit and covering not in found:
            found.append(covering)
    return found


def interleaved(writes: list[Write]) -> list[tuple[str, int, int]]:
    """(name, token, between) for each accepted write whose token had been followed by another token's
    accepted write (BETWEEN) for the same name: two holders (leaders) whose accepted writes interleave.
    Recomputed from the log; with fencing on, a token's writes must form one unbroken run."""
    current: dict[str, int] = {}
    done: dict[str, set[int]] = {}
    out = []
    for w in writes:
        if not w.accepted or w.op != "W":
            continue
        last = current.get(w.name)
        if last is not None and last != w.token:
            done.setdefault(w.name, set()).add(last)
            if w.token in done[w.name]:
                out.append((w.name, w.token, last))
        current[w.name] = w.token
    return out


def stale_accepted(writes: list[Write]) -> list[Write]:
    """Accepted writes whose token is below one accepted earlier for the same name: what fencing forbids.

    Recomputed from the log, not taken from the resource's own bookkeeping."""
    highest: dict[str, int] = {}
    bad = []
    for w in writes:
        if not w.accepted or w.op != "W":
            continue
        if w.token < highest.get(w.name, 0):
            bad.append(w)
        highest[w.name] = max(highest.get(w.name, 0), w.token)
    return bad
