"""The textbook PixelCNN as a configuration of PixelNet's code, the baseline the benchmarks compare against.

The textbook is ../shared/reference/textbook_pixelcnn.py, outside the repository: `reference()` runs it, and
nothing of it is copied here.  Inside, the same network and loop are PixelNet code, so the benchmarks run
from a clone: 64 channels, 7 residual blocks of 1x1 -> masked 3x3 (type B) -> 1x1 with BatchNorm, a 7x7
type-A input conv, a 256-way softmax head, unconditional (`textbook_config`); every masked conv over its
whole kernel, NCHW (`as_textbook`); Adam at 1e-3, batches of 64 from a fresh randperm each epoch
(`train_textbook`); one forward pass per pixel (`sample_textbook`).  One difference is kept on purpose:
the textbook feeds the network level / (levels - 1), PixelNet [-1, 1] (`scale_input`), at the same cost.
tests/test_textbook.py checks that with the textbook's scaling both start from the same weights, give the
same logits and end an epoch at the same weights.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import time
import types
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from pixelnet.config import load_params
from pixelnet.model import ModelConfig
from pixelnet.model.build import build_model
from pixelnet.model.layers import MaskedConv2d

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference" / "textbook_pixelcnn.py"
BATCH = 64
LR = 1e-3


def textbook_config(*, levels: int = 256, height: int = 28, width: int = 28, channels: int = 64,
                    blocks: int = 7) -> ModelConfig:
    """The textbook's model as a PixelNet ModelConfig (grayscale, unconditional): params.yaml's model section
    with the textbook's keys set."""
    keys = dict(arch="pixelcnn", channels=channels, blocks=blocks, first_kernel=7, kernel=3, norm="batch",
                head="softmax", conditional="false")
    params = load_params(REPO / "params.yaml", [f"model.{k}={v}" for k, v in keys.items()])
    return ModelConfig.for_data(params.model, levels=levels, image_channels=1, height=height, width=width,
                                n_classes=0)


def _full_kernel_forward(self: MaskedConv2d, x: torch.Tensor) -> torch.Tensor:
    """A masked conv over its whole k x k kernel, as the textbook computes it (PixelNet crops the zero rows)."""
    return F.conv2d(x, self.masked_weight(), self.bias, padding=self.padding)


def as_textbook(model: nn.Module) -> nn.Module:
    """`model` (a PixelCNN) computing as the textbook does: full masked kernels and NCHW activations."""
    for m in model.modules():
        if isinstance(m, MaskedConv2d):
            m.forward = types.MethodType(_full_kernel_forward, m)
    model.memory_format = torch.contiguous_format
    return model


def textbook_model(*, seed: int = 0, **config) -> nn.Module:
    """The textbook's network with the initial weights the textbook draws after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return as_textbook(build_model(textbook_config(**config)))


def textbook_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the logits as the head shapes them, (B, levels, C, H, W): the textbook's loss."""
    return F.cross_entropy(logits.float(), x.long())


def train_textbook(model: nn.Module, images: torch.Tensor, *, epochs: int) -> dict:
    """The textbook's loop over uint8 levels (N, 1, H, W); the RNG must be where textbook_model(seed) left it.

    Returns images/s over the whole run (wall clock, as the textbook times itself).
    """
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    t0, seen = time.time(), 0
    for _ in range(epochs):
        perm = torch.randperm(len(images))
        for i in range(0, len(images), BATCH):
            x = images[perm[i:i + BATCH]]
            loss = textbook_loss(model(x), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(x)
    return {"img_per_s": seen / (time.time() - t0)}


@torch.no_grad()
def sample_textbook(model: nn.Module, n: int, *, seed: int = 0) -> torch.Tensor:
    """One full forward pass per pixel, each drawn with torch.multinomial; uint8 levels (n, 1, H, W)."""
    torch.manual_seed(seed)
    model.eval()
    cfg = model.config
    x = torch.zeros(n, 1, cfg.height, cfg.width, dtype=torch.long)
    for i in range(cfg.height):
        for j in range(cfg.width):
            probs = F.softmax(model(x)[:, :, 0, i, j], dim=1)  # (n, levels)
            x[:, 0, i, j] = torch.multinomial(probs, 1)[:, 0]
    return x.to(torch.uint8)


def reference() -> types.ModuleType:
    """The shared reference script as a module (REFERENCE must exist: it sits beside a clone, not inside it)."""
    spec = importlib.util.spec_from_file_location("textbook_pixelcnn", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_reference(data: Path, out: Path, *, channels: int = 64, blocks: int = 7, levels: int = 256) -> dict:
    """One epoch of the reference's own `train` (seed 0, batch 64, Adam at 1e-3) over uint8 images (N, H, W) in
    data (.npy); its weights go to `out`.  Returns its last report line: {"train_s", "img_per_s"}."""
    args = argparse.Namespace(data=str(data), epochs=1, bs=BATCH, lr=LR, hidden=channels, blocks=blocks, seed=0,
                              levels=levels, out=str(out))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        reference().train(args)
    return json.loads(printed.getvalue().strip().splitlines()[-1])
