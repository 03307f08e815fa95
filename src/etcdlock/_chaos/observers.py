"""Observers of what the workers did, on the checker's side: their JSON-line logs, read as they grow
(Events), and the moment each lock key disappeared from etcd, seen by the checker's own watch
(DeletionRecorder)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from etcdlock._core.types import EventType
from etcdlock._sync import SyncClient


class Events:
    """The workers' JSON-line logs, read on demand as they grow (they are written through as things
    happen); only what was appended since the last read is parsed."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = paths
        self._read_to = dict.fromkeys(paths, 0)  # bytes of complete lines parsed so far
        self._parsed: dict[Path, list[dict[str, Any]]] = {path: [] for path in paths}
        self._lock = threading.Lock()  # the checker's threads (a fault schedule's helpers) read too

    def all(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self._lock:
            for path in self._paths:
                out.extend(self._read(path))
        out.sort(key=lambda e: float(e["t"]))
        return out

    def _read(self, path: Path) -> list[dict[str, Any]]:
        try:
            with open(path, "rb") as f:
                f.seek(self._read_to[path])
                fresh = f.read()
        except FileNotFoundError:
            return []
        complete = fresh[: fresh.rfind(b"\n") + 1]  # a line still being written waits for the next read
        self._read_to[path] += len(complete)
        for line in complete.splitlines():
            try:
                self._parsed[path].append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the last line of a killed worker may be cut short
        return self._parsed[path]

    def of(self, ev: str) -> list[dict[str, Any]]:
        return [e for e in self.all() if e["ev"] == ev]

    def acquired_since(self, name: str, since: float) -> bool:
        return self.acquisitions_since(name, since) > 0

    def acquisitions_since(self, name: str, since: float) -> int:
        return sum(1 for e in self.of("acquire") if e["name"] == name and e["t"] > since)


class DeletionRecorder:
    """Watches the run's prefix from the checker (directly on the members) and notes when each lock key
    disappeared, on the same monotonic clock the workers use."""

    def __init__(self, client: SyncClient, prefix: str) -> None:
        self.deleted: dict[str, float] = {}
        self._client = client
        self._prefix = prefix
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="etcdlock-chaos-deletions", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> DeletionRecorder:
        self._thread.start()
        if not self._started.wait(15):
            raise RuntimeError("the deletion watch did not start")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        try:
            with self._client.watch(self._prefix, prefix=True) as watch:
                self._started.set()
                while not self._stop.is_set():
                    try:
                        ev = watch.next(timeout=0.2)
                    except TimeoutError:
                        continue
                    if ev.type is EventType.DELETE:
                        self.deleted.setdefault(ev.kv.key.decode(), time.monotonic())
        except BaseException as e:
            self._error = e
            self._started.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(15)
