"""The CIFAR-10 preset: its params are the paper's, and `dvc exp run` with it runs the whole pipeline on a tiny
CIFAR-10 fixture in torchvision's layout.  Scaled down for the fixture: the network (to CPU size), the samples
drawn, the validation share (2% of 100 images is none a class) and the image counts Great Expectations expects."""

from __future__ import annotations

import json
import math
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from pipeline.repro_check import make_copy, pipeline_env
from pixelnet.config import load_params
from pixelnet.errors import PixelNetError
from pixelnet.preset import preset_overrides
from tests.conftest import REPO

PRESET = REPO / "pipeline" / "presets" / "cifar10.yaml"
# What the test changes from the preset: the network's size (the paper's takes days on GPUs), and how many images
# the later stages draw.
CPU_SIZE = ["model.channels=8", "model.resnet_layers=1", "train.epochs=1", "sample.n=8", "evaluate.grid_n=8",
            "complete.images=2", "complete.per_image=2", "data.val_fraction=0.1"]


def write_cifar_fixture(directory, *, per_batch: int = 20, seed: int = 0) -> None:
    """data_batch_1..5 and test_batch as CIFAR-10's python pickles: (N, 3072) uint8 planes R, G, B, and labels."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [k % 10 for k in range(per_batch)]  # balanced, as CIFAR-10 is
        base = rng.integers(0, 256, (per_batch, 3, 1, 1))  # a colour an image, plus noise: not constant planes
        images = np.clip(base + rng.integers(-40, 41, (per_batch, 3, 32, 32)), 0, 255).astype(np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": images.reshape(per_batch, 3072)}
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_preset_is_the_papers_model_and_schedule():
    params = load_params(REPO / "params.yaml", preset_overrides(PRESET))
    m, t, d = params.model, params.train, params.data
    assert (d.dataset, d.size, d.levels) == ("cifar10", 32, 256)
    assert (m.arch, m.channels, m.resnet_layers, m.resolutions, m.dropout) == ("pixelcnnpp", 160, 5, 3, 0.5)
    assert (m.head, m.mixtures, m.norm, m.conditional) == ("logistic_mixture", 10, "weight", False)
    assert (m.activation, m.init, m.attention) == ("concat_elu", "data", False)
    assert (t.batch_size, t.lr, t.lr_schedule, t.lr_decay, t.warmup_fraction, t.ema_decay) == (
        96, 0.001, "exponential", 0.999995, 0.0, 0.9995)
    assert (t.optimizer, t.beta1, t.beta2, t.weight_decay, t.shift) == ("adam", 0.95, 0.9995, 0.0, 0)


def test_preset_command_prints_dvc_options_and_refuses_a_bad_preset(tmp_path, run_cli):
    result = run_cli("preset", PRESET, "--params", REPO / "params.yaml")
    assert result.code == 0, result.err
    words = result.out.split()
    assert words[0::2] == ["-S"] * (len(words) // 2)
    assert load_params(REPO / "params.yaml", words[1::2]) == load_params(REPO / "params.yaml", preset_overrides(PRESET))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  arch: pixelcnnpp\n  filters: 160\n")
    result = run_cli("preset", bad, "--params", REPO / "params.yaml")
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err.startswith(f"error: preset {bad}: unknown parameter model.filters"), result.err  # not params.yaml
    bad.write_text("train:\n  lr: 2.0\n")
    result = run_cli("preset", bad, "--params", REPO / "params.yaml")
    assert result.code == 2 and result.err.startswith(f"error: preset {bad}: train.lr"), result.err
    bad.write_text("model:\n  arch: [pixelcnnpp\n")
    result = run_cli("preset", bad, "--params", REPO / "params.yaml")
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err.startswith(f"error: preset {bad} is not valid YAML"), result.err
    bad.write_text("data:\n  folder: my images\n")
    with pytest.raises(PixelNetError, match="one shell word"):
        preset_overrides(bad)


def test_dvc_exp_run_with_the_preset_runs_every_stage_on_a_cifar10_fixture(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    make_copy(repo, [])
    write_cifar_fixture(repo / "data" / "external" / "cifar-10-batches-py")
    suite = repo / "pipeline" / "expectations.yaml"  # CIFAR-10's 60,000 images there; the fixture's 120 here
    text = suite.read_text()
    assert "cifar10:        {images: 60000, test_images: 10000," in text
    suite.write_text(text.replace("cifar10:        {images: 60000, test_images: 10000,",
                                  "cifar10:        {images: 120, test_images: 20,"))
    env = pipeline_env(repo)

    def run(*cmd: str) -> str:
        done = subprocess.run(cmd, cwd=repo, env=env, text=True, capture_output=True, timeout=900)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{(done.stdout + done.stderr)[-3000:]}"
        return done.stdout + done.stderr

    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    run("git", "init", "-q")
    run("git", "add", "-A")
    run(*git, "commit", "-q", "-m", "params")
    words = run(sys.executable, "-m", "pixelnet", "preset", "pipeline/presets/cifar10.yaml").split()
    out = run("dvc", "exp", "run", *words, *[w for o in CPU_SIZE for w in ("-S", o)])
    assert set(re.findall(r"Running stage '([\w-]+)'", out)) == {
        "download", "preprocess", "validate", "train", "sample", "complete", "evaluate"}

    import torch

    from pixelnet.checkpoint import read_checkpoint

    config = read_checkpoint(repo / "models" / "model.pt")["config"]
    assert (config["arch"], config["head"], config["image_channels"], config["height"], config["levels"]) == (
        "pixelcnnpp", "logistic_mixture", 3, 32, 256)
    assert not config["conditional"] and config["dropout"] == 0.5
    samples = np.load(repo / "reports" / "sample" / "samples.npy")
    assert samples.shape == (8, 3, 32, 32) and samples.dtype == np.uint8
    metrics = json.loads((repo / "reports" / "evaluate" / "metrics.json").read_text())
    assert math.isfinite(metrics["test_bits_per_dim"]) and metrics["test_bits_per_dim"] > 0  # one step: near 8, uniform
    steps = (repo / "reports" / "train" / "steps.csv").read_text().splitlines()
    assert len(steps) == 1 + 1  # 90 training images, the preset's batches of 96: one (short) step
    assert torch.load(repo / "models" / "model.pt", weights_only=True)["config"]["channels"] == 8
