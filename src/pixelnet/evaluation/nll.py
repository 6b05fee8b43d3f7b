"""Held-out NLL as evaluate reports it (test_bits_per_dim and friends), for any model and held-out split."""

from __future__ import annotations

import torch

from pixelnet.model.likelihood import bits_per_dim, is_conditional, marginal_nll_nats, total_nll_nats


def heldout_nll(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int, device: torch.device,
                labels: torch.Tensor | None = None, prior: torch.Tensor | None = None) -> dict[str, float]:
    """Exact discrete NLL in bits/dim and nats/image.

    A conditional model given `labels` also reports `test_bits_per_dim_given_label`, -log p(x | y); with `prior`
    (p(y)), `test_bits_per_dim` is then -log p(x) = -log sum_y p(y) p(x | y), comparable with an unconditional
    model's (without a prior it stays the NLL given the labels).
    """
    n, dims = len(images), images[0].numel()
    total = total_nll_nats(model, images, batch_size=batch_size, device=device, labels=labels)
    out = {"test_bits_per_dim": bits_per_dim(total, n, dims), "test_nats_per_image": total / n}
    if is_conditional(model) and labels is not None:
        out["test_bits_per_dim_given_label"] = out["test_bits_per_dim"]
        if prior is not None:
            total = float(marginal_nll_nats(model, images, prior=prior, batch_size=batch_size, device=device).sum())
            out |= {"test_bits_per_dim": bits_per_dim(total, n, dims), "test_nats_per_image": total / n}
    return out
