"""The package as users get it: a wheel built from this tree, installed in a fresh virtualenv with only its
declared dependencies (no [soak] extra), gives a working `etcdlock` command."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import etcdlock

ROOT = Path(__file__).resolve().parent.parent
_STEP_TIMEOUT = 300  # seconds; pip's own steps take a few each, this only catches a hang


def _run(*argv: str | Path, cwd: Path, env: dict[str, str]) -> str:
    r = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=_STEP_TIMEOUT
    )
    assert r.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH (the tree's src/ would shadow the installed package) and no virtualenv of ours."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def test_wheel_in_a_fresh_venv_runs_without_the_extras(tmp_path: Path) -> None:
    env = _clean_env()
    # The build's inputs only, copied: building in the tree would leave build/ and *.egg-info behind.
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run(*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", tmp_path / "dist", tree, cwd=tmp_path, env=env)
    (wheel,) = (tmp_path / "dist").glob("etcdlock-*.whl")

    # The declared dependencies at the versions this environment has (and theirs), fetched first so that
    # the install itself is offline: it then fails if the wheel needs anything it does not declare.
    pinned = [f"{name}=={importlib.metadata.version(name)}" for name in ("grpcio", "protobuf")]
    deps = tmp_path / "deps"
    _run(*pip, "download", "--quiet", "--only-binary=:all:", "-d", deps, *pinned, cwd=tmp_path, env=env)
    # Without pip of its own (seeding one is the slowest step): this pip installs into it.
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path, env=env)
    python, etcdlock_cmd = venv / "bin" / "python", venv / "bin" / "etcdlock"
    offline = ["--no-index", "--find-links", str(deps)]
    _run(*pip, "--python", python, "install", "--quiet", *offline, wheel, cwd=tmp_path, env=env)

    where = _run(python, "-c", "import etcdlock; print(etcdlock.__file__)", cwd=tmp_path, env=env)
    assert Path(where.strip()).is_relative_to(venv), where
    for extra in ("rich", "matplotlib"):
        r = subprocess.run([python, "-c", f"import {extra}"], env=env, capture_output=True, timeout=60)
        assert r.returncode != 0, f"{extra} is importable in the fresh venv: the test would prove nothing"

    version = _run(etcdlock_cmd, "--version", cwd=tmp_path, env=env)
    assert version == f"etcdlock {etcdlock.__version__}\n"
    # __version__ and the distribution's metadata (pyproject.toml) must not drift apart.
    metadata = _run(
        python, "-c", "import importlib.metadata as m; print(m.version('etcdlock'))", cwd=tmp_path, env=env
    )
    assert version == f"etcdlock {metadata}"

    help_text = _run(etcdlock_cmd, "lock", "--help", cwd=tmp_path, env=env)
    assert help_text.startswith("usage: etcdlock lock [options] NAME [-- CMD [ARGS...]]")
    for option in ("--cacert", "--cert", "--key", "--user", "--password", "ETCD_LOCK_KEY"):
        assert option in help_text
