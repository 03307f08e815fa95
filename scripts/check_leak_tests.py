"""Put each class of leak back on purpose, run the tests that guard it, and check that they fail because of it.

    python scripts/check_leak_tests.py            # every class A-P
    python scripts/check_leak_tests.py A K L      # some of them

Each case edits one source file in place, runs its tests, and restores the file (also on error, Ctrl-C or
SIGTERM). A case counts as caught only if its tests fail with the failure it names (`expect`), not with
any failure: a flake or an injection that broke an import would otherwise pass for a catch. The exit
status is 1 if any case is not caught. Run it on a clean work tree (its tests must pass as they are), with
the sources importable (PYTHONPATH=src).

A-K guard the client core and the lock; L-P the recipes on the shared queue (tests/test_leaks_recipes.py).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass

RECIPES = "tests/test_leaks_recipes.py"


@dataclass(frozen=True)
class Case:
    name: str  # its letter first: the command line picks cases by it
    path: str
    old: str  # the code that prevents the leak: found exactly once
    new: str  # ... and what it becomes
    tests: str  # pytest arguments
    expect: str  # text of the failure the tests must report
    # A module-level list to keep things in (the leak's sink), appended to the file.
    extra: str = ""
    # Further replacements in the same file, each done where it is found.
    also: tuple[tuple[str, str], ...] = ()


CASES = [
    Case(
        "A per-call stream key",
        "src/etcdlock/_core/watch.py",
        "        return STREAM_KEY\n",
        '        return f"{STREAM_KEY}:{w.seq}"\n',
        "tests/test_leaks_core.py -k 10k",
        "stream registry grew",
    ),
    Case(
        "B watcher not cancelled on exit",
        "src/etcdlock/_core/watch.py",
        "            if owned:\n                self.cancel()",
        "            pass",
        "tests/test_watch.py -k exit_path",
        "server watcher count back to baseline",
    ),
    Case(
        "C unbounded fan-out buffer",
        "src/etcdlock/_core/watch.py",
        "        if len(self._buffer) + len(events) > self.max_buffer:",
        "        if False:",
        "tests/test_watch.py -k slow_consumer",
        "DID NOT RAISE",
    ),
    Case(
        "D orphaned stream tasks",
        "src/etcdlock/_core/stream.py",
        "        finally:\n            await self._drop(call, reader)\n",
        "        finally:\n            pass\n",
        "tests/test_lease.py",
        "client still holds resources after close",
    ),
    Case(
        "E lease not revoked",
        "src/etcdlock/_recipes/session.py",
        "        if self.lease_id:\n            await shielded(self._revoke(), CLEANUP_TIMEOUT)",
        "        pass",
        "tests/test_lock.py -k 'different_names_share or not_reentrant'",
        "leases left on the server",
    ),
    Case(
        "F lock key left behind",
        "src/etcdlock/_recipes/contender.py",
        "            await self._delete_key(CLEANUP_TIMEOUT * 0.8)\n",
        "            pass\n",
        "tests/test_lock.py -k 'shared or reentrant or session'",
        "keys_under",
    ),
    Case(
        "G channel per task",
        "src/etcdlock/_core/connection.py",
        "        ch = self._channels.get(endpoint)\n        if ch is None:",
        "        endpoint_key = endpoint + str(id(asyncio.current_task()))\n"
        "        ch = self._channels.get(endpoint_key)\n        if ch is None:",
        "tests/test_leak_classes.py -k test_g",
        "channels == 1",
        also=(
            ("            self._channels[endpoint] = ch", "            self._channels[endpoint_key] = ch"),
        ),
    ),
    Case(
        "H native memory kept per stream",
        "src/etcdlock/_core/connection.py",
        "        return endpoint, multi(metadata=md)",
        "        call = multi(metadata=md)\n        _KEEP.append(call)\n        return endpoint, call",
        "tests/test_leak_classes.py -k test_h",
        "RSS grew",
        extra="_KEEP: list[Any] = []\n",
    ),
    Case(
        "I callbacks keep locks alive",
        "src/etcdlock/_recipes/contender.py",
        "        self._lost_callbacks.clear()\n",
        "        pass\n",
        "tests/test_leaks_locks.py",
        "in reference cycles",
    ),
    Case(
        "J exception keeps failed acquire alive",
        "src/etcdlock/_recipes/contender.py",
        "        except BaseException as e:\n            queue.end_acquire()\n",
        "        except BaseException as e:\n            queue.end_acquire()\n            _ERRORS.append(e)\n",
        "tests/test_leak_classes.py -k test_j_failed_acquires",
        "of failed acquires still alive",
        extra="_ERRORS: list[BaseException] = []\n",
    ),
    Case(
        "K linger timer not cancelled on close",
        "src/etcdlock/_recipes/queue.py",
        "            if nw.expiry is not None:\n                nw.expiry.cancel()\n                nw.expiry = None\n"
        "            await nw.close()",
        "            await nw.close()",
        "tests/test_leak_classes.py -k test_k",
        "timers still scheduled after close",
    ),
    # The recipes. An observation's generator, left without closing its watcher, still has it cancelled
    # when the loop finalizes the generators (the watcher's own iterator owns it): what is lost is that
    # aclose() ends the watch at once.
    Case(
        "L observation's watcher left to the generators' finalization",
        "src/etcdlock/_recipes/election.py",
        "            finally:\n                watcher.cancel()\n",
        "            finally:\n                pass\n",
        f"{RECIPES} -k observe",
        "aclose() left the observation's watcher",
    ),
    Case(
        "M semaphore keeps an entry per task that entered",
        "src/etcdlock/_recipes/semaphore.py",
        "        if not slots:\n            del self._entered[task]\n",
        "",
        f"{RECIPES} -k semaphore",
        "outlive the churn",
    ),
    Case(
        "N contender's cleanup does not leave the queue",
        "src/etcdlock/_recipes/contender.py",
        "        self._claimed = False\n        self._leave_queue()\n",
        "        self._claimed = False\n",
        RECIPES,
        "client watchers",
    ),
    Case(
        "O default session's slot never given back (a session per acquisition)",
        "src/etcdlock/_recipes/contender.py",
        '                "could not delete key %s (%s); it goes with lease %x", self.key.decode(), e, self.lease\n'
        "            )\n        self.session.unclaim(self.spec.slot)\n",
        '                "could not delete key %s (%s); it goes with lease %x", self.key.decode(), e, self.lease\n'
        "            )\n",
        RECIPES,
        "the client's default sessions:",
    ),
    Case(
        "P expired queue watcher and its name's watch in a cycle",
        "src/etcdlock/_recipes/queue.py",
        "        self.watcher.on_events = self.watcher.on_failed = self.watcher.on_created = None\n",
        "",
        f"{RECIPES} -k campaign",
        "in reference cycles",
    ),
]


def _put_back(case: Case, src: str) -> str:
    assert src.count(case.old) == 1, (case.name, "pattern not found exactly once")
    src = src.replace(case.old, case.new)
    for old, new in case.also:
        assert old in src, (case.name, "pattern not found", old)
        src = src.replace(old, new)
    if case.extra:
        src = src.rstrip("\n") + "\n\n" + case.extra
    return src


def _run(case: Case) -> bool:
    with open(case.path) as f:
        original = f.read()
    with open(case.path, "w") as f:
        f.write(_put_back(case, original))
    try:
        r = subprocess.run(
            f"timeout 600 {sys.executable} -m pytest -q -x -p no:cacheprovider {case.tests}",
            shell=True,
            capture_output=True,
            text=True,
        )
    finally:
        with open(case.path, "w") as f:
            f.write(original)
    lines = r.stdout.splitlines()
    summary = [ln for ln in lines if " passed" in ln or " failed" in ln or " error" in ln][-1:]
    errors = [ln for ln in lines if ln.startswith("E ")]
    shown = [ln for ln in errors if case.expect in ln][:1] or errors[:1]
    caught = r.returncode != 0 and case.expect in r.stdout
    if caught:
        verdict = "FAILS as it should"
    elif r.returncode != 0:
        verdict = f"FAILS, but not with {case.expect!r} (a flake, or the injection broke something else?)"
        shown = errors[:2]
    else:
        verdict = "STILL PASSES (the tests do not catch it)"
    print(f"{case.name}: {verdict}\n    " + "\n    ".join(ln[:240] for ln in shown + summary), flush=True)
    return caught


def main(only: list[str]) -> int:
    # SIGTERM as an exception, so the file being edited is restored (the `finally` above) on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    missed = [case.name for case in CASES if (not only or case.name[0] in only) and not _run(case)]
    if missed:
        print(f"not caught: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
