"""The model's likelihood: cross-entropy, bits per dimension, and the NLL of whole image sets.

A "dimension" is one sub-pixel, so an image of C x H x W has C*H*W of them.
bits/dim = total negative log-likelihood in nats / (N * C * H * W * ln 2),
with no dequantization offset: the model is a discrete distribution over
`levels` values (either output distribution, model/distributions.py), and
these are exact discrete log-likelihoods.  Training's loss, validation,
evaluate and the registered model all go through `nll_nats`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pixelnet.model.distributions import Distribution


def is_conditional(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "conditional", False))


def forward(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    return model(x) if labels is None else model(x, labels)


def nll_nats(distribution: Distribution, out: torch.Tensor, x: torch.Tensor, *, reduction: str = "sum"
             ) -> torch.Tensor:
    """NLL in nats of levels x (B, C, H, W) under a network's output `out` for its `distribution`.

    reduction: "sum" (the NLL of the batch), "mean" over sub-pixels, or "none" (B * H * W * C values,
    pixel-major, each -log p(sub-pixel | everything before it)).
    """
    return distribution.nll(out, x, reduction=reduction)


def mean_nll_nats(distribution: Distribution, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """NLL in nats averaged over every sub-pixel: the training loss."""
    return distribution.nll(out, x, reduction="mean")


def nats_to_bits_per_dim(nats_per_dim: float) -> float:
    """Convert an average per-sub-pixel NLL from nats to bits."""
    return nats_per_dim / math.log(2)


def bits_per_dim(total_nats: float, n_images: int, dims_per_image: int) -> float:
    """Total NLL in nats over `n_images` images -> bits per sub-pixel."""
    return total_nats / (n_images * dims_per_image * math.log(2))


@torch.no_grad()
def total_nll_nats(
    model: nn.Module, images: torch.Tensor, *, batch_size: int, device: torch.device, labels: torch.Tensor | None = None
) -> float:
    """Summed NLL (nats) of uint8 level images (N, C, H, W) under `model` in eval mode (labels (N,) if conditional)."""
    was_training = model.training
    model.eval()
    images = images.to(device)  # once; the sum stays on the device too, so a GPU never waits on the host
    labels = labels.to(device) if labels is not None and is_conditional(model) else None
    total = torch.zeros((), dtype=torch.float64, device=device)  # float64: Python's float sum of the batches, exactly
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        y = labels[start:start + batch_size] if labels is not None else None
        total += nll_nats(model.distribution, forward(model, x, y), x, reduction="sum").double()
    model.train(was_training)
    return float(total)


@torch.no_grad()
def marginal_nll_nats(model: nn.Module, images: torch.Tensor, *, prior: torch.Tensor, batch_size: int,
                      device: torch.device) -> torch.Tensor:
    """Per-image -log p(x) = -log sum_y p(y) p(x | y) in nats (float64, (N,)) under a conditional model in eval mode.

    prior (classes,): p(y), summing to 1; one forward pass per class and batch.
    """
    was_training = model.training
    model.eval()
    log_prior = prior.double().log().to(device)
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        per_class = [nll_nats(model.distribution, model(x, torch.full((len(x),), k, device=device, dtype=torch.long)), x, reduction="none")
                     .view(len(x), -1).double().sum(dim=1) for k in range(len(prior))]  # each (B,): -log p(x | k)
        out.append(-torch.logsumexp(log_prior - torch.stack(per_class, dim=1), dim=1))
    model.train(was_training)
    return torch.cat(out).cpu()


def class_prior(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Class frequencies (n_classes,) of integer labels: the p(y) a conditional model's marginal NLL sums over."""
    counts = torch.bincount(labels.long(), minlength=n_classes).double()
    return counts / counts.sum()
