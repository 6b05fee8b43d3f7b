"""benchmarks/bench_gpu.py --device cpu --smoke: every part runs at a tiny size and prints its table, and no
process it starts imports a package the GPU machine lacks (mlflow, dvc, great-expectations, mlxtend)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pixelnet.config import load_params
from pixelnet.stages.download import download
from pixelnet.stages.preprocess import preprocess
from tests.conftest import REPO, write_image_folder, write_params

TABLES = {  # each part's table header (its first columns)
    "pipeline": "| stage | seconds | result |",
    "nccl": "| processes | backend | seconds | result |",
    "throughput": "| precision | compile | deterministic | batch | images/s | ms/step | TFLOP/s |",
    "sampling": "| sampler | rows drawn | seconds |",
    "quality": "| precision | epoch | steps | seconds | train bits/dim | val bits/dim |",
    "utilization": "| workload | steps | busy | host syncs |",
}
NOT_ON_THE_GPU_MACHINE = {"mlflow", "dvc", "great_expectations", "mlxtend"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """Preprocessed 8x8 images at 256 levels, two classes: 40 training images."""
    root = tmp_path_factory.mktemp("bench-gpu")
    params = write_params(root / "params.yaml", "data: {dataset: folder, size: 8, levels: 256, val_fraction: 0.25, "
                                                "test_fraction: 0.25}")
    cfg = load_params(params, [f"data.folder={write_image_folder(root / 'images', n_per_class=40)}"]).data
    download(cfg, out_dir=root / "raw", cache_dir=root / "cache")
    preprocess(cfg, raw_dir=root / "raw", out_dir=root / "data")
    return root / "data"


def top_level_packages(recorded: Path) -> set[str]:
    """The packages from site-packages that any recorded process loaded (tests/module_recorder)."""
    files = [f for log in recorded.glob("*.json") for f in json.loads(log.read_text())["files"]]
    return {f.split("site-packages/", 1)[1].split("/")[0].removesuffix(".py") for f in files if "site-packages/" in f}


def test_the_smoke_run_prints_every_table_and_imports_nothing_the_gpu_machine_lacks(digits, tmp_path):
    recorded = tmp_path / "modules"
    recorded.mkdir()
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests" / "module_recorder")]),
                        "PIXELNET_MODULE_LOG": str(recorded), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, REPO / "benchmarks" / "bench_gpu.py", "--device", "cpu", "--smoke",
                           "--data", digits, "--out", tmp_path / "out"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (tmp_path / "out" / "bench_gpu.log").read_text()
    for part, table in TABLES.items():
        assert f"[{part}: ok;" in log, log
        assert table in log and table in done.stdout, part
    assert "FAILED" not in log and "killed at its limit" not in log
    argvs = [" ".join(json.loads(f.read_text())["argv"]) for f in recorded.glob("*.json")]
    assert sum("--part" in a for a in argvs) == len(TABLES)  # every part's process was recorded ...
    assert any("stages/train.py" in a for a in argvs) and any("stages/sample.py" in a for a in argvs)
    assert not top_level_packages(recorded) & NOT_ON_THE_GPU_MACHINE  # ... and none loaded those
