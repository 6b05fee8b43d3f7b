"""Every benchmark script runs end to end at a tiny size, as a user runs it, and prints its tables.

The scripts run as subprocesses, two at a time (one thread each), on tiny fixtures written here: preprocessed
8x8 images, random-weight checkpoints, a finished run's files for readme_figures.py.  The page's parts need
Debian's Chromium: without it those parts are left out, saying why.  speedrun.py and bench_gpu.py have files of
their own (test_speedrun.py, test_bench_gpu.py); sampler_hashes.py's hashes differ between CPU classes, so it
is only run here, its hashes compared by hand before and after a refactor.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from devtools import browser
from devtools.textbook import REFERENCE
from pixelnet.checkpoint import save_checkpoint
from pixelnet.config import load_params
from pixelnet.stages.download import download
from pixelnet.stages.preprocess import preprocess
from tests.conftest import REPO, random_model, write_image_folder, write_params

BROWSER = browser.missing()  # None where Chromium runs
OWN_FILES = {"speedrun.py", "bench_gpu.py"}
TINY_PP = "data.size=6 data.levels=4 model.channels=4 model.resolutions=1"


def write_run(root: Path) -> dict[str, list[str]]:
    """Tiny fixtures in `root`; each script's arguments."""
    params = write_params(root / "params.yaml", "data: {dataset: folder, size: 8, levels: 4, val_fraction: 0.25, "
                                                "test_fraction: 0.25}")
    cfg = load_params(params, [f"data.folder={write_image_folder(root / 'images', n_per_class=16)}"]).data
    download(cfg, out_dir=root / "raw", cache_dir=root / "cache")
    preprocess(cfg, raw_dir=root / "raw", out_dir=root / "data")
    facts = dict(levels=4, height=8, width=8, conditional=True, n_classes=2, channels=8, blocks=1)
    for name, head in (("mixture", {"head": "logistic_mixture", "mixtures": 2}), ("softmax", {})):
        model = random_model(**facts, **head)
        save_checkpoint(model, model.config, root / f"{name}.pt")
    run = root / "run"  # what readme_figures.py reads after `dvc repro`, where it runs
    (run / "models").mkdir(parents=True)
    (run / "reports" / "evaluate").mkdir(parents=True)
    Image.new("RGB", (900, 300), "white").save(run / "reports" / "evaluate" / "samples_vs_real.png")
    (run / "models" / "model.pt").write_bytes((root / "softmax.pt").read_bytes())
    return {
        "bench_training.py": ["--images", "64", "--rounds", "1", "--size", "8", "--rows", "reference,core"],
        "bench_training.py --profile": ["--model", "params", "--images", "64", "--size", "8",
                                        "--set", "model.channels=8", "--set", "model.resolutions=1", "--profile", "bf16"],
        "bench_sampling.py": ["--config", TINY_PP, "--sizes", "1,3", "--naive-max-n", "1", "--repeats", "1"]
                             + (["--page", "2"] if BROWSER is None else []),
        "model_report.py": ["--data", str(root / "data"), str(root / "mixture.pt"), str(root / "softmax.pt"),
                            "--temperatures", "0.8", "--n", "8"],
        "readme_figures.py": ["--out", "out"],
        "sampler_hashes.py": [],
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("benchmarks")
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}

    def run(item: tuple[str, list[str]]) -> subprocess.CompletedProcess:
        script = REPO / "benchmarks" / item[0].split()[0]
        return subprocess.run([sys.executable, script, *item[1]], env=env, capture_output=True, text=True,
                              timeout=300, cwd=root / "run" if item[0] == "readme_figures.py" else REPO)

    commands = write_run(root)
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(commands, pool.map(run, commands.items())))


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_every_benchmark_script_is_run_by_a_test(runs):
    scripts = {p.name for p in (REPO / "benchmarks").glob("*.py")}
    assert scripts == {name.split()[0] for name in runs} | OWN_FILES


def test_bench_training_against_the_textbook(runs):
    out = ok(runs["bench_training.py"])
    for row in ["textbook", "core"] + (["reference"] if REFERENCE.is_file() else []):
        assert f"| {row} | " in out, out
    assert "| x textbook |" in out and "GFLOP an image" in out and "avx2" in out  # the ratios, FLOPs, the machine


def test_bench_training_profiles_a_row(runs):
    out = ok(runs["bench_training.py --profile"])
    assert "params bf16:" in out and "| convolutions (forward and backward) |" in out, out


def test_bench_sampling_naive_fast_forward_and_the_page(runs):
    out = ok(runs["bench_sampling.py"])
    assert "| 1 | " in out and " | yes |" in out and "| 3 | skipped |" in out, out  # naive = fast at n = 1
    if BROWSER is None:
        assert "| median of rounds 1-1 |" in out, out
    else:
        pytest.skip(f"the page's table was left out: {BROWSER}")


def test_model_report_tables(runs):
    out = ok(runs["model_report.py"])
    assert out.count(".pt | ") == 2 and "background (0)" in out, out
    assert "| components and scales (PixelNet's) | 0.8 |" in out and "has head softmax" in out, out


def test_readme_figures_from_a_finished_run(runs, tmp_path_factory):
    out = ok(runs["readme_figures.py"])
    assert "out/samples_vs_real.png: 640x213" in out, out
    if BROWSER is None:
        assert "out/serve.png: 640x" in out, out
    else:
        assert f"no out/serve.png: {BROWSER}" in out, out


def test_sampler_hashes_prints_every_case_and_the_whole(runs):
    lines = ok(runs["sampler_hashes.py"]).splitlines()
    assert len(lines) == 1 + 3 * 2 * 2 * 2 + 1 and lines[-1].startswith("all: "), lines  # arch x head x C x cond
