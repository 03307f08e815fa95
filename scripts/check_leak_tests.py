"""Put each class of leak back on purpose, run the test that guards it, and check that it fails.

    python scripts/check_leak_tests.py            # every class A-K
    python scripts/check_leak_tests.py A K        # some of them

Each case edits one source file in place, runs its tests, and restores the file (also on error). A case
that still passes means the test does not catch its leak. Run it on a clean work tree.
"""

import shutil
import subprocess
import sys

CASES = [
    (
        "A per-call stream key",
        "src/etcdlock/_core/watch.py",
        "        return STREAM_KEY\n",
        '        return f"{STREAM_KEY}:{w.seq}"\n',
        "tests/test_leaks_core.py -k 10k",
    ),
    (
        "B watcher not cancelled on exit",
        "src/etcdlock/_core/watch.py",
        "            if owned:\n                self.cancel()",
        "            pass",
        "tests/test_watch.py -k exit_path",
    ),
    (
        "C unbounded fan-out buffer",
        "src/etcdlock/_core/watch.py",
        "        if len(self._buffer) + len(events) > self.max_buffer:",
        "        if False:",
        "tests/test_watch.py -k slow_consumer",
    ),
    (
        "D orphaned stream tasks",
        "src/etcdlock/_core/stream.py",
        "        finally:\n            await self._drop(call, reader)\n",
        "        finally:\n            pass\n",
        "tests/test_lease.py",
    ),
    (
        "E lease not revoked",
        "src/etcdlock/_recipes/session.py",
        "        if self.lease_id:\n            await shielded(self._revoke(), CLEANUP_TIMEOUT)",
        "        pass",
        "tests/test_lock.py -k 'different_names_share or not_reentrant'",
    ),
    (
        "F lock key left behind",
        "src/etcdlock/_recipes/mutex.py",
        "            await self._delete_key(CLEANUP_TIMEOUT * 0.8)\n",
        "            pass\n",
        "tests/test_lock.py -k 'shared or reentrant or session'",
    ),
    (
        "G channel per task",
        "src/etcdlock/_core/connection.py",
        "        ch = self._channels.get(endpoint)\n        if ch is None:",
        "        endpoint_key = endpoint + str(id(asyncio.current_task()))\n        ch = self._channels.get(endpoint_key)\n        if ch is None:",
        "tests/test_leak_classes.py -k test_g",
    ),
    (
        "H native memory kept per stream",
        "src/etcdlock/_core/connection.py",
        "        return endpoint, multi(metadata=md)",
        "        call = multi(metadata=md)\n        _KEEP.append(call)\n        return endpoint, call",
        "tests/test_leak_classes.py -k test_h",
    ),
    (
        "I callbacks keep locks alive",
        "src/etcdlock/_recipes/mutex.py",
        "        self._lost_callbacks.clear()\n",
        "        pass\n",
        "tests/test_leaks_locks.py",
    ),
    (
        "J exception keeps failed acquire alive",
        "src/etcdlock/_recipes/mutex.py",
        "        except BaseException as e:\n            queue.end_acquire()\n",
        "        except BaseException as e:\n            queue.end_acquire()\n            _ERRORS.append(e)\n",
        "tests/test_leak_classes.py -k test_j_failed_acquires",
    ),
    (
        "K linger timer not cancelled on close",
        "src/etcdlock/_recipes/queue.py",
        "            if nw.expiry is not None:\n                nw.expiry.cancel()\n                nw.expiry = None\n            await nw.close()",
        "            await nw.close()",
        "tests/test_leak_classes.py -k test_k",
    ),
]
EXTRA = {
    "H": ("src/etcdlock/_core/connection.py", "_KEEP: list[Any] = []\n"),
    "J": ("src/etcdlock/_recipes/mutex.py", "_ERRORS: list[BaseException] = []\n"),
}
only = sys.argv[1:]
for name, path, old, new, tests in CASES:
    if only and name[0] not in only:
        continue
    shutil.copy(path, "/tmp/putback.orig")
    with open(path) as f:
        src = f.read()
    assert src.count(old) == 1, (name, "pattern not found once")
    src = src.replace(old, new)
    if name[0] == "G":
        src = src.replace(
            "            self._channels[endpoint] = ch", "            self._channels[endpoint_key] = ch"
        )
    if name[0] in EXTRA:
        src = src.rstrip("\n") + "\n\n" + EXTRA[name[0]][1]
    with open(path, "w") as f:
        f.write(src)
    try:
        r = subprocess.run(
            f"timeout 600 {sys.executable} -m pytest -q -x -p no:cacheprovider {tests}",
            shell=True,
            capture_output=True,
            text=True,
        )
        tail = [
            ln for ln in r.stdout.splitlines() if ln.startswith("E ") or " passed" in ln or " failed" in ln
        ]
        verdict = "FAILS as it should" if r.returncode != 0 else "STILL PASSES (test does not catch it)"
        print(f"{name}: {verdict}\n    " + "\n    ".join(tail[:2] + tail[-1:]), flush=True)
    finally:
        shutil.copy("/tmp/putback.orig", path)
