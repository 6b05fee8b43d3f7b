"""Raw dataset -> fixed-size, quantized, split uint8 tensors plus a manifest (processed.py).

Convert the colour mode, resize (antialiased bilinear), quantize 0..255 to level = floor(v * levels / 256)
(levels = 2 thresholds at 128), and split: a source with an official test split keeps it and draws val from
train; otherwise a seeded, per-class (stratified) split draws val and test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from pixelnet.config import DataConfig
from pixelnet.data.processed import MANIFEST_SCHEMA, SPLITS
from pixelnet.data.rawformat import RawDataset, read_raw
from pixelnet.files import atomic_dir, sha256_file

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's convert("L")


def convert_mode(images: np.ndarray, mode: str) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, H, W, C') uint8 with C' by `mode` (keep, gray, rgb)."""
    c = images.shape[-1]
    if mode == "gray" and c == 3:
        return np.rint(images @ LUMA).clip(0, 255).astype(np.uint8)[..., None]
    if mode == "rgb" and c == 1:
        return np.repeat(images, 3, axis=-1)
    return images


def resize(images: np.ndarray, size: int) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, size, size) uint8."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, C, H, W)
    if x.shape[-2:] == (size, size):
        return x.contiguous()
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)


def quantize(x: torch.Tensor, levels: int) -> torch.Tensor:
    """uint8 0..255 -> uint8 levels 0..levels-1, level = floor(v * levels / 256)."""
    return (x.to(torch.int32) * levels // 256).to(torch.uint8)


def split_indices(labels: np.ndarray, *, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Seeded per-class split: for each class, shuffle and cut `fractions` off the front."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in [*fractions, "train"]}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for name, frac in fractions.items():
            take = int(round(frac * len(idx)))
            parts[name].append(idx[start:start + take])
            start += take
        parts["train"].append(idx[start:])
    return {name: np.sort(np.concatenate(p)) for name, p in parts.items()}


def preprocess(cfg: DataConfig, raw_dir: Path, out_dir: Path) -> dict:
    """Write data/processed/ from data/raw/<dataset>/; returns the manifest."""
    raw: RawDataset = read_raw(raw_dir)
    prepare = lambda imgs: quantize(resize(convert_mode(imgs, cfg.mode), cfg.size), cfg.levels)  # noqa: E731
    train_x, train_y = prepare(raw.train.images), raw.train.labels
    official = raw.test is not None
    fractions = {"val": cfg.val_fraction} if official else {"test": cfg.test_fraction, "val": cfg.val_fraction}
    cut = split_indices(train_y, fractions=fractions, seed=cfg.seed)
    splits = {name: (train_x[cut[name]], train_y[cut[name]]) for name in SPLITS if name in cut}  # train, val, test
    if official:
        splits["test"] = (prepare(raw.test.images), raw.test.labels)
    with atomic_dir(out_dir) as tmp:
        summary = {}
        for name, (x, y) in splits.items():
            np.save(tmp / f"{name}_images.npy", x.numpy())
            np.save(tmp / f"{name}_labels.npy", y.astype(np.int64))
            counts = np.bincount(y, minlength=len(raw.classes)) if len(y) else np.zeros(len(raw.classes), int)
            summary[name] = {
                "count": int(len(y)),
                "per_class": {c: int(n) for c, n in zip(raw.classes, counts)},
                "images_sha256": sha256_file(tmp / f"{name}_images.npy"),
                "labels_sha256": sha256_file(tmp / f"{name}_labels.npy"),
            }
        manifest = {
            "schema": MANIFEST_SCHEMA,
            "dataset": Path(raw_dir).name,
            "source": raw.source,
            "levels": cfg.levels,
            "shape": list(splits["train"][0].shape[1:]),  # [C, H, W]
            "classes": raw.classes,
            "labeled": raw.labeled,
            "official_test": official,
            "scaling": "uint8 level = floor(v * levels / 256); network input = level * 2 / (levels - 1) - 1",
            "splits": summary,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
