"""BatchNorm in eval mode folded into the convolution before it, for the incremental samplers.

Eval-mode BatchNorm is a per-channel affine map, so conv-then-norm is one conv
with scaled weights and a shifted bias.  Folding is done in float64, so the
folded layer agrees with the two it replaces to float32 rounding.
"""

from __future__ import annotations

import torch
from torch import nn


def fold_norm(weight: torch.Tensor, bias: torch.Tensor | None, norm: nn.Module | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of a conv (Cout, ...) followed by `norm` (eval BatchNorm2d, Identity or None), in float64."""
    w = weight.double()
    b = bias.double() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    if isinstance(norm, nn.BatchNorm2d):
        scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)  # (Cout,)
        w = w * scale.view(-1, *([1] * (w.dim() - 1)))
        b = (b - norm.running_mean.double()) * scale + norm.bias.double()
    elif norm is not None and not isinstance(norm, nn.Identity):
        raise ValueError(f"cannot fold {type(norm).__name__} into a conv for incremental sampling")
    return w, b
