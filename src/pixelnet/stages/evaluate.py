"""The evaluate stage: test bits/dim, the samples' quality by a classifier, and the figures.

Writes metrics.json (deterministic), samples_vs_real.png and loss_curves.png.
metrics.json records the sha256 of the model file it was computed for
(`model_sha256`), so that a figure shown beside a model (`pixelnet serve`) is
shown only for that model's bytes.
With --mlflow it also decides whether the model version becomes `champion`
(tracking/registry.py) and writes that decision to champion.json, which is
not a DVC output: it depends on the registry, not only on the stage's inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer
from tqdm.auto import tqdm

from pixelnet.checkpoint import load_model
from pixelnet.command import MlflowOpt, ParamsOpt, SetOpt, report_stage, run_command
from pixelnet.config import EvaluateConfig, load_params
from pixelnet.data.processed import check_fits, load_split, read_manifest
from pixelnet.device import select_device
from pixelnet.errors import PixelNetError
from pixelnet.evaluation.figures import class_grid, classes_in_turn, plot_loss_curves, side_by_side
from pixelnet.evaluation.nll import heldout_nll
from pixelnet.evaluation.quality import format_table, sample_quality
from pixelnet.files import make_dir, sha256_file, write_json
from pixelnet.model.likelihood import class_prior


def sample_scores(samples: np.ndarray, *, data_dir: Path, manifest: dict, test, levels: int,
                  labels: np.ndarray | None = None) -> dict:
    """The classifier's scores of the samples and of real images (quality.py), or a note for unlabelled data.

    labels: the classes conditional samples were drawn for (-1 where unconditional).
    """
    classes = manifest.get("classes") or []
    if not manifest.get("labeled") or len(classes) < 2 or len(samples) < 2:
        return {"quality_note": "skipped: sample scores need a labelled dataset with 2+ classes and 2+ samples"}
    scores = sample_quality(torch.from_numpy(samples), train=load_split(data_dir, "train", manifest),
                            val=load_split(data_dir, "val", manifest), test=test, levels=levels, n_classes=len(classes),
                            sample_labels=torch.from_numpy(labels) if labels is not None and (labels >= 0).all() else None)
    tqdm.write(format_table(scores))
    return scores


def read_samples(samples_path: Path, manifest: dict, levels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """samples.npy, checked against the model, and the labels.npy beside it (None if absent)."""
    try:
        samples = np.load(samples_path, allow_pickle=False)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise PixelNetError(f"cannot read samples {samples_path} ({e}); run `pixelnet sample` first") from None
    if samples.ndim != 4 or list(samples.shape[1:]) != list(manifest["shape"]) or samples.max(initial=0) >= levels:
        raise PixelNetError(f"samples {samples_path} {samples.shape} do not fit the model (levels {levels}, "
                            f"shape {manifest['shape']}); run `pixelnet sample` with this model")
    labels_path = Path(samples_path).parent / "labels.npy"  # written beside samples.npy by `sample`
    return samples, np.load(labels_path, allow_pickle=False) if labels_path.is_file() else None


def figure_halves(samples: np.ndarray, labels: np.ndarray | None, test, manifest: dict, *, grid_n: int,
                  levels: int) -> tuple:
    """samples_vs_real's halves: the first grid_n samples, and as many test images laid out alike.

    When the samples' classes take turns (a conditional model), the real images do too, so each column
    holds one class on both sides; otherwise the real images are a seeded random draw (the test split may
    be stored in class order, and its first images would all show one class).
    """
    shown = samples[:grid_n]
    classes = list(manifest.get("classes") or [])
    turns = labels is not None and len(classes) >= 2 and (labels[:grid_n] == np.arange(len(shown)) % len(classes)).all()
    if turns:
        real = test.images[classes_in_turn(test.labels, len(shown), len(classes))]
    else:
        real = test.images[np.random.default_rng(0).permutation(len(test.images))[:len(shown)]]
    names = classes if turns else None
    return class_grid(shown, levels, classes=names), class_grid(real, levels, classes=names)


def evaluate(
    cfg: EvaluateConfig, *, model_path: Path, data_dir: Path, samples_path: Path, train_reports: Path, out_dir: Path
) -> dict:
    """Test NLL, loss curves, and the samples beside real test images."""
    device = select_device("auto")
    model, mcfg = load_model(model_path, device=device)
    manifest = read_manifest(data_dir)
    test = load_split(data_dir, "test", manifest)
    check_fits(manifest, mcfg, model_path=model_path, data_dir=data_dir)
    prior = class_prior(load_split(data_dir, "train", manifest).labels, mcfg.n_classes) if mcfg.conditional else None
    metrics = heldout_nll(model, test.images, batch_size=cfg.batch_size, device=device, labels=test.labels, prior=prior)
    metrics["test_images"] = len(test.images)
    metrics["model_sha256"] = sha256_file(model_path)  # whose figures these are (serve/main.py reads it)
    make_dir(out_dir)
    samples, labels = read_samples(samples_path, manifest, mcfg.levels)
    metrics.update(sample_scores(samples, data_dir=data_dir, manifest=manifest, test=test, levels=mcfg.levels,
                                 labels=labels))
    side_by_side(*figure_halves(samples, labels, test, manifest, grid_n=cfg.grid_n, levels=mcfg.levels)).save(
        out_dir / "samples_vs_real.png")
    try:
        steps = pd.read_csv(Path(train_reports) / "steps.csv")
        epochs = pd.read_csv(Path(train_reports) / "epochs.csv")
    except (FileNotFoundError, pd.errors.ParserError) as e:
        raise PixelNetError(f"cannot read training reports in {train_reports} ({e}); run `pixelnet train` first") from None
    plot_loss_curves(steps, epochs, out_dir / "loss_curves.png")
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def command(
    model: Annotated[Path, typer.Option(help="checkpoint to evaluate")],
    data: Annotated[Path, typer.Option(help="preprocessed data directory (its test split is used)")],
    samples: Annotated[Path, typer.Option(help="samples.npy written by `sample`")],
    train_reports: Annotated[Path, typer.Option(help="the training reports directory (steps.csv, epochs.csv)")],
    out: Annotated[Path, typer.Option(help="directory for metrics.json and figures")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    mlflow: MlflowOpt = False,
) -> None:
    """Test NLL in bits/dim, loss curves, and samples beside real test images (params: evaluate)."""
    cfg = load_params(params, set_).evaluate
    work = lambda: evaluate(cfg, model_path=model, data_dir=data, samples_path=samples,  # noqa: E731
                            train_reports=train_reports, out_dir=out)
    report_stage("evaluate", work, mlflow=mlflow, model_path=model, samples_path=samples, out_dir=out, params=cfg,
                 images={"samples_vs_real": "samples_vs_real.png", "loss_curves": "loss_curves.png"}, champion=True)


if __name__ == "__main__":
    run_command(command, prog="pixelnet evaluate")
