"""Fast exact sampling from an architecture's incremental form, and image completion (docs/sampling.md).

`sample_fast` takes `sample_naive`'s arguments and returns its images: it draws every sub-pixel with the
distribution's same `draw` from the same noise, from parameters equal to the forward pass's up to float rounding,
which the model's incremental form computes one position and colour group at a time.  Every architecture has a form
(`IMPLEMENTATIONS`: tests/test_conformance.py checks), so no stage needs a fallback.  `complete` keeps the top rows
of real images and samples the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from pixelnet.model.gated import GatedPixelCNN
from pixelnet.model.pixelcnn import PixelCNN
from pixelnet.model.pixelcnnpp import PixelCNNPP
from pixelnet.sampling.gated import GatedIncremental
from pixelnet.sampling.naive import RowWrapper, sampling_noise
from pixelnet.sampling.pixelcnn import PixelCNNIncremental
from pixelnet.sampling.pixelcnnpp import PixelCNNPPIncremental


class Incremental(Protocol):
    """A model evaluated one sub-pixel at a time, in raster then channel order, batch size fixed."""

    def prefill(self, x: torch.Tensor) -> None:
        """Take the given top rows x (N, C, R, W) of levels, R >= 0, before the first step."""

    def begin_row(self, i: int) -> None:
        """Called before the first sub-pixel of row i; rows < i are final."""

    def output(self, i: int, j: int, g: int) -> torch.Tensor:
        """The head's outputs (N, P / groups) of mask group g at (i, j), given everything written before it.

        A softmax's groups are the image channels: group g's output is channel g's logits.  A
        logistic mixture has one group, the whole pixel's parameters, asked for once per pixel.
        The result may be a view that the next call overwrites.
        """

    def write(self, i: int, j: int, ch: int, value: torch.Tensor) -> None:
        """Record the level (N,) chosen for sub-pixel (i, j, ch)."""


# Model class -> its incremental form, built as Form(model, batch_size, labels).
IMPLEMENTATIONS: dict[type[nn.Module], Callable[[nn.Module, int, torch.Tensor | None], Incremental]] = {
    PixelCNN: PixelCNNIncremental,
    GatedPixelCNN: GatedIncremental,
    PixelCNNPP: PixelCNNPPIncremental,
}


@torch.no_grad()  # the forms keep weights computed once (weight normalization, masks, folded norms)
def incremental(model: nn.Module, n: int, labels: torch.Tensor | None = None) -> Incremental:
    """The incremental form of `model` for batches of n images (with class labels (n,) if conditional)."""
    form = IMPLEMENTATIONS.get(type(model))
    if form is None:
        raise ValueError(f"no fast sampler for {type(model).__name__}; use the naive method")
    if model.training:  # BatchNorm folds its running statistics and dropout is off only in eval mode
        raise ValueError("put the model in eval mode (model.eval()) before sampling")
    if model.config.conditional and labels is None:
        raise ValueError("a conditional model needs labels (N,) to sample")
    return form(model, n, labels)


@torch.no_grad()
def sample_fast(
    model: nn.Module,
    noise: torch.Tensor,
    *,
    temperature: float = 1.0,
    given: torch.Tensor | None = None,
    start_row: int = 0,
    progress: RowWrapper | None = None,
    labels: torch.Tensor | None = None,
    on_row: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """The images `sample_naive` draws from the same arguments, computed with per-layer caches.

    noise: (N, C, H, W) uniforms from `sampling_noise`.  `given` (N, C, H, W)
    levels, with `start_row`, keeps rows above `start_row` fixed (completion).
    `labels` (N,) are the classes of a conditional model.  `on_row(i, row)` is
    called as each row i is finished, with its levels (N, C, W) (the page streams
    them); an exception it raises stops the sampling.
    Returns uint8 levels (N, C, H, W).  The model must be in eval mode.
    """
    n, c, h, w = noise.shape
    device = next(model.parameters()).device
    form = incremental(model, n, labels)
    dist = model.distribution
    x = torch.zeros(n, c, h, w, dtype=torch.long, device=device)
    if given is not None:
        x[:, :, :start_row] = given[:, :, :start_row].to(device)
    form.prefill(x[:, :, :start_row])
    noise = noise.to(device)
    rows = range(start_row, h)
    for i in progress(rows) if progress else rows:
        form.begin_row(i)
        for j in range(w):
            for ch in range(c):
                if ch < dist.groups:  # a whole-pixel distribution's parameters are computed once per pixel
                    params = form.output(i, j, ch)
                value = dist.draw(params, x[:, :, i, j], ch, noise[:, ch, i, j], temperature)
                x[:, ch, i, j] = value
                form.write(i, j, ch, value)
        if on_row is not None:
            on_row(i, x[:, :, i].to(torch.uint8).cpu())
    return x.to(torch.uint8).cpu()


def complete(
    model: nn.Module,
    images: torch.Tensor,
    *,
    rows: int,
    completions: int,
    seed: int,
    temperature: float = 1.0,
    progress: RowWrapper | None = None,
    labels: torch.Tensor | None = None,
    on_row: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Keep the top `rows` rows of each image (N, C, H, W) and sample the rest, `completions` times.

    `labels` (N,) are the images' classes, for a conditional model.  Returns
    uint8 levels (N, completions, C, H, W); every completion's top rows equal the image's.
    """
    n, c, h, w = images.shape
    if not 0 <= rows <= h:
        raise ValueError(f"rows must be in [0, {h}], got {rows}")
    given = images.repeat_interleave(completions, dim=0)  # (N * completions, C, H, W), image-major
    if labels is not None:
        labels = labels.repeat_interleave(completions, dim=0)
    noise = sampling_noise(n * completions, c, h, w, seed=seed)
    out = sample_fast(model, noise, temperature=temperature, given=given, start_row=rows, progress=progress,
                      labels=labels, on_row=on_row)
    return out.view(n, completions, c, h, w)
