"""A user's own folder of PNG/JPEG images as a RawDataset.

Images sit directly in the folder (unlabeled, one class "all") or under one subfolder per class (labels from the
sorted subfolder names).  Other files are skipped and counted.  All-grayscale folders stay grayscale, others become
RGB (alpha dropped).  With `size`, each image is made square by the `fit` policy (`to_square`) and resized as
preprocess resizes; without it, images must share one size.  Links are followed only inside the folder: a link
that leads out of it, or a directory link back to a folder it sits in, is an error naming the link.
Unreadable, truncated and oversized (decompression-bomb) files are errors that name the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from pixelnet.data.preprocess import resize
from pixelnet.data.rawformat import RawDataset, RawSplit
from pixelnet.errors import PixelNetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
MAX_PIXELS = 4096 * 4096  # larger images are refused as possible decompression bombs
FITS = ("crop", "pad", "stretch")


def _entries(directory: Path, root: Path, ancestors: frozenset[Path]) -> Iterator[Path]:
    """The files under `directory` (its own first, sorted, then each subfolder's), links inside `root` followed.

    `ancestors`: the real paths of the folders being walked, to refuse a directory link that loops.
    """
    children = sorted(directory.iterdir(), key=lambda p: p.name)
    for path in children:
        if path.is_symlink() and not Path(os.path.realpath(path)).is_relative_to(root):
            raise PixelNetError(f"link {path} -> {os.readlink(path)} leads out of image folder {root}: links are "
                                "followed only inside the folder; copy what it points to into the folder, "
                                "or remove the link")
    yield from (p for p in children if not p.is_dir())
    for sub in (p for p in children if p.is_dir()):
        real = Path(os.path.realpath(sub))
        if real in ancestors:
            raise PixelNetError(f"link {sub} -> {os.readlink(sub)} in image folder {root} leads back to a folder "
                                "it sits in (a loop): remove the link")
        yield from _entries(sub, root, ancestors | {real})


def _image_files(folder: Path) -> tuple[list[tuple[Path, str | None]], int]:
    """(path, class name or None) for every image under `folder`, and the count skipped."""
    root = Path(os.path.realpath(folder))
    found: list[tuple[Path, str | None]] = []
    skipped = 0
    for path in _entries(folder, root, frozenset({root})):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped += 1
            continue
        rel = path.parent.relative_to(folder)
        found.append((path, rel.parts[0] if rel.parts else None))
    return found, skipped


def _open(path: Path) -> Image.Image:
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_PIXELS  # PIL warns above it: an error here
    try:
        with warnings.catch_warnings(action="error", category=Image.DecompressionBombWarning), Image.open(path) as img:
            img.load()
            return img.copy()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PixelNetError(
            f"{path} is larger than {MAX_PIXELS} pixels (a possible decompression bomb); remove it or shrink it"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise PixelNetError(f"cannot read image {path} ({e}); it is corrupt or not an image: fix or remove it") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def to_square(img: Image.Image, fit: str) -> Image.Image:
    """`img` made square: crop keeps the centred square, pad centres it on black, stretch leaves it to the resize."""
    w, h = img.size
    if w == h or fit == "stretch":
        return img
    if fit == "crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        return img.crop((left, top, left + side, top + side))
    if fit == "pad":
        side = max(w, h)
        square = Image.new(img.mode, (side, side), 0)
        square.paste(img, ((side - w) // 2, (side - h) // 2))
        return square
    raise ValueError(f"unknown fit {fit!r}: use one of {', '.join(FITS)}")


def fitted(img: Image.Image, *, size: int, fit: str) -> np.ndarray:
    """`img` as uint8 (size, size, C): kept if it is that size, else `to_square` then resized."""
    if img.size == (size, size):
        return np.asarray(img, dtype=np.uint8).reshape(size, size, -1)
    square = np.asarray(to_square(img, fit), dtype=np.uint8)
    square = square[..., None] if square.ndim == 2 else square  # (H, W, C)
    return resize(square[None], size)[0].permute(1, 2, 0).numpy()


def read_folder(folder: Path, *, size: int | None = None, fit: str = "crop") -> RawDataset:
    """The folder's images as a RawDataset; with `size`, each fitted to size x size (module docstring)."""
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
    if size is None and len({img.size for img in images}) > 1:
        by_size = {}
        for (path, _), img in zip(files, images):
            by_size.setdefault(img.size, path)
        examples = ", ".join(f"{w}x{h} ({p.name})" for (w, h), p in list(by_size.items())[:3])
        raise PixelNetError(
            f"images in {folder} have different sizes: {examples}; pass a size (data.size) to fit them to one"
        )
    mode = "L" if all(img.mode in GRAY_MODES for img in images) else "RGB"
    images = [img.convert(mode) for img in images]
    if size is not None:
        stacked = np.stack([fitted(img, size=size, fit=fit) for img in images])
    else:
        stacked = np.stack([np.asarray(img, dtype=np.uint8) for img in images])
        stacked = stacked[..., None] if stacked.ndim == 3 else stacked  # (N, H, W, C)
    if labels_by_file[0] is None:
        classes, labels = ["all"], np.zeros(len(files), dtype=np.int64)
    else:
        classes = sorted(set(labels_by_file))
        labels = np.array([classes.index(label) for label in labels_by_file], dtype=np.int64)
    return RawDataset(
        train=RawSplit(stacked, labels), test=None, classes=classes,
        labeled=labels_by_file[0] is not None, source=f"folder:{folder}",
    )
