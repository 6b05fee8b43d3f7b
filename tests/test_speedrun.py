"""benchmarks/speedrun.py runs end to end at a tiny size: a config in its own process, its row and its tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "speedrun.py"
TINY = ("model.channels=8 model.resolutions=1 model.attention=false model.mixtures=2 train.epochs=1 "
        "train.batch_size=64")  # attention at full resolution (28 x 28) would be most of the time


def test_a_tiny_speedrun_writes_its_rows_and_tables(tmp_path):
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "rows.jsonl"
    done = subprocess.run([sys.executable, SCRIPT, "--config", f"tiny=baseline-2026-12:{TINY}",
                           "--config", f"tiny-muon=baseline-2026-12:{TINY} train.optimizer=muon", "--jobs", "2",
                           "--work", tmp_path / "work", "--out", out, "--curves", "--limit", "256"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["name"] for r in rows] == ["tiny", "tiny-muon"] and not any("error" in r for r in rows)
    for r in rows:
        assert r["epochs"] == 1 and r["images"] == 256 and r["n_train"] == 256
        assert r["tflop"] == pytest.approx(r["images"] * r["gflop_per_image"] / 1e3)
        assert 0 < r["test_bpd"] < 8 and len(r["curve"]) == 1 and "test_bpd" in r["curve"][0]
    assert "| tiny | 0 |" in done.stdout and "| tiny-muon | 0 | 1 |" in done.stdout  # the table and the curves
    again = subprocess.run([sys.executable, SCRIPT, "--table", out], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "| tiny-muon | 0 |" in again.stdout


def test_a_config_must_be_named(tmp_path):
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, SCRIPT, "--config", "train.lr=0.004", "--work", tmp_path],
                          env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "write NAME=overrides" in done.stderr and "Traceback" not in done.stderr
