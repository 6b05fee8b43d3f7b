"""The figures people look at: sample grids, completions, samples beside real images, loss curves.

Images arrive as uint8 levels (N, C, H, W), shown as level * 255 / (levels - 1).  The stages draw every image
at least CELL screen pixels tall by nearest-neighbour upscaling (a 28x28 digit is a speck otherwise), in a
near-square grid whose columns each hold one class when the classes take turns, named above the column.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

CELL = 64  # the least on-screen size of one image in the pipeline's figures, in pixels
LABEL_HEIGHT = 14  # the band above the columns that names their classes


def display_scale(height: int, width: int) -> int:
    """The whole-number upscaling that draws an image of height x width at least CELL pixels on its longer side."""
    return max(1, math.ceil(CELL / max(height, width)))


def near_square_columns(n: int, classes: int = 0) -> int:
    """Images per row: about sqrt(n), a multiple of `classes` when image k is of class k mod classes."""
    side = max(1, round(math.sqrt(n)))
    if classes < 2:
        return min(n, side) if n else 1
    return classes * max(1, round(side / classes))


def image_grid(images: torch.Tensor | np.ndarray, levels: int, *, nrow: int | None = None, pad: int = 2,
               scale: int = 1, column_labels: list[str] | None = None) -> Image.Image:
    """(N, C, H, W) levels -> one PIL image, `nrow` images per row, `pad` pixels apart, each pixel drawn
    scale x scale, `column_labels` in a band above the columns."""
    x = np.rint(np.asarray(images, dtype=np.float64) * 255.0 / (levels - 1)).astype(np.uint8)  # levels -> 0..255
    if scale > 1:
        x = x.repeat(scale, axis=2).repeat(scale, axis=3)  # nearest-neighbour: every level stays a crisp block
    n, c, h, w = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    top0 = LABEL_HEIGHT if column_labels else 0
    canvas = np.full((top0 + rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 128, dtype=np.uint8)
    for k in range(n):
        r, col = divmod(k, nrow)
        top, left = top0 + pad + r * (h + pad), pad + col * (w + pad)
        canvas[top:top + h, left:left + w] = x[k].transpose(1, 2, 0)
    out = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    if column_labels:
        draw, font = ImageDraw.Draw(out), ImageFont.load_default()
        for col, text in enumerate(column_labels[:nrow]):
            while len(text) > 1 and draw.textlength(text, font=font) > w:  # a long class name is cut to its column
                text = text[:-1]
            width = draw.textlength(text, font=font)
            draw.text((pad + col * (w + pad) + (w - width) / 2, 1), text, fill=255 if c == 1 else (255, 255, 255),
                      font=font)
    return out


def class_grid(images: torch.Tensor | np.ndarray, levels: int, *, classes: list[str] | None) -> Image.Image:
    """The pipeline's grid: upscaled, near-square, and with `classes` (taking turns) one class per named column."""
    n, _, h, w = np.asarray(images).shape
    nrow = near_square_columns(n, len(classes) if classes else 0)
    labels = [classes[col % len(classes)] for col in range(nrow)] if classes else None
    return image_grid(images, levels, nrow=nrow, scale=display_scale(h, w), column_labels=labels)


def classes_in_turn(labels: torch.Tensor | np.ndarray, n: int, n_classes: int, *, seed: int = 0) -> np.ndarray:
    """Indices of n images, image k of class k mod n_classes (each class in a seeded random order; classes that run
    out are skipped): real images laid out like the samples."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(labels == k))) for k in range(n_classes)]
    picked: list[int] = []
    k = 0
    while len(picked) < n and any(pools):
        if pools[k % n_classes]:
            picked.append(int(pools[k % n_classes].pop(0)))
        k += 1
    return np.asarray(picked, dtype=np.int64)


def completion_grid(images: torch.Tensor | np.ndarray, completions: torch.Tensor | np.ndarray, *,
                    rows: int, levels: int, scale: int = 1) -> Image.Image:
    """One line per image (N, C, H, W): the original, its top `rows` rows with the rest at level levels // 2
    (mid-gray; white when binarized), then its completions (N, K, C, H, W)."""
    images, completions = np.asarray(images), np.asarray(completions)
    occluded = images.copy()
    occluded[:, :, rows:] = levels // 2
    panel = np.concatenate([images[:, None], occluded[:, None], completions], axis=1)  # (N, K + 2, C, H, W)
    return image_grid(panel.reshape(-1, *images.shape[1:]), levels, nrow=panel.shape[1], scale=scale)


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
