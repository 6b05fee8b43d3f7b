"""The textbook PixelCNN as a configuration of PixelNet's own code: the baseline every benchmark compares against.

The project's speed and quality are measured against a textbook PixelCNN, the
way tutorials write it (../shared/reference/textbook_pixelcnn.py, which lives
outside this repository).  This module is that baseline inside it, so the
benchmarks run from a clone:

- the model (`textbook_config`): 64 channels, 7 residual blocks of
  1x1 -> masked 3x3 (type B) -> 1x1 with BatchNorm, a 7x7 type-A input conv, a
  two-layer 1x1 head with a 256-way softmax, unconditional;
- its execution (`as_textbook`): every masked conv over its whole k x k
  kernel, zero rows included, NCHW activations, cross-entropy on the logits
  as the head shapes them;
- its training loop (`train_textbook`): Adam at a constant 1e-3, no warmup, no
  EMA, batches of 64 from a fresh `torch.randperm` each epoch, the last
  partial batch included;
- its sampler (`sample_textbook`): one full forward pass per pixel, each
  drawn with `torch.multinomial`.

One difference is kept on purpose: the textbook feeds the network
level / (levels - 1), in [0, 1]; PixelNet's `scale_input` gives [-1, 1].
It costs the same arithmetic.  tests/test_textbook.py checks, against the
shared reference when it sits beside the clone, that with its scaling the two
are the same network with the same initial weights, and that one epoch of
either loop ends at the same weights.
"""

from __future__ import annotations

import math
import time
import types
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from pixelnet.model import ModelConfig
from pixelnet.model.build import build_model
from pixelnet.model.layers import MaskedConv2d

BATCH = 64
LR = 1e-3


def textbook_config(*, levels: int = 256, height: int = 28, width: int = 28, channels: int = 64,
                    blocks: int = 7) -> ModelConfig:
    """The textbook's model as a PixelNet ModelConfig (grayscale, unconditional)."""
    return ModelConfig(arch="pixelcnn", channels=channels, blocks=blocks, first_kernel=7, kernel=3, norm="batch",
                       head="softmax", conditional=False, levels=levels, image_channels=1, height=height, width=width, n_classes=0)


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


def train_textbook(model: nn.Module, images: torch.Tensor, *, epochs: int, batch_size: int = BATCH, lr: float = LR,
                   on_epoch: Callable[[int, float], None] | None = None) -> dict:
    """The textbook's loop over uint8 levels (N, 1, H, W); the RNG must be where textbook_model(seed) left it.

    Returns images/s over the whole run (wall clock, as the textbook times itself).
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    t0, seen = time.time(), 0
    for epoch in range(epochs):
        perm = torch.randperm(len(images))
        for i in range(0, len(images), batch_size):
            x = images[perm[i:i + batch_size]]
            loss = textbook_loss(model(x), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(x)
        if on_epoch is not None:
            on_epoch(epoch, time.time() - t0)
    return {"img_per_s": seen / (time.time() - t0), "seconds": time.time() - t0}


@torch.no_grad()
def bits_per_dim_textbook(model: nn.Module, images: torch.Tensor, *, batch_size: int = 256) -> float:
    """Test NLL in bits/dim of uint8 levels (N, 1, H, W), in eval mode."""
    model.eval()
    total = sum(float(F.cross_entropy(model(x), x.long(), reduction="sum"))
                for x in images.split(batch_size))
    return total / (images.numel() * math.log(2))


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
