"""Image completion: the given rows never change, the rest is exactly what the naive sampler draws."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pixelnet.checkpoint import save_checkpoint
from pixelnet.evaluation.figures import completion_grid
from pixelnet.sampling import sample_naive, sampling_noise
from pixelnet.sampling.fast import complete
from tests.test_fast_sampling import random_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("image_channels, rows", [(1, 0), (1, 2), (3, 3), (1, 4)])
def test_completion_keeps_the_given_rows_and_matches_naive(image_channels, rows):
    model = random_model(image_channels=image_channels, levels=8)
    images = torch.randint(0, 8, (2, image_channels, 5, 6), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    out = complete(model, images, rows=rows, completions=3, seed=11)
    assert out.shape == (2, 3, image_channels, 5, 6) and out.dtype == torch.uint8
    for k in range(3):
        assert torch.equal(out[:, k, :, :rows], images[:, :, :rows])
    assert not torch.equal(out[:, 0, :, rows:], out[:, 1, :, rows:])  # the completions are different draws
    # Exactly what the naive sampler draws from the same given rows and noise (image-major order).
    noise = sampling_noise(6, image_channels, 5, 6, seed=11)
    naive = sample_naive(model, noise, given=images.repeat_interleave(3, dim=0), start_row=rows)
    assert torch.equal(out.reshape(6, image_channels, 5, 6), naive)


def test_completion_rows_out_of_range():
    model = random_model()
    with pytest.raises(ValueError, match="rows must be in"):
        complete(model, torch.zeros(1, 1, 5, 6, dtype=torch.uint8), rows=6, completions=1, seed=0)


def test_completion_grid_layout():
    images = np.zeros((2, 1, 4, 5), dtype=np.uint8)
    completions = np.full((2, 3, 1, 4, 5), 3, dtype=np.uint8)
    grid = np.asarray(completion_grid(images, completions, rows=1, levels=4))
    pad = 2
    assert grid.shape == (pad + 2 * (4 + pad), pad + 5 * (5 + pad))  # one line per image: original, occluded, 3
    occluded = grid[pad:pad + 4, pad + (5 + pad):pad + (5 + pad) + 5]
    assert (occluded[:1] == 0).all() and (occluded[1:] == 170).all()  # kept row as is, the rest level 2 of 4
    assert (grid[pad:pad + 4, pad + 2 * (5 + pad):pad + 2 * (5 + pad) + 5] == 255).all()


def processed_fixture(run_cli, tmp_path, tiny_params, image_folder):
    for args in [("download", "--params", tiny_params, "--out", tmp_path / "raw", "-S", f"data.folder={image_folder}"),
                 ("preprocess", "--params", tiny_params, "--raw", tmp_path / "raw", "--out", tmp_path / "processed")]:
        result = run_cli(*args)
        assert result.code == 0, result.err
    manifest = json.loads((tmp_path / "processed" / "manifest.json").read_text())
    assert manifest["levels"] == 4 and manifest["shape"] == [1, 8, 8]
    model = random_model(levels=4, height=8, width=8, first_kernel=3, kernel=3, blocks=1, channels=8)
    save_checkpoint(model, model.config, tmp_path / "model.pt")
    return tmp_path / "processed", tmp_path / "model.pt"


def test_cli_complete_writes_completions_and_grid(run_cli, tmp_path, tiny_params, image_folder):
    data, model = processed_fixture(run_cli, tmp_path, tiny_params, image_folder)
    out = tmp_path / "complete"
    result = run_cli("complete", "--model", model, "--data", data, "--out", out, "--params", tiny_params,
                     "-S", "complete.rows=3", "-S", "complete.images=2", "-S", "complete.per_image=3")
    assert result.code == 0, result.err
    completions = np.load(out / "completions.npy")
    all_test = np.load(data / "test_images.npy")
    info = json.loads((out / "complete.json").read_text())
    assert len(all_test) == 4 and info["test_indices"] == [0, 2]  # spread through the split, not the first two
    test_images = all_test[info["test_indices"]]
    assert completions.shape == (2, 3, 1, 8, 8) and completions.dtype == np.uint8
    assert (completions[:, :, :, :3] == test_images[:, None, :, :3]).all()
    assert info["images"] == 2 and info["per_image"] == 3 and info["rows"] == 3
    assert Image.open(out / "completions.png").size == (2 + 5 * (8 * 8 + 2), 2 + 2 * (8 * 8 + 2))  # 8x8 images x8


def test_cli_complete_refuses_keeping_every_row(run_cli, tmp_path, tiny_params, image_folder):
    data, model = processed_fixture(run_cli, tmp_path, tiny_params, image_folder)
    result = run_cli("complete", "--model", model, "--data", data, "--out", tmp_path / "c", "--params", tiny_params,
                     "-S", "complete.rows=8")
    assert result.code == 2 and "complete.rows=8" in result.err and "fewer than 8" in result.err


def test_cli_complete_refuses_a_model_of_other_data(run_cli, tmp_path, tiny_params, image_folder):
    data, _ = processed_fixture(run_cli, tmp_path, tiny_params, image_folder)
    other = random_model(levels=4)  # 5 x 6 images, the data is 8 x 8
    save_checkpoint(other, other.config, tmp_path / "other.pt")
    result = run_cli("complete", "--model", tmp_path / "other.pt", "--data", data, "--out", tmp_path / "c",
                     "--params", tiny_params)
    assert result.code == 2 and "different data" in result.err


def test_a_small_image_size_alone_runs_every_stage_through_complete(run_cli, tmp_path):
    """`-S data.size=8` with a folder of 8x8 images, as a user would run it: complete.rows auto keeps half the rows."""
    from tests.conftest import REPO, write_image_folder

    folder = write_image_folder(tmp_path / "images", n_per_class=20)
    d = tmp_path
    sets = [w for o in ("data.dataset=folder", f"data.folder={folder}", "data.size=8", "model.channels=8",
                        "train.epochs=1", "sample.n=4", "complete.images=2", "complete.per_image=2") for w in ("-S", o)]
    for args in [("download", "--out", d / "raw"), ("preprocess", "--raw", d / "raw", "--out", d / "p"),
                 ("train", "--data", d / "p", "--model", d / "m.pt", "--reports", d / "r"),
                 ("sample", "--model", d / "m.pt", "--out", d / "s"),
                 ("complete", "--model", d / "m.pt", "--data", d / "p", "--out", d / "c")]:
        result = run_cli(*args, "--params", REPO / "params.yaml", *sets)
        assert result.code == 0, (args[0], result.err)
    assert json.loads((d / "c" / "complete.json").read_text())["rows"] == 4
    assert np.load(d / "c" / "completions.npy").shape == (2, 2, 1, 8, 8)
    result = run_cli("complete", "--model", d / "m.pt", "--data", d / "p", "--out", d / "c2", "--params",
                     REPO / "params.yaml", *sets, "-S", "complete.rows=14")
    assert result.code == 2 and "Traceback" not in result.err
    assert "complete.rows=14 keeps all 8 rows, leaving nothing to sample: choose fewer than 8, or auto" in result.err
