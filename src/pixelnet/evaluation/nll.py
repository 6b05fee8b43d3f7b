"""Held-out NLL as evaluate reports it: bits/dim of the images, and given the label for a conditional model.

`heldout_nll` scores any held-out split; evaluate gives it the test split, whence its keys (test_bits_per_dim).
"""

from __future__ import annotations

import torch

from pixelnet.model.likelihood import bits_per_dim, is_conditional, marginal_nll_nats, total_nll_nats


def heldout_nll(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int, device: torch.device,
                labels: torch.Tensor | None = None, prior: torch.Tensor | None = None) -> dict[str, float]:
    """Held-out NLL in bits/dim and nats/image (exact discrete likelihood, no dequantization offset).

    labels (N,): the classes, used by a conditional model.  Its NLL given
    the true labels is `test_bits_per_dim_given_label`; with `prior` (the
    class probabilities p(y), e.g. the train split's frequencies),
    `test_bits_per_dim` is the model's NLL of the images alone,
    -log p(x) = -log sum_y p(y) p(x | y): exact, and comparable with an
    unconditional model's.  Without a prior it is the NLL given the labels.
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

