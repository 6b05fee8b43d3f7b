"""The raw on-disk format that every source writes and preprocess reads.

A raw dataset is one directory (data/raw/<dataset>/) holding:

    train_images.npy   uint8 (N, H, W, C), C = 1 (grayscale) or 3 (RGB)
    train_labels.npy   int64 (N,), class indices into meta.json's "classes"
    test_images.npy    } only when the source has an official test split
    test_labels.npy    }
    meta.json          {"dataset", "source", "classes", "labeled", "official_test"}

Directories are written atomically (files.atomic_dir), so an interrupted
download never leaves a directory that looks complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixelnet.errors import PixelNetError
from pixelnet.files import atomic_dir


@dataclass
class RawSplit:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)


@dataclass
class RawDataset:
    train: RawSplit
    test: RawSplit | None
    classes: list[str]
    labeled: bool
    source: str


def write_raw(dataset: RawDataset, out_dir: Path, *, name: str) -> None:
    for split in (dataset.train, dataset.test):
        if split is not None:
            assert split.images.dtype == np.uint8 and split.images.ndim == 4
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "train_images.npy", dataset.train.images)
        np.save(tmp / "train_labels.npy", dataset.train.labels.astype(np.int64))
        if dataset.test is not None:
            np.save(tmp / "test_images.npy", dataset.test.images)
            np.save(tmp / "test_labels.npy", dataset.test.labels.astype(np.int64))
        meta = {
            "dataset": name,
            "source": dataset.source,
            "classes": dataset.classes,
            "labeled": dataset.labeled,
            "official_test": dataset.test is not None,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise PixelNetError(f"missing file {path}: run `pixelnet download` for this dataset first") from None
    except (ValueError, OSError, EOFError) as e:
        raise PixelNetError(f"cannot read {path} ({e}); delete it and run `pixelnet download` again") from None


def read_raw(raw_dir: Path) -> RawDataset:
    raw_dir = Path(raw_dir)
    meta_path = raw_dir / "meta.json"
    if not meta_path.is_file():
        raise PixelNetError(
            f"{raw_dir} is not a raw dataset (no meta.json): run `pixelnet download --out {raw_dir}` first"
        )
    meta = json.loads(meta_path.read_text())

    def split(prefix: str) -> RawSplit:
        images = _load_npy(raw_dir / f"{prefix}_images.npy")
        labels = _load_npy(raw_dir / f"{prefix}_labels.npy")
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise PixelNetError(
                f"{raw_dir / (prefix + '_images.npy')} must be uint8 (N, H, W, 1 or 3), "
                f"got {images.dtype} {images.shape}; run `pixelnet download` again"
            )
        if labels.shape != (len(images),):
            raise PixelNetError(f"{raw_dir / (prefix + '_labels.npy')} must hold one label per image")
        return RawSplit(images, labels.astype(np.int64))

    return RawDataset(
        train=split("train"),
        test=split("test") if meta["official_test"] else None,
        classes=list(meta["classes"]),
        labeled=bool(meta["labeled"]),
        source=str(meta["source"]),
    )
