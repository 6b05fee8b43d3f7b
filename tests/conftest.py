"""Shared fixtures: tiny image folders, tiny configs, and an in-process CLI runner."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
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


def write_params(path: Path, changes: str = "") -> Path:
    """The repository's params.yaml with `changes` (YAML: {section: {key: value}}) applied, written to path.

    params.yaml must set every key, so tests start from the real file and change only what they test.
    """
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in (yaml.safe_load(changes) or {}).items():
        unknown = set(values) - set(params[section])
        assert not unknown, f"not params.yaml keys: {section}.{unknown}"
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def tiny_params(tmp_path) -> Path:
    """A params.yaml for tiny, fast runs."""
    return write_params(
        tmp_path / "params.yaml",
        "data: {dataset: folder, size: 8, levels: 4, val_fraction: 0.25, test_fraction: 0.25}\n"
        "model: {arch: pixelcnn, channels: 8, blocks: 1, first_kernel: 3, kernel: 3}\n"
        "train: {epochs: 1, batch_size: 4, lr: 0.01, seed: 0, device: cpu}\n"
        "sample: {n: 4, temperature: 1.0, seed: 0}\n"
        "evaluate: {batch_size: 8, grid_n: 8}\n",
    )


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine contended threads cost 5-10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def model_config(**overrides):
    """A small ModelConfig (params and data facts) for model-level tests; overrides replace any field.

    Model keys that the chosen architecture and head do not read keep config.UNREAD's values (pixelnet.config
    refuses them changed), so one set of keys serves all three architectures.
    """
    from pixelnet.config import UNREAD, applies
    from pixelnet.model import ModelConfig

    base = {"arch": "pixelcnn", "channels": 12, "blocks": 2, "first_kernel": 5, "kernel": 3, "norm": "batch",
            "head": "softmax", "conditional": False, "levels": 4, "image_channels": 1, "height": 5, "width": 5,
            "n_classes": 0}
    config = base | overrides
    return ModelConfig.from_mapping(UNREAD | {k: v for k, v in config.items()
                                              if applies(k, arch=config["arch"], head=config["head"])})


def random_model(*, sharpen: float = 1.0, **overrides) -> torch.nn.Module:
    """A seeded random-weight model of model_config(**overrides) in eval mode, with trained-looking BatchNorm.

    sharpen > 1 scales the last head layer: random init gives near-uniform logits, and sharper ones make every
    logit matter to a sampler comparison.
    """
    from pixelnet.model.build import build_model

    torch.manual_seed(0)
    model = build_model(model_config(**overrides))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, as after training
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    with torch.no_grad():
        model.head.out.weight.mul_(sharpen)
    return model.eval()
