"""The raw on-disk format that every source writes and preprocess reads: one directory, data/raw/<dataset>/.

    train_images.npy   uint8 (N, H, W, C), C = 1 (grayscale) or 3 (RGB)
    train_labels.npy   int64 (N,), class indices into meta.json's "classes"
    test_images.npy    } only when the source has an official test split
    test_labels.npy    }
    meta.json          {"dataset", "source", "classes", "labeled", "official_test"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixelnet.errors import PixelNetError
from pixelnet.files import atomic_dir, load_npy


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
    splits = {"train": dataset.train, "test": dataset.test}
    assert all(s is None or (s.images.dtype == np.uint8 and s.images.ndim == 4) for s in splits.values())
    with atomic_dir(out_dir) as tmp:
        for prefix, split in splits.items():
            if split is not None:
                np.save(tmp / f"{prefix}_images.npy", split.images)
                np.save(tmp / f"{prefix}_labels.npy", split.labels.astype(np.int64))
        meta = {"dataset": name, "source": dataset.source, "classes": dataset.classes, "labeled": dataset.labeled,
                "official_test": dataset.test is not None}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def read_raw(raw_dir: Path) -> RawDataset:
    raw_dir = Path(raw_dir)
    meta_path = raw_dir / "meta.json"
    if not meta_path.is_file():
        raise PixelNetError(f"{raw_dir} is not a raw dataset (no meta.json): "
                            f"run `pixelnet download --out {raw_dir}` first")
    meta = json.loads(meta_path.read_text())

    def split(prefix: str) -> RawSplit:
        images_path, labels_path = raw_dir / f"{prefix}_images.npy", raw_dir / f"{prefix}_labels.npy"
        images, labels = (load_npy(p, remedy="run `pixelnet download` for this dataset again")
                          for p in (images_path, labels_path))
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise PixelNetError(f"{images_path} must be uint8 (N, H, W, 1 or 3), got {images.dtype} {images.shape}; "
                                "run `pixelnet download` again")
        if labels.shape != (len(images),):
            raise PixelNetError(f"{labels_path} must hold one label per image")
        return RawSplit(images, labels.astype(np.int64))

    return RawDataset(train=split("train"), test=split("test") if meta["official_test"] else None,
                      classes=list(meta["classes"]), labeled=bool(meta["labeled"]), source=str(meta["source"]))
