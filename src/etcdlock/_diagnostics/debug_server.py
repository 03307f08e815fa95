"""An opt-in debug HTTP endpoint, bound to loopback by default: the instruments the Go team improvised.

    /metrics           Prometheus text (lock wait/hold histograms, held/lost/timeouts, streams, leases ...)
    /debug/memory      tracemalloc: top allocation sites and the growth since the baseline (?reset=1 sets it)
    /debug/gc          force a full collection; report what it freed
    /debug/tasks       every asyncio task of the loop, with its stack
    /debug/resources   the client's resource snapshot and process counters, as JSON

Plain asyncio streams, one request per connection; the server owns its connection handlers and ends them
on close().
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import io
import json
import tracemalloc
import urllib.parse
from collections.abc import Callable

from etcdlock._diagnostics import memory, metrics
from etcdlock._diagnostics.process import ProcessSnapshot
from etcdlock._recipes.state import RecipeClient

_READ_TIMEOUT = 5.0
_MAX_REQUEST = 16 * 1024
_TRACE_FRAMES = 1


class DebugServer:
    """The debug HTTP endpoint of one client (from `client.serve_debug()`): /metrics (Prometheus),
    /debug/memory, /debug/gc, /debug/tasks, /debug/resources. Closes with its client, or with close()."""

    def __init__(self, client: RecipeClient, host: str = "127.0.0.1", port: int = 0) -> None:
        self._client = client
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._baseline: dict[str, tuple[int, int]] | None = None
        self._routes: dict[str, Callable[[dict[str, list[str]]], tuple[str, str]]] = {
            "/metrics": self._metrics,
            "/debug/memory": self._memory,
            "/debug/gc": self._gc,
            "/debug/tasks": self._tasks,
            "/debug/resources": self._resources,
        }

    @property
    def url(self) -> str:
        """http://HOST:PORT of the running endpoint."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> DebugServer:
        """Start listening (port 0 picks a free port, then `port` says which). @private"""
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening and end every open connection. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer), name="etcdlock:debug-http")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            status, ctype, body = self._respond(head)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            status, ctype, body = "400 Bad Request", "text/plain", "bad request\n"
        try:
            data = body.encode()
            head_out = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}; charset=utf-8\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head_out.encode() + data)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(self, head: bytes) -> tuple[str, str, str]:
        if len(head) > _MAX_REQUEST:
            return "431 Request Header Fields Too Large", "text/plain", "request too large\n"
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or parts[0] != "GET":
            return "405 Method Not Allowed", "text/plain", "only GET\n"
        url = urllib.parse.urlsplit(parts[1])
        route = self._routes.get(url.path)
        if route is None:
            return "404 Not Found", "text/plain", "routes: " + " ".join(self._routes) + "\n"
        try:
            ctype, body = route(urllib.parse.parse_qs(url.query))
        except Exception as e:  # a broken route must not take the endpoint down
            return "500 Internal Server Error", "text/plain", f"{type(e).__name__}: {e}\n"
        return "200 OK", ctype, body

    # ---- routes ----

    def _metrics(self, query: dict[str, list[str]]) -> tuple[str, str]:
        return "text/plain; version=0.0.4", metrics.render(self._client)

    def _memory(self, query: dict[str, list[str]]) -> tuple[str, str]:
        out = io.StringIO()
        if not tracemalloc.is_tracing():
            tracemalloc.start(_TRACE_FRAMES)
            out.write("tracemalloc was off: started now; allocations from here on are traced\n")
        now = memory.sites()
        if self._baseline is None or query.get("reset", ["0"])[0] not in ("", "0"):
            self._baseline = now
            out.write("baseline set\n")
        current, peak = tracemalloc.get_traced_memory()
        out.write(f"traced now {current} bytes, peak {peak} bytes\n\ntop allocation sites (bytes, blocks):\n")
        for where, (size, count) in sorted(now.items(), key=lambda kv: -kv[1][0])[:25]:
            out.write(f"  {size:>12} {count:>8}  {where}\n")
        out.write("\ngrowth since baseline (bytes, blocks):\n")
        for where, size, count in memory.growth(self._baseline, now, top=25):
            out.write(f"  {size:>+12} {count:>+8}  {where}\n")
        return "text/plain", out.getvalue()

    def _gc(self, query: dict[str, list[str]]) -> tuple[str, str]:
        before = len(gc.get_objects())
        collected = gc.collect()
        after = len(gc.get_objects())
        report = {
            "collected": collected,
            "objects_before": before,
            "objects_after": after,
            "uncollectable": len(gc.garbage),
            "generation_counts": list(gc.get_count()),
        }
        return "application/json", json.dumps(report, indent=2) + "\n"

    def _tasks(self, query: dict[str, list[str]]) -> tuple[str, str]:
        out = io.StringIO()
        tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
        out.write(f"{len(tasks)} tasks\n")
        for task in tasks:
            out.write(f"\n{task.get_name()}: {task.get_coro()!r}\n")
            # By hand: Task.print_stack fails on suspended frames whose f_lineno is None (CPython 3.11).
            for frame in task.get_stack(limit=8):
                code = frame.f_code
                out.write(f"  {code.co_filename}:{frame.f_lineno or 0} in {code.co_name}\n")
        return "text/plain", out.getvalue()

    def _resources(self, query: dict[str, list[str]]) -> tuple[str, str]:
        report = {
            "client": dataclasses.asdict(self._client.resources()),
            "process": dataclasses.asdict(ProcessSnapshot.take()),
            "locks": dataclasses.asdict(self._client._recipes.stats),
        }
        return "application/json", json.dumps(report, indent=2) + "\n"
