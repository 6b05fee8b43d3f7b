"""The preprocessed tensors on disk (data/processed/) and their manifest.

    {train,val,test}_images.npy   uint8 (N, C, H, W): intensity levels in [0, levels - 1]
    {train,val,test}_labels.npy   int64 (N,)
    manifest.json                 schema, source, levels, shape, classes, and per split:
                                  count, count per class, sha256 of the images and labels files

Pixel values stay integer levels on disk and in memory; the model's
`scale_input` is the one place they become network inputs (levels -> [-1, 1]).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pixelnet.errors import PixelNetError
from pixelnet.files import load_npy

SPLITS = ("train", "val", "test")
MANIFEST_SCHEMA = 1


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W) levels
    labels: torch.Tensor  # int64 (N,)


def read_manifest(data_dir: Path) -> dict:
    path = Path(data_dir) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PixelNetError(f"{path} not found: run `pixelnet preprocess` to create {data_dir} first") from None
    except json.JSONDecodeError as e:
        raise PixelNetError(f"{path} is not valid JSON ({e}); run `pixelnet preprocess` again") from None


def load_split(data_dir: Path, split: str, manifest: dict | None = None) -> Split:
    """Load one split, checking it against the manifest (dtype, shape, range)."""
    data_dir = Path(data_dir)
    manifest = manifest or read_manifest(data_dir)
    paths = [data_dir / f"{split}_images.npy", data_dir / f"{split}_labels.npy"]
    images, labels = (load_npy(p, remedy="run `pixelnet preprocess` again") for p in paths)
    shape = tuple(manifest["shape"])
    levels = manifest["levels"]
    if images.dtype != np.uint8 or images.shape[1:] != shape or labels.shape != (len(images),):
        raise PixelNetError(
            f"{paths[0]} is {images.dtype} {images.shape} but the manifest declares uint8 (N, {shape}); "
            "run `pixelnet preprocess` again"
        )
    if images.size and int(images.max()) > levels - 1:
        raise PixelNetError(
            f"{paths[0]} holds values up to {int(images.max())}, outside [0, {levels - 1}] for levels={levels}; "
            "run `pixelnet preprocess` again"
        )
    return Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))


def check_fits(manifest: dict, model_config, *, model_path: Path, data_dir: Path) -> None:
    """A PixelNetError unless the model (its ModelConfig) was trained on data of this manifest's levels and shape."""
    c = model_config
    if manifest["levels"] != c.levels or list(manifest["shape"]) != [c.image_channels, c.height, c.width]:
        raise PixelNetError(f"model {model_path} was trained on different data than {data_dir} (levels {c.levels}, "
                            f"shape {[c.image_channels, c.height, c.width]} against {manifest['levels']}, "
                            f"{manifest['shape']}): train again")
