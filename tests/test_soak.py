"""The soak engine and command against a real etcd: a short accelerated run is judged flat, and a leak
put back on purpose is caught, with the allocation site that grew."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from etcdlock import Client
from etcdlock._diagnostics import soak as soak_mod
from etcdlock._diagnostics.soak import Soak, SoakConfig


def test_soak_command_reports_flat_with_json_and_chart(etcd_endpoints: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "ETCDCTL_ENDPOINTS": ",".join(etcd_endpoints)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "etcdlock._cli.main",
            "soak",
            "--endpoints",
            ",".join(etcd_endpoints),
            "--keys",
            "4",
            "--hold",
            "0",
            "--no-tick",
            "--duration",
            "6",
            "--sample-every",
            "0.5",
            "--no-live",
            "--out",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "VERDICT: flat" in r.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"]["leak"] is False
    assert report["environment"]["etcd"].startswith("3.")
    samples = report["samples"]
    assert len(samples) >= 8 and samples[-1]["cycles"] > 100
    assert all(s["watch_streams"] <= 1 and s["server_watch_streams"] <= 1 for s in samples)
    png = (tmp_path / "chart.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


async def test_a_leak_put_back_on_purpose_is_caught(
    etcd_endpoints: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hoard: list[bytearray] = []
    real_cycle = Soak._cycle

    async def leaky_cycle(self: Soak, name: str) -> None:
        await real_cycle(self, name)
        hoard.append(bytearray(4096))  # the leak: every cycle keeps 4 KB alive

    monkeypatch.setattr(Soak, "_cycle", leaky_cycle)
    config = SoakConfig(keys=4, hold=0, rate=None, duration=6, sample_every=0.5, max_growth_mb=1.0)
    async with Client(etcd_endpoints) as client:
        verdict = await Soak(client, config, metrics_url=None).run()
    assert verdict.leak, f"a {len(hoard) * 4} KB leak went unnoticed: {verdict}"
    assert any("RSS grew" in r for r in verdict.reasons)
    assert any("test_soak.py" in where for where, _, _ in verdict.top_growth_sites), verdict.top_growth_sites
    assert soak_mod.MB == 1024 * 1024
