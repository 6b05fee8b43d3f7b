"""Every command through the CLI on a 16-image fixture, and bad input as clean errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pixelnet.files import sha256_file
from pixelnet.serve.main import model_facts
from tests.conftest import REPO, write_params


def run_all(run_cli, tmp_path, params, folder):
    d = tmp_path
    steps = [
        ("download", "--params", params, "--out", d / "raw", "-S", f"data.folder={folder}"),
        ("preprocess", "--params", params, "--raw", d / "raw", "--out", d / "processed"),
        ("train", "--params", params, "--data", d / "processed", "--model", d / "model.pt", "--reports", d / "train"),
        ("sample", "--params", params, "--model", d / "model.pt", "--out", d / "samples"),
        ("evaluate", "--params", params, "--model", d / "model.pt", "--data", d / "processed",
         "--samples", d / "samples" / "samples.npy", "--train-reports", d / "train", "--out", d / "eval"),
    ]
    for args in steps:
        result = run_cli(*args)
        assert result.code == 0, (args[0], result.err)
    return d


def recomputed_test_bits_per_dim(d) -> tuple[float, float | None]:
    """Test bits/dim from the checkpoint and the test split, computed here from the logits: (of the images,
    given the label or None), to hold evaluate's figures against."""
    import torch
    from torch.nn import functional as F

    from pixelnet.checkpoint import load_model, read_checkpoint
    from pixelnet.data.processed import load_split

    model, cfg = load_model(d / "model.pt")
    test = load_split(d / "processed", "test")
    x = test.images.long()
    dims = x.numel()

    def nats(out):  # (N,) per image: cross-entropy of the logits; a mixture's own NLL (brute-forced in test_mixture.py)
        if cfg.head == "softmax":
            return F.cross_entropy(out, x, reduction="none").flatten(1).sum(1).double()
        return model.distribution.nll(out, x, reduction="none").view(len(x), -1).sum(1).double()

    with torch.no_grad():
        if not cfg.conditional:
            return float(nats(model(x)).sum()) / (dims * math.log(2)), None
        per_class = torch.stack([nats(model(x, torch.full((len(x),), k))) for k in range(cfg.n_classes)],
                                dim=1)  # (N, classes)
    prior = torch.tensor(read_checkpoint(d / "model.pt")["meta"]["class_prior"], dtype=torch.float64)
    marginal = -torch.logsumexp(prior.log() - per_class, dim=1).sum()
    given = per_class.gather(1, test.labels[:, None]).sum()
    return float(marginal) / (dims * math.log(2)), float(given) / (dims * math.log(2))


def test_every_command_on_a_16_image_fixture(run_cli, tmp_path, tiny_params, image_folder):
    d = run_all(run_cli, tmp_path, tiny_params, image_folder)
    manifest = json.loads((d / "processed" / "manifest.json").read_text())
    assert manifest["levels"] == 4 and manifest["shape"] == [1, 8, 8]
    assert sum(s["count"] for s in manifest["splits"].values()) == 16
    samples = np.load(d / "samples" / "samples.npy")
    assert samples.shape == (4, 1, 8, 8) and samples.dtype == np.uint8 and samples.max() <= 3
    for f in ["model.pt", "train/metrics.json", "train/steps.csv", "train/epochs.csv", "samples/grid.png",
              "eval/metrics.json", "eval/loss_curves.png", "eval/samples_vs_real.png"]:
        assert (d / f).is_file(), f
    metrics = json.loads((d / "eval" / "metrics.json").read_text())
    bpd, given = recomputed_test_bits_per_dim(d)
    assert metrics["test_bits_per_dim"] == pytest.approx(bpd, rel=1e-5)
    if given is not None:  # a folder with classes: params.yaml's model.conditional auto makes the model conditional
        assert metrics["test_bits_per_dim_given_label"] == pytest.approx(given, rel=1e-5)
    assert metrics["test_nats_per_image"] == pytest.approx(metrics["test_bits_per_dim"] * 64 * np.log(2))
    assert metrics["model_sha256"] == sha256_file(d / "model.pt")  # whose figures these are: serve shows them for it
    shown = model_facts(str(d / "model.pt"), d / "model.pt", d / "eval" / "metrics.json")
    assert shown["test_bits_per_dim"] == metrics["test_bits_per_dim"]


def test_a_folder_of_photos_of_every_size_goes_through_every_command(run_cli, tmp_path, tiny_params):
    from tests.test_core_data import photos

    folder = photos(tmp_path / "photos")
    for cls in ("wide", "tall"):  # enough images for three splits of two classes
        for i in range(6):
            h, w = 10 + 3 * i, 30 - 2 * i
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                folder / cls / f"extra{i}.png")
    d = run_all(run_cli, tmp_path, tiny_params, folder)
    manifest = json.loads((d / "processed" / "manifest.json").read_text())
    assert manifest["shape"] == [3, 8, 8] and manifest["classes"] == ["tall", "wide"]
    assert np.load(d / "samples" / "samples.npy").shape == (4, 3, 8, 8)
    assert json.loads((d / "eval" / "metrics.json").read_text())["test_bits_per_dim"] > 0


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "pixelnet", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "preprocess" in out.stdout


def assert_clean_error(result, *needles):
    assert result.code != 0
    assert "Traceback" not in result.err and "Traceback" not in result.out
    for needle in needles:
        assert needle in result.err, result.err


@pytest.mark.parametrize("override, needles", [
    ("data.dataset=imagenet", ["data.dataset must be one of", "'imagenet'"]),
    ("data.levels=1", ["data.levels must be between 2 and 256"]),
    ("model.kernel=4", ["model.kernel must be an odd integer"]),
    ("model.head=gaussian", ["model.head must be one of", "logistic_mixture"]),
    ("model.mixtures=0", ["model.mixtures must be >= 1"]),
    ("model.norm=weight", ["model.norm must be auto, weight or none for pixelcnnpp", "batch or none for pixelcnn"]),
    ("model.dropout=1", ["model.dropout must be in [0, 1)"]),
    ("train.lr_decay=1.5", ["train.lr_decay must be in (0, 1]"]),
    ("train.lr=fast", ["train.lr must be a number"]),
    ("train.epoch=3", ["unknown parameter train.epoch", "epochs"]),
])
def test_bad_params_are_clean_errors(run_cli, tmp_path, tiny_params, override, needles):
    result = run_cli("download", "--params", tiny_params, "--out", tmp_path / "raw", "-S", override)
    assert_clean_error(result, *needles, str(tiny_params))
    assert not (tmp_path / "raw").exists()


def test_missing_and_empty_folders(run_cli, tmp_path, tiny_params):
    result = run_cli("download", "--params", tiny_params, "--out", tmp_path / "raw", "-S", f"data.folder={tmp_path / 'nope'}")
    assert_clean_error(result, "nope", "does not exist")
    (tmp_path / "empty").mkdir()
    result = run_cli("download", "--params", tiny_params, "--out", tmp_path / "raw", "-S", f"data.folder={tmp_path / 'empty'}")
    assert_clean_error(result, "holds no PNG/JPEG images")
    assert not (tmp_path / "raw").exists()


def test_unreadable_image_is_named(run_cli, tmp_path, tiny_params, image_folder):
    (image_folder / "a" / "zz.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    result = run_cli("download", "--params", tiny_params, "--out", tmp_path / "raw", "-S", f"data.folder={image_folder}")
    assert_clean_error(result, "zz.jpg")
    assert not (tmp_path / "raw").exists()


def test_missing_params_file_and_debug_traceback(run_cli, tmp_path):
    result = run_cli("download", "--params", tmp_path / "nope.yaml", "--out", tmp_path / "raw")
    assert_clean_error(result, "nope.yaml", "not found")
    with pytest.raises(Exception, match="nope.yaml"):
        run_cli("--debug", "download", "--params", tmp_path / "nope.yaml", "--out", tmp_path / "raw")


def test_offline_download_names_the_default_and_the_folder(run_cli, tmp_path, tiny_params, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    result = run_cli("download", "--params", tiny_params, "--dataset", "fashion-mnist",
                     "--out", tmp_path / "raw", "--cache", tmp_path / "ext")
    assert_clean_error(result, "could not download fashion-mnist", "mnist-5k", str(tmp_path / "ext" / "FashionMNIST" / "raw"))
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("arch", ["gated", "pixelcnnpp"])
@pytest.mark.parametrize("head", ["softmax", "logistic_mixture"])
def test_conditional_colour_run_through_every_command(run_cli, tmp_path, head, arch):
    """The colour path end to end: an RGB folder with classes, Gated PixelCNN or PixelCNN++, class-conditional,
    either head."""
    from tests.conftest import write_image_folder

    folder = write_image_folder(tmp_path / "rgb", mode="RGB", classes=("red", "green", "blue"), n_per_class=6)
    params = tmp_path / "params.yaml"
    size = "resnet_layers: 1" if arch == "pixelcnnpp" else "blocks: 1, first_kernel: 3, kernel: 3"
    write_params(
        params,
        "data: {dataset: folder, size: 6, levels: 4, val_fraction: 0.2, test_fraction: 0.2}\n"
        f"model: {{arch: {arch}, conditional: true, channels: 12, head: {head}, {size}}}\n"
        "train: {epochs: 1, batch_size: 4, lr: 0.01, seed: 0, device: cpu}\n"
        "sample: {n: 6, temperature: 1.0, seed: 0}\n"
        "evaluate: {batch_size: 8, grid_n: 6}\n"
    )
    d = run_all(run_cli, tmp_path, params, folder)
    samples = np.load(d / "samples" / "samples.npy")
    assert samples.shape == (6, 3, 6, 6) and samples.max() <= 3
    assert np.load(d / "samples" / "labels.npy").tolist() == [0, 1, 2, 0, 1, 2]
    metrics = json.loads((d / "eval" / "metrics.json").read_text())
    bpd, given = recomputed_test_bits_per_dim(d)
    assert metrics["test_bits_per_dim"] == pytest.approx(bpd, rel=1e-5)
    assert metrics["test_bits_per_dim_given_label"] == pytest.approx(given, rel=1e-5)
    # -log p(x) = -log sum_y p(y) p(x | y) is at most log(3) nats above -log p(x | y) - log p(y) for the true y.
    dims = 3 * 6 * 6
    assert metrics["test_bits_per_dim"] < metrics["test_bits_per_dim_given_label"] + math.log2(3) / dims + 1e-6
    # 6 samples, two of each class: each class's share recognized is 0, 1/2 or 1, and the overall share their mean.
    per_class = [metrics[f"samples_label_match_class_{k}"] for k in range(3)]
    assert all(v in (0.0, 0.5, 1.0) for v in per_class)
    assert metrics["samples_label_match"] == pytest.approx(sum(per_class) / 3)
    from pixelnet.checkpoint import read_checkpoint
    from pixelnet.data.processed import load_split

    train_labels = load_split(d / "processed", "train").labels
    expected = (np.bincount(train_labels.numpy(), minlength=3) / len(train_labels)).tolist()
    assert read_checkpoint(d / "model.pt")["meta"]["class_prior"] == pytest.approx(expected)


def test_conditional_on_unlabelled_folder_is_a_clean_error(run_cli, tmp_path, tiny_params):
    from PIL import Image

    (tmp_path / "flat").mkdir()
    for i in range(8):
        Image.fromarray(np.full((8, 8), i * 30, np.uint8)).save(tmp_path / "flat" / f"{i}.png")
    d = tmp_path
    assert run_cli("download", "--params", tiny_params, "--out", d / "raw", "-S", f"data.folder={d / 'flat'}").code == 0
    assert run_cli("preprocess", "--params", tiny_params, "--raw", d / "raw", "--out", d / "p").code == 0
    result = run_cli("train", "--params", tiny_params, "--data", d / "p", "--model", d / "m.pt", "--reports", d / "r",
                     "-S", "model.conditional=true")
    assert_clean_error(result, "model.conditional: true needs a labelled dataset", "model.conditional: auto or false")
    assert not (d / "m.pt").exists()
    # auto (params.yaml's default) trains an unconditional model on unlabelled data.
    result = run_cli("train", "--params", tiny_params, "--data", d / "p", "--model", d / "m.pt", "--reports", d / "r",
                     "-S", "model.conditional=auto")
    assert result.code == 0, result.err
    from pixelnet.checkpoint import load_model

    assert load_model(d / "m.pt")[1].conditional is False
