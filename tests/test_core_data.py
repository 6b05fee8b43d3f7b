"""Data sources (embedded, torchvision on-disk formats, folders) and preprocessing."""

from __future__ import annotations

import gzip
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from pixelnet.config import defaults
from pixelnet.data.preprocess import preprocess, quantize, split_indices
from pixelnet.data.processed import load_split, read_manifest
from pixelnet.data.rawformat import read_raw, write_raw
from pixelnet.data.sources import load_source
from pixelnet.errors import PixelNetError
from tests.conftest import write_image_folder


def write_idx(path, array: np.ndarray, *, compress=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def write_mnist_files(root, sub="MNIST/raw", *, n_train=6, n_test=4, compress=False):
    rng = np.random.default_rng(0)
    d = root / sub
    write_idx(d / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)), compress=compress)
    write_idx(d / "train-labels-idx1-ubyte", np.arange(n_train) % 10, compress=compress)
    write_idx(d / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), compress=compress)
    write_idx(d / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, compress=compress)
    return d


def test_mnist_5k_is_embedded_real_digits():
    raw = load_source("mnist-5k", cache_dir=None, folder=None)
    assert raw.train.images.shape == (5000, 28, 28, 1) and raw.train.images.dtype == np.uint8
    assert np.bincount(raw.train.labels).tolist() == [500] * 10
    assert raw.test is None and raw.train.images.max() == 255


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_files_in_torchvision_layout_are_used_offline(tmp_path, compress):
    write_mnist_files(tmp_path, compress=compress)
    raw = load_source("mnist", cache_dir=tmp_path, folder=None)
    assert raw.train.images.shape == (6, 28, 28, 1) and raw.test.images.shape == (4, 28, 28, 1)
    assert raw.train.labels.tolist() == [0, 1, 2, 3, 4, 5]


def test_fashion_mnist_layout(tmp_path):
    write_mnist_files(tmp_path, "FashionMNIST/raw")
    raw = load_source("fashion-mnist", cache_dir=tmp_path, folder=None)
    assert raw.classes[0] == "T-shirt/top" and len(raw.test.labels) == 4


def test_truncated_idx_file_is_named(tmp_path):
    d = write_mnist_files(tmp_path)
    f = d / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(PixelNetError, match="train-images-idx3-ubyte is truncated or corrupt"):
        load_source("mnist", cache_dir=tmp_path, folder=None)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_layout_read_without_unsafe_pickles(tmp_path, protocol):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1, 7]}
        (d / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    raw = load_source("cifar10", cache_dir=tmp_path, folder=None)
    assert raw.train.images.shape == (10, 32, 32, 3) and raw.test.images.shape == (2, 32, 32, 3)
    first = pickle.loads((d / "data_batch_1").read_bytes())[b"data"][0]
    assert raw.train.images[0, :, :, 0].ravel().tolist() == first[:1024].tolist()  # red plane first

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (d / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(PixelNetError, match="test_batch"):
        load_source("cifar10", cache_dir=tmp_path, folder=None)


def test_folder_with_classes_and_rgb(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", mode="RGB", classes=("cat", "dog"), n_per_class=3)
    (folder / "README.txt").write_text("not an image")
    raw = load_source("folder", cache_dir=None, folder=str(folder))
    assert raw.train.images.shape == (6, 8, 8, 3)
    assert raw.classes == ["cat", "dog"] and raw.train.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_folder_without_classes(tmp_path):
    (tmp_path / "flat").mkdir()
    for i in range(3):
        Image.fromarray(np.full((5, 5), i * 50, np.uint8)).save(tmp_path / "flat" / f"{i}.png")
    raw = load_source("folder", cache_dir=None, folder=str(tmp_path / "flat"))
    assert raw.classes == ["all"] and not raw.labeled and raw.train.images.shape == (3, 5, 5, 1)


def photos(folder):
    """Images of different sizes, aspect ratios and modes, in two classes."""
    (folder / "wide").mkdir(parents=True)
    (folder / "tall").mkdir()
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, 10:20] = 255  # a white centre square between black sides
    Image.fromarray(wide).save(folder / "wide" / "rgb.png")
    Image.fromarray(np.full((12, 16), 200, np.uint8)).save(folder / "wide" / "gray.jpg")
    rgba = np.zeros((40, 20, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 255, 128
    Image.fromarray(rgba, mode="RGBA").save(folder / "tall" / "rgba.png")
    Image.fromarray(np.full((8, 8), 50, np.uint8)).save(folder / "tall" / "small.png")
    return folder


@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
def test_a_folder_of_mixed_sizes_shapes_and_modes_is_fitted_to_one_size(tmp_path, fit):
    raw = load_source("folder", cache_dir=None, folder=str(photos(tmp_path / "p")), size=8, fit=fit)
    assert raw.train.images.shape == (4, 8, 8, 3) and raw.train.images.dtype == np.uint8  # gray + RGB -> RGB
    assert raw.classes == ["tall", "wide"] and raw.train.labels.tolist() == [0, 0, 1, 1]
    wide = raw.train.images[3]  # wide/rgb.png: black | white | black
    if fit == "crop":  # the centred square is the white one
        assert wide.min() == 255
    if fit == "pad":  # black bands above and below, the white stripe in the middle columns
        assert wide[0].max() == 0 and wide[4, 3:5].min() > 200 and wide[4, 0].max() == 0
    if fit == "stretch":  # all three thirds, squeezed
        assert wide[:, 0].max() == 0 and wide[:, 4].min() > 200
    assert np.array_equal(raw.train.images[1], np.full((8, 8, 3), 50, np.uint8))  # already 8x8: kept as it is
    tall = raw.train.images[0]  # tall/rgba.png: green, half transparent -> RGB green (alpha dropped)
    assert tall[..., 0].max() == 0 and tall[:, 3:5, 1].min() > 200
    assert (tall[:, 0, 1].max() == 0) == (fit == "pad")  # padded: black bands left and right


def test_fitting_needs_a_known_policy(tmp_path):
    with pytest.raises(ValueError, match="unknown fit 'zoom'"):
        load_source("folder", cache_dir=None, folder=str(photos(tmp_path / "p")), size=8, fit="zoom")


@pytest.mark.parametrize("problem, match", [
    ("missing", "does not exist"),
    ("empty", "holds no PNG/JPEG images"),
    ("unreadable", "cannot read image .*broken.png"),
    ("mixed_sizes", "different sizes"),
])
def test_folder_bad_input(tmp_path, problem, match):
    folder = tmp_path / "imgs"
    if problem != "missing":
        folder.mkdir()
    if problem == "unreadable":
        write_image_folder(folder, n_per_class=2)
        (folder / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    if problem == "mixed_sizes":
        write_image_folder(folder, n_per_class=2)
        Image.fromarray(np.zeros((9, 9), np.uint8)).save(folder / "a" / "big.png")
    with pytest.raises(PixelNetError, match=match):
        load_source("folder", cache_dir=None, folder=str(folder))


def test_quantize_levels():
    x = torch.tensor([0, 127, 128, 255], dtype=torch.uint8)
    assert quantize(x, 2).tolist() == [0, 0, 1, 1]
    assert quantize(x, 256).tolist() == [0, 127, 128, 255]
    assert quantize(x, 4).tolist() == [0, 1, 2, 3]


def test_split_is_seeded_stratified_and_disjoint():
    labels = np.repeat(np.arange(5), 20)
    a = split_indices(labels, fractions={"test": 0.1, "val": 0.2}, seed=3)
    b = split_indices(labels, fractions={"test": 0.1, "val": 0.2}, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert sorted(np.concatenate(list(a.values()))) == list(range(100))
    assert np.bincount(labels[a["test"]]).tolist() == [2] * 5


def test_preprocess_writes_manifest_and_tensors(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", mode="RGB", n_per_class=10)
    write_raw(load_source("folder", cache_dir=None, folder=str(folder)), tmp_path / "raw" / "folder", name="folder")
    cfg = defaults().data.replace(dataset="folder", size=6, mode="gray", levels=2, val_fraction=0.2, test_fraction=0.2)
    manifest = preprocess(cfg, tmp_path / "raw" / "folder", tmp_path / "processed")
    assert manifest["shape"] == [1, 6, 6] and manifest["levels"] == 2
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 12, "val": 4, "test": 4}
    assert manifest == read_manifest(tmp_path / "processed")
    train = load_split(tmp_path / "processed", "train")
    assert train.images.dtype == torch.uint8 and set(train.images.unique().tolist()) <= {0, 1}
    assert json.loads((tmp_path / "processed" / "manifest.json").read_text())["splits"]["test"]["images_sha256"]


def test_official_test_split_is_kept(tmp_path):
    write_mnist_files(tmp_path / "ext", n_train=20, n_test=4)
    write_raw(load_source("mnist", cache_dir=tmp_path / "ext", folder=None), tmp_path / "raw", name="mnist")
    assert read_raw(tmp_path / "raw").test is not None
    manifest = preprocess(defaults().data.replace(dataset="mnist", levels=256), tmp_path / "raw", tmp_path / "p")
    assert manifest["splits"]["test"]["count"] == 4 and manifest["official_test"]
