"""soak and demo without the [soak] extra (rich, matplotlib): plain lines instead of the live view, no
chart but a note saying why, and the same exit statuses (1 still means a leak)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.test_cli import cli_env

# In an interpreter started with this code first, `import rich` and `import matplotlib` fail as they do
# when the extra is not installed: a finder ahead of all others refuses them.
_BLOCK_EXTRAS = """
import sys

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("rich", "matplotlib"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""
CLI_WITHOUT_EXTRAS = [
    sys.executable,
    "-c",
    _BLOCK_EXTRAS + "from etcdlock._cli.main import main; sys.exit(main())",
]
_SHORT_SOAK = ["--keys", "4", "--hold", "0", "--no-tick", "--sample-every", "0.5"]


def run_without_extras(
    *args: str, endpoints: list[str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI_WITHOUT_EXTRAS, *args],
        env=cli_env(endpoints),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_extras_are_really_missing_there() -> None:
    for module in ("rich.live", "matplotlib.pyplot"):
        r = subprocess.run(
            [sys.executable, "-c", _BLOCK_EXTRAS + f"import {module}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert r.returncode == 1 and "ModuleNotFoundError" in r.stderr, r.stderr
    here = subprocess.run(
        [sys.executable, "-c", "import rich.live, matplotlib.pyplot"], timeout=60, check=False
    )
    assert here.returncode == 0, "the extras are not installed here: the tests below would prove nothing"


def test_soak_without_extras_is_flat_with_no_chart(etcd_endpoints: list[str], tmp_path: Path) -> None:
    (tmp_path / "chart.png").write_bytes(b"from an earlier run")
    r = run_without_extras(
        "soak",
        "--endpoints",
        ",".join(etcd_endpoints),
        *_SHORT_SOAK,
        "--duration",
        "6",
        "--out",
        str(tmp_path),
        endpoints=etcd_endpoints,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "VERDICT: flat" in r.stdout
    assert "no chart: cannot import matplotlib" in r.stderr and "pip install 'etcdlock[soak]'" in r.stderr
    assert "chart: none (matplotlib missing" in r.stdout
    assert json.loads((tmp_path / "report.json").read_text())["verdict"]["leak"] is False
    assert not (tmp_path / "chart.png").exists()  # not the earlier run's chart beside this report


def _run_on_a_terminal(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run argv with stdout on a pseudo-terminal (stderr too); its exit status and everything shown."""
    master, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    finally:
        os.close(terminal)
    shown = b""
    deadline = time.monotonic() + timeout
    try:
        while True:  # read all along: a full terminal buffer would stop the process
            left = deadline - time.monotonic()
            assert left > 0, f"still running after {timeout}s; shown so far: {shown!r}"
            if not select.select([master], [], [], left)[0]:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every holder of the terminal's other side has closed it
                break
            if not chunk:
                break
            shown += chunk
        return proc.wait(timeout=10), shown.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)


def test_soak_on_a_terminal_without_rich_prints_plain_lines_and_a_leak_still_exits_1(
    etcd_endpoints: list[str], tmp_path: Path
) -> None:
    # A growth limit no run can stay under forces the verdict "leak".
    argv = [
        *CLI_WITHOUT_EXTRAS,
        "soak",
        "--endpoints",
        ",".join(etcd_endpoints),
        *_SHORT_SOAK,
        "--duration",
        "3",
        "--max-growth-mb",
        "-1000",
        "--out",
        str(tmp_path),
    ]
    status, shown = _run_on_a_terminal(argv, cli_env(), timeout=120)
    assert status == 1, shown
    assert "no live view: cannot import rich" in shown
    assert "elapsed " in shown and "cycles " in shown  # the plain progress lines
    assert "VERDICT: LEAK" in shown and "no chart: cannot import matplotlib" in shown
    assert json.loads((tmp_path / "report.json").read_text())["verdict"]["leak"] is True


def test_demo_without_extras(etcd_endpoints: list[str]) -> None:
    r = run_without_extras("demo", "--endpoints", ",".join(etcd_endpoints), endpoints=etcd_endpoints)
    assert r.returncode == 0, r.stderr
    assert "after close" in r.stdout
