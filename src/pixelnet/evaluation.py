"""Evaluation: test NLL and the figures people look at (sample grids, loss curves).

Images arrive as uint8 levels (N, C, H, W); `to_display` maps them back to
0..255 for viewing (level * 255 / (levels - 1)).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pixelnet.likelihood import bits_per_dim
from pixelnet.training import conditional, nll_nats, total_nll_nats


def test_nll(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int, device: torch.device,
             labels: torch.Tensor | None = None, prior: torch.Tensor | None = None) -> dict[str, float]:
    """Test NLL in bits/dim and nats/image (exact discrete likelihood, no dequantization offset).

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
    if conditional(model) and labels is not None:
        out["test_bits_per_dim_given_label"] = out["test_bits_per_dim"]
        if prior is not None:
            total = float(marginal_nll_nats(model, images, prior=prior, batch_size=batch_size, device=device).sum())
            out |= {"test_bits_per_dim": bits_per_dim(total, n, dims), "test_nats_per_image": total / n}
    return out


@torch.no_grad()
def marginal_nll_nats(model: torch.nn.Module, images: torch.Tensor, *, prior: torch.Tensor, batch_size: int,
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
        per_class = [nll_nats(model(x, torch.full((len(x),), k, device=device, dtype=torch.long)), x, reduction="none")
                     .view(len(x), -1).double().sum(dim=1) for k in range(len(prior))]  # each (B,): -log p(x | k)
        out.append(-torch.logsumexp(log_prior - torch.stack(per_class, dim=1), dim=1))
    model.train(was_training)
    return torch.cat(out).cpu()


def class_prior(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Class frequencies (n_classes,) of integer labels: the p(y) that `test_nll` marginalizes a conditional model over."""
    counts = torch.bincount(labels.long(), minlength=n_classes).double()
    return counts / counts.sum()


def to_display(images: torch.Tensor | np.ndarray, levels: int) -> np.ndarray:
    """uint8 levels -> uint8 0..255."""
    x = np.asarray(images, dtype=np.float64)
    return np.rint(x * 255.0 / (levels - 1)).astype(np.uint8)


def image_grid(images: torch.Tensor | np.ndarray, levels: int, *, nrow: int | None = None, pad: int = 2) -> Image.Image:
    """(N, C, H, W) levels -> one PIL image, `nrow` images per row, `pad` pixels apart."""
    x = to_display(images, levels)
    n, c, h, w = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 128, dtype=np.uint8)
    for k in range(n):
        r, col = divmod(k, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[top:top + h, left:left + w] = x[k].transpose(1, 2, 0)
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)


def completion_grid(images: torch.Tensor | np.ndarray, completions: torch.Tensor | np.ndarray, *,
                    rows: int, levels: int) -> Image.Image:
    """One line per image: the original, its top `rows` rows with the rest blanked, then its completions.

    images (N, C, H, W) and completions (N, K, C, H, W), uint8 levels.  The blanked
    rows show level levels // 2 (mid-gray; white when binarized).
    """
    images, completions = np.asarray(images), np.asarray(completions)
    occluded = images.copy()
    occluded[:, :, rows:] = levels // 2
    panel = np.concatenate([images[:, None], occluded[:, None], completions], axis=1)  # (N, K + 2, C, H, W)
    return image_grid(panel.reshape(-1, *images.shape[1:]), levels, nrow=panel.shape[1])


def side_by_side(left: Image.Image, right: Image.Image, *, gap: int = 8) -> Image.Image:
    """Two images next to each other (samples | real), on a gray background."""
    mode = "RGB" if "RGB" in (left.mode, right.mode) else "L"
    out = Image.new(mode, (left.width + gap + right.width, max(left.height, right.height)), 128)
    out.paste(left.convert(mode), (0, 0))
    out.paste(right.convert(mode), (left.width + gap, 0))
    return out


def plot_loss_curves(steps: pd.DataFrame, epochs: pd.DataFrame, path: Path) -> None:
    """Training loss by step and train/val bits/dim by epoch, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].plot(steps["step"], steps["train_bpd"], lw=0.8, alpha=0.8)
    axes[0].set(xlabel="step", ylabel="bits/dim", title="training loss by step")
    axes[1].plot(epochs["epoch"], epochs["train_bpd"], marker="o", label="train")
    axes[1].plot(epochs["epoch"], epochs["val_bpd"], marker="o", label="validation")
    axes[1].set(xlabel="epoch", ylabel="bits/dim", title="by epoch")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
