"""The bad-input catalogue (docs/bad-input.md): each case is a clean, named error."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from pixelnet.data import folder as folder_mod
from pixelnet.errors import PixelNetError
from tests.conftest import write_image_folder


def assert_clean(result, *needles):
    assert result.code != 0, result.out
    assert "Traceback" not in result.err + result.out
    for needle in needles:
        assert needle in result.err, result.err


def download(run_cli, params, out, folder):
    return run_cli("download", "--params", params, "--out", out, "-S", f"data.folder={folder}")


def test_decompression_bomb_is_refused(run_cli, tmp_path, tiny_params, monkeypatch):
    folder = write_image_folder(tmp_path / "imgs", n_per_class=2, size=(8, 8))
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "a" / "bomb.png")
    monkeypatch.setattr(folder_mod, "MAX_PIXELS", 32 * 32)  # a 64x64 image stands in for a huge one
    result = download(run_cli, tiny_params, tmp_path / "raw", folder)
    assert_clean(result, "bomb.png", "decompression bomb")
    assert not (tmp_path / "raw").exists()


def test_file_with_image_suffix_that_is_not_an_image(run_cli, tmp_path, tiny_params):
    folder = write_image_folder(tmp_path / "imgs", n_per_class=2)
    (folder / "b" / "notes.png").write_text("hello, I am text")
    assert_clean(download(run_cli, tiny_params, tmp_path / "raw", folder), "notes.png", "not an image")


def test_mixed_modes_are_unified_and_other_files_skipped(run_cli, tmp_path, tiny_params):
    folder = write_image_folder(tmp_path / "imgs", n_per_class=2)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a" / "colour.png")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(folder / "a" / "alpha.png")
    (folder / "a" / "labels.csv").write_text("x")
    assert download(run_cli, tiny_params, tmp_path / "raw", folder).code == 0
    images = np.load(tmp_path / "raw" / "train_images.npy")
    assert images.shape == (6, 8, 8, 3)


def test_links_inside_the_folder_are_followed(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", n_per_class=2)
    os.symlink(folder / "a" / "img000.png", folder / "b" / "link.png")  # a file link: one more image of class b
    os.symlink("../a", folder / "b" / "linked_dir")  # a directory link, relative: two more images of class b
    (folder / "c").symlink_to(folder / "a", target_is_directory=True)  # a class folder that is a link: class c
    raw = folder_mod.read_folder(folder)
    assert raw.classes == ["a", "b", "c"]
    assert np.bincount(raw.train.labels).tolist() == [2, 2 + 1 + 2, 2]
    linked = raw.train.images[raw.train.labels == 2]
    assert np.array_equal(linked, raw.train.images[raw.train.labels == 0])  # class c holds class a's images


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_links_out_of_the_folder_are_refused_naming_the_link(run_cli, tmp_path, tiny_params, kind):
    outside = write_image_folder(tmp_path / "outside", n_per_class=1, classes=("secret",))
    folder = write_image_folder(tmp_path / "imgs", n_per_class=2)
    target = outside / "secret" / "img000.png" if kind == "file" else outside / "secret"
    os.symlink(target, folder / "a" / "link")
    result = download(run_cli, tiny_params, tmp_path / "raw", folder)
    assert_clean(result, f"link {folder / 'a' / 'link'} -> {target} leads out of image folder", "remove the link")
    assert not (tmp_path / "raw").exists()


def test_a_directory_link_that_loops_is_refused(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", n_per_class=2)
    os.symlink("..", folder / "a" / "up")
    with pytest.raises(PixelNetError, match="leads back to a folder it sits in"):
        folder_mod.read_folder(folder)


def test_output_directory_that_cannot_be_written(run_cli, tmp_path, tiny_params, image_folder):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = download(run_cli, tiny_params, blocker / "raw", image_folder)
    assert_clean(result, "cannot write output directory", str(blocker / "raw"))


def test_processed_tensors_out_of_range_or_wrong_dtype(run_cli, tmp_path, tiny_params, image_folder):
    d = tmp_path
    assert download(run_cli, tiny_params, d / "raw", image_folder).code == 0
    assert run_cli("preprocess", "--params", tiny_params, "--raw", d / "raw", "--out", d / "p").code == 0
    train_args = ("train", "--params", tiny_params, "--data", d / "p", "--model", d / "m.pt", "--reports", d / "r")
    images = np.load(d / "p" / "train_images.npy")
    np.save(d / "p" / "train_images.npy", np.full_like(images, 9))  # levels is 4
    assert_clean(run_cli(*train_args), "train_images.npy", "outside [0, 3]")
    np.save(d / "p" / "train_images.npy", np.full(images.shape, np.nan, dtype=np.float32))
    assert_clean(run_cli(*train_args), "train_images.npy", "float32")
    assert not (d / "m.pt").exists()


@pytest.mark.parametrize("content", [b"PK\x03\x04 not really a checkpoint", b"junk"])
def test_corrupt_checkpoint(run_cli, tmp_path, tiny_params, content):
    (tmp_path / "m.pt").write_bytes(content)
    result = run_cli("sample", "--params", tiny_params, "--model", tmp_path / "m.pt", "--out", tmp_path / "s")
    assert_clean(result, "m.pt", "corrupt or truncated")
    assert not (tmp_path / "s").exists()
