"""Generation: pixel by pixel, channel by channel, from the model's distributions.

Randomness is drawn up front as one tensor of uniforms per sub-pixel
(`sampling_noise`), and each sub-pixel is chosen by inverse-CDF lookup in its
distribution over levels given everything drawn before it (the output
distribution's `draw`, model/distributions.py, which applies the temperature).
Any sampler that computes the same network outputs therefore produces the
same images from the same seed, which is what lets a faster sampler be
checked image for image against `sample_naive`, the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from pixelnet.config import SampleConfig
from pixelnet.errors import PixelNetError
from pixelnet.model import ModelConfig

RowWrapper = Callable[[Iterable[int]], Iterable[int]]  # wraps the range of rows drawn, e.g. in a progress bar


def sampling_noise(n: int, channels: int, height: int, width: int, *, seed: int) -> torch.Tensor:
    """Uniforms in [0, 1), float64, shaped (n, C, H, W): one per sub-pixel to draw."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, height, width, generator=gen, dtype=torch.float64)


def sample_labels(cfg: SampleConfig, mcfg: ModelConfig) -> tuple[torch.Tensor | None, int | None]:
    """Class labels (n,) to draw for a conditional model, and the number of classes that take turns (None if none).

    With sample.label set, every image is of that class.  Otherwise the classes
    take turns, image k of class k mod classes: every class is drawn equally
    often, any `classes` consecutive images hold one of each, and the grid's
    columns each hold one class.
    """
    if not mcfg.conditional:
        if cfg.label is not None:
            raise PixelNetError(f"sample.label={cfg.label} needs a conditional model (model.conditional: true); "
                                "this model is unconditional: drop the label")
        return None, None
    if cfg.label is not None:
        if cfg.label >= mcfg.n_classes:
            raise PixelNetError(f"sample.label={cfg.label} is not a class of this model: use 0 .. {mcfg.n_classes - 1}")
        return torch.full((cfg.n,), cfg.label, dtype=torch.long), None
    return torch.arange(cfg.n) % mcfg.n_classes, mcfg.n_classes


@torch.no_grad()
def sample_naive(
    model: nn.Module,
    noise: torch.Tensor,
    *,
    temperature: float = 1.0,
    given: torch.Tensor | None = None,
    start_row: int = 0,
    labels: torch.Tensor | None = None,
    progress: RowWrapper | None = None,
) -> torch.Tensor:
    """One full forward pass per sub-pixel: the simple, slow reference sampler.

    noise: (N, C, H, W) uniforms from `sampling_noise`.  `given` (N, C, H, W)
    levels, with `start_row`, keeps rows above `start_row` fixed (completion).
    `labels` (N,) are the classes of a conditional model.
    Returns uint8 levels (N, C, H, W).  The model must be in eval mode.
    """
    n, c, h, w = noise.shape
    device = next(model.parameters()).device
    dist = model.distribution
    x = torch.zeros(n, c, h, w, dtype=torch.long, device=device)
    labels = labels.to(device) if labels is not None else None
    noise = noise.to(device)  # once, not a copy a sub-pixel
    if given is not None:
        x[:, :, :start_row] = given[:, :, :start_row].to(device)
    rows = range(start_row, h)
    for i in progress(rows) if progress else rows:
        for j in range(w):
            for ch in range(c):
                params = dist.at(model(x) if labels is None else model(x, labels), i, j, ch)
                x[:, ch, i, j] = dist.draw(params, x[:, :, i, j], ch, noise[:, ch, i, j], temperature)
    return x.to(torch.uint8).cpu()
