"""The README's Python examples, run as written against a real etcd.

Each ```python block of README.md runs in a fresh interpreter, as a reader would run it, with
"127.0.0.1:2379" pointed at a fresh etcd of its own. A block with a top-level ``await`` or ``async with``
runs as the body of a coroutine, as ``python -m asyncio`` would run it. A block fails its test when it
raises, hangs past EXAMPLE_TIMEOUT, writes anything to stderr (a log line, an unclosed resource, a
destroyed pending task), or leaves a lease on etcd. An HTML comment ``<!-- not-run: reason -->`` on the
line right before a block skips it: use it only for a block that cannot run on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import etcdlock
from etcdlock import Client
from etcdlock.testing import EtcdCluster

README = Path(__file__).resolve().parent.parent / "README.md"
README_ENDPOINT = "127.0.0.1:2379"
EXAMPLE_TIMEOUT = 60.0  # seconds; the slowest block starts a 3-member cluster and kills its leader
_SKIP_MARK = re.compile(r"<!--\s*not-run:\s*(?P<reason>.+?)\s*-->")

# Runs one example in a fresh interpreter: stdin is the code, argv the file name and first line to report
# in tracebacks (so they point into README.md). Top-level await makes the code object a coroutine's.
_RUNNER = textwrap.dedent(
    """
    import ast, asyncio, inspect, sys
    path, first_line = sys.argv[1], int(sys.argv[2])
    code = compile("\\n" * (first_line - 1) + sys.stdin.read(), path, "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace = {"__name__": "__main__"}
    if code.co_flags & inspect.CO_COROUTINE:
        asyncio.run(eval(code, namespace))
    else:
        exec(code, namespace)
    """
)


@dataclass(frozen=True)
class Example:
    line: int  # README.md's line of the block's first line of code
    section: str  # the "## " heading it is under
    code: str
    skip: str | None  # the reason of a not-run mark

    @property
    def id(self) -> str:
        return f"L{self.line}-" + re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")


def extract_examples(text: str) -> list[Example]:
    """The ```python blocks of a Markdown text, with the heading each is under and its not-run mark."""
    lines = text.splitlines()
    examples = []
    section = ""
    fence: str | None = None  # the opening line of the code block we are in
    start = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("```"):
                fence, start = stripped, i + 1
            elif line.startswith("## "):
                section = line[3:].strip()
            continue
        if stripped != "```":
            continue
        if fence == "```python":
            before = [p.strip() for p in lines[: start - 1] if p.strip()]
            mark = _SKIP_MARK.fullmatch(before[-1]) if before else None
            examples.append(
                Example(
                    line=start + 1,
                    section=section,
                    code="\n".join(lines[start:i]) + "\n",
                    skip=mark.group("reason") if mark else None,
                )
            )
        fence = None
    if fence is not None:
        raise AssertionError(f"README.md: the code block opened on line {start} is never closed")
    return examples


def run_example(code: str, first_line: int, timeout: float = EXAMPLE_TIMEOUT) -> str | None:
    """Run code in a fresh interpreter; None if it ran cleanly, else what went wrong."""
    src = str(Path(etcdlock.__file__).resolve().parent.parent)  # the etcdlock under test, not another one
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    # A session of its own: on a hang the whole group goes, with any etcd the example started.
    proc = subprocess.Popen(
        [sys.executable, "-W", "error::ResourceWarning", "-c", _RUNNER, str(README), str(first_line)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(code, timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGINT first: asyncio.run() cancels the example and Python prints where it was stuck (the
        # README line of the await); then the whole group goes.
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=5.0)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything it started that is still there
        return f"did not finish within {timeout:g}s (it hangs)\nstdout:\n{out}\nstderr:\n{err}"
    if proc.returncode != 0:
        return f"exited with status {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    if err.strip():
        return f"ran, but wrote to stderr:\n{err}"
    return None


async def _leases(endpoints: list[str]) -> list[int]:
    async with Client(endpoints) as client:
        return await client.leases()


EXAMPLES = extract_examples(README.read_text())


def test_readme_has_examples() -> None:
    # Guards the extraction: a changed fence (```py) would otherwise leave nothing to run, silently.
    sections = {e.section for e in EXAMPLES}
    assert len(EXAMPLES) >= 4, EXAMPLES
    assert {"The client core", "Locks", "Testing against real etcd"} <= sections, sections


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_readme_example(example: Example, request: pytest.FixtureRequest) -> None:
    if example.skip is not None:
        pytest.skip(f"README.md line {example.line}: not-run: {example.skip}")
    code = example.code
    endpoints: list[str] = []
    if README_ENDPOINT in code:
        etcd: EtcdCluster = request.getfixturevalue("etcd_fresh")
        endpoints = list(etcd.endpoints)
        code = code.replace(json.dumps(README_ENDPOINT), json.dumps(endpoints[0]))
        assert README_ENDPOINT not in code, "the README's endpoint is written in a way this test cannot point"
    failure = run_example(code, example.line)
    assert failure is None, f"README.md line {example.line} ({example.section}): {failure}"
    if endpoints:
        assert asyncio.run(_leases(endpoints)) == [], "the example left a lease on etcd"


# ---- the runner itself: it must see each way an example can fail ----------------------------------------


def test_extract_examples_reads_sections_marks_and_lines() -> None:
    text = textwrap.dedent(
        """\
        # Title
        ## First
        ```sh
        ## not a heading
        ```
        <!-- not-run: needs a GPU -->

        ```python
        print(1)
        ```
        ## Second
        ```python
        print(2)
        ```
        """
    )
    first, second = extract_examples(text)
    assert (first.section, first.line, first.code, first.skip) == ("First", 9, "print(1)\n", "needs a GPU")
    assert (second.section, second.line, second.code, second.skip) == ("Second", 13, "print(2)\n", None)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
        ("import asyncio\nawait asyncio.sleep(3600)\n", "did not finish within 3s"),
        ("import sys\nprint('careful', file=sys.stderr)\n", "wrote to stderr"),
        ("import asyncio\nasync with asyncio.timeout(0.01):\n    await asyncio.sleep(1)\n", "TimeoutError"),
    ],
    ids=["raises", "hangs", "stderr", "top-level-async-with"],
)
def test_run_example_reports_failures(code: str, expected: str) -> None:
    failure = run_example(code, 1, timeout=3.0)
    assert failure is not None and expected in failure, failure


def test_run_example_runs_top_level_await() -> None:
    assert run_example("import asyncio\nawait asyncio.sleep(0)\nprint('ok')\n", 1) is None
