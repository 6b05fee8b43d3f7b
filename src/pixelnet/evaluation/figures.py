"""The figures people look at: sample grids, completions, samples beside real images, loss curves.

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
