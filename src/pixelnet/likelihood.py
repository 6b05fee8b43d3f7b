"""Cross-entropy and bits per dimension: the metric math, in small pure functions.

A "dimension" is one sub-pixel, so an image of C x H x W has C*H*W of them.
bits/dim = total negative log-likelihood in nats / (N * C * H * W * ln 2),
with no dequantization offset: the model is a discrete distribution over
`levels` values, and these are exact discrete log-likelihoods.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def nll_nats(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Summed NLL in nats. logits (B, levels, C, H, W), x (B, C, H, W) integer levels."""
    return F.cross_entropy(logits.float(), x.long(), reduction="sum")


def mean_nll_nats(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """NLL in nats averaged over every sub-pixel (the training loss)."""
    return F.cross_entropy(logits.float(), x.long(), reduction="mean")


def nats_to_bits_per_dim(nats_per_dim: float) -> float:
    """Convert an average per-sub-pixel NLL from nats to bits."""
    return nats_per_dim / math.log(2)


def bits_per_dim(total_nats: float, n_images: int, dims_per_image: int) -> float:
    """Total NLL in nats over `n_images` images -> bits per sub-pixel."""
    return total_nats / (n_images * dims_per_image * math.log(2))
