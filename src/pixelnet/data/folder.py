"""A user's own folder of PNG/JPEG images as a RawDataset.

Layout: either images directly in the folder (unlabeled, one class "all"), or
one subfolder per class (labels from the sorted subfolder names; images may
sit deeper inside a class folder).  Files with other extensions are skipped
and counted.  Links that lead out of the folder are not followed.  Every image
must have the same size; modes are unified (all grayscale stays grayscale,
otherwise everything becomes RGB, alpha dropped).  Unreadable, truncated and
oversized (decompression-bomb) files are errors that name the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from pixelnet.data.rawformat import RawDataset, RawSplit
from pixelnet.errors import PixelNetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
MAX_PIXELS = 4096 * 4096  # larger images are refused as possible decompression bombs


def _inside(path: Path, root: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(root)


def _image_files(folder: Path) -> tuple[list[tuple[Path, str | None]], int]:
    """(path, class name or None) for every image under `folder`, and the count skipped."""
    root = Path(os.path.realpath(folder))
    found: list[tuple[Path, str | None]] = []
    skipped = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        rel = Path(dirpath).relative_to(folder)
        label = rel.parts[0] if rel.parts else None
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix.lower() not in IMAGE_SUFFIXES or not _inside(path, root):
                skipped += 1
                continue
            found.append((path, label))
    return found, skipped


def _open(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_PIXELS
            try:
                with Image.open(path) as img:
                    img.load()
                    return img.copy()
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PixelNetError(
            f"{path} is larger than {MAX_PIXELS} pixels (a possible decompression bomb); remove it or shrink it"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise PixelNetError(f"cannot read image {path} ({e}); it is corrupt or not an image: fix or remove it") from None


def read_folder(folder: Path) -> RawDataset:
    if not folder.is_dir():
        raise PixelNetError(f"image folder {folder} does not exist or is not a directory: set data.folder to a folder of PNG/JPEG images")
    files, skipped = _image_files(folder)
    if not files:
        raise PixelNetError(
            f"image folder {folder} holds no PNG/JPEG images ({skipped} other files skipped): "
            "put images in it, directly or one subfolder per class"
        )
    labels_by_file = [label for _, label in files]
    if None in labels_by_file and any(label is not None for label in labels_by_file):
        loose = next(p for p, label in files if label is None)
        raise PixelNetError(
            f"image folder {folder} mixes loose images ({loose.name}) with class subfolders: "
            "move every image into a class subfolder, or remove the subfolders"
        )
    images = [_open(path) for path, _ in files]
    sizes = {img.size for img in images}
    if len(sizes) > 1:
        by_size = {}
        for (path, _), img in zip(files, images):
            by_size.setdefault(img.size, path)
        examples = ", ".join(f"{w}x{h} ({p.name})" for (w, h), p in list(by_size.items())[:3])
        raise PixelNetError(
            f"images in {folder} have different sizes: {examples}; resize them to one size before using them"
        )
    mode = "L" if all(img.mode in GRAY_MODES for img in images) else "RGB"
    arrays = [np.asarray(img.convert(mode), dtype=np.uint8) for img in images]
    stacked = np.stack(arrays)
    if stacked.ndim == 3:
        stacked = stacked[..., None]  # (N, H, W, 1)
    if labels_by_file[0] is None:
        classes, labels = ["all"], np.zeros(len(files), dtype=np.int64)
    else:
        classes = sorted(set(labels_by_file))
        labels = np.array([classes.index(label) for label in labels_by_file], dtype=np.int64)
    return RawDataset(
        train=RawSplit(stacked, labels), test=None, classes=classes,
        labeled=labels_by_file[0] is not None, source=f"folder:{folder}",
    )
