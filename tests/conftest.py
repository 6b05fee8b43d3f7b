"""Shared fixtures: tiny image folders, tiny configs, and an in-process CLI runner."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run `pixelnet ARGS...` in-process through `pixelnet.cli.main`; returns code, stdout, stderr."""
    from pixelnet.cli import main

    def run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["pixelnet", *map(str, args)])
        monkeypatch.delenv("PIXELNET_DEBUG", raising=False)
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def write_image_folder(root: Path, *, n_per_class: int = 8, classes=("a", "b"), size=(8, 8), mode="L", seed=0) -> Path:
    """A folder of PNGs, one subfolder per class; class k is brighter in its top half."""
    rng = np.random.default_rng(seed)
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
            arr[: size[1] // 2] //= (k + 1)
            Image.fromarray(arr, mode=mode).save(root / cls / f"img{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """16 grayscale 8x8 PNGs in two class folders."""
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def tiny_params(tmp_path) -> Path:
    """A params.yaml for tiny, fast runs."""
    path = tmp_path / "params.yaml"
    path.write_text(
        "data: {dataset: folder, size: 8, levels: 4, val_fraction: 0.25, test_fraction: 0.25}\n"
        "model: {channels: 8, blocks: 1, first_kernel: 3, kernel: 3}\n"
        "train: {epochs: 1, batch_size: 4, lr: 0.01, seed: 0, device: cpu}\n"
        "sample: {n: 4, temperature: 1.0, seed: 0}\n"
        "evaluate: {batch_size: 8, grid_n: 8}\n"
    )
    return path


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine contended threads cost 5-10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
