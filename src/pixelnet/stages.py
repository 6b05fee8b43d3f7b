"""The pipeline stages as pure, importable functions: download, preprocess, train, sample, evaluate.

Each takes its own config section(s) and explicit paths, does its work
through the library (data, model, training, sampling, evaluation) and
returns the metrics it wrote.  The CLI commands are thin wrappers over these.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from pixelnet import distributed
from pixelnet.checkpoints import (fingerprint_changes, load_model, parse_train_state, read_train_state,
                                  save_checkpoint, save_train_state, train_fingerprint)
from pixelnet.config import CompleteConfig, DataConfig, EvaluateConfig, Params, SampleConfig
from pixelnet.data.preprocess import preprocess as preprocess_data
from pixelnet.data.processed import load_split, read_manifest, sha256_file
from pixelnet.data.rawformat import write_raw
from pixelnet.data.sources import load_source
from pixelnet.errors import PixelNetError
from pixelnet.evaluation import class_prior, completion_grid, image_grid, plot_loss_curves, side_by_side, test_nll
from pixelnet.fast_sampling import complete as complete_images
from pixelnet.fast_sampling import sample_fast, supports
from pixelnet.model import build_model, resolve_conditional
from pixelnet.quality import format_table as quality_table
from pixelnet.quality import sample_quality
from pixelnet.sampling import sample_naive, sampling_noise
from pixelnet.training import EpochRecord, Progress, batches_per_epoch, finished, fit, restore_final, select_device


def _mkdir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PixelNetError(f"cannot create output directory {path}: {e.strerror}; choose a writable location") from None
    return path


def write_json(path: Path, obj: dict) -> None:
    _mkdir(path.parent)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def make_deterministic(seed: int) -> None:
    """Seed every RNG and use deterministic kernels, so that a seeded run repeats bit for bit.

    The pipeline's reproducibility check relies on it: the same params give the
    same checkpoint hash in a fresh copy.  The data path is already single-threaded
    (one tensor, slices of a seeded permutation); on CUDA, cuBLAS needs the workspace
    setting below before its first use.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    # Determinism does not need empty tensors pre-filled with NaN (a debugging aid); on CPU that fill cost 20-30 %.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False


def download(cfg: DataConfig, *, out_dir: Path, cache_dir: Path) -> dict:
    """data/raw/<dataset>/ from the configured source."""
    raw = load_source(cfg.dataset, cache_dir=cache_dir, folder=cfg.folder)
    write_raw(raw, out_dir, name=cfg.dataset)
    counts = {"train": len(raw.train.labels), "test": len(raw.test.labels) if raw.test else 0}
    return {"dataset": cfg.dataset, "images": counts, "shape": list(raw.train.images.shape[1:])}


def preprocess(cfg: DataConfig, *, raw_dir: Path, out_dir: Path) -> dict:
    return preprocess_data(cfg, raw_dir, out_dir)


def _saved_state(path: Path | None, fingerprint: dict, dist: distributed.Dist) -> dict | None:
    """The state to continue from: rank 0 reads it and every rank gets its bytes; None to train afresh."""
    if path is None:
        return None
    data = dist.share(read_train_state(path) if dist.main else None)
    if data is None:
        return None
    say = tqdm.write if dist.main else (lambda _: None)
    try:
        state = parse_train_state(data, path)
    except PixelNetError as e:
        say(f"{e}: training afresh; the state will be overwritten")
        return None
    changes = fingerprint_changes(state["fingerprint"], fingerprint)
    if changes:
        say(f"params, data or code changed since the training state {path} was saved ({'; '.join(changes)}): "
            "training afresh; the state will be overwritten")
        return None
    return state


def _pack_steps(steps: list[dict]) -> dict:
    return {"step": torch.tensor([s["step"] for s in steps], dtype=torch.long),
            "epoch": torch.tensor([s["epoch"] for s in steps], dtype=torch.long),
            "train_bpd": torch.tensor([s["train_bpd"] for s in steps], dtype=torch.float64)}


def _unpack_steps(packed: dict) -> list[dict]:
    return [{"step": s, "epoch": e, "train_bpd": b}
            for s, e, b in zip(packed["step"].tolist(), packed["epoch"].tolist(), packed["train_bpd"].tolist())]


def train(params: Params, *, data_dir: Path, model_path: Path, reports_dir: Path, state_path: Path | None = None) -> dict:
    """Train the configured model on data_dir's train split; write the checkpoint and reports.

    With state_path, the run's full state is saved there as it goes (train.checkpoint_every, and every epoch
    end).  Started again after a kill with the same fingerprint (train_fingerprint), it resumes and ends with
    the weights and reports an uninterrupted run would have; if that run had finished, nothing is retrained
    and the outputs are written again from the state.  Other params start afresh, and say why.
    Under torchrun every process trains; rank 0 alone reads the state and writes files.
    """
    make_deterministic(params.train.seed)  # before the model is built: its initial weights are drawn too
    manifest = read_manifest(data_dir)
    train_split, val_split = load_split(data_dir, "train", manifest), load_split(data_dir, "val", manifest)
    c, h, w = manifest["shape"]
    n_classes = len(manifest["classes"]) if manifest.get("labeled") else 0
    if params.model.conditional is True and n_classes < 2:
        raise PixelNetError(f"model.conditional: true needs a labelled dataset with 2+ classes, and {data_dir} has "
                            f"{n_classes}: use one subfolder per class, or set model.conditional: auto or false")
    model_cfg = replace(params.model, levels=manifest["levels"], image_channels=c, height=h, width=w,
                        n_classes=n_classes, conditional=resolve_conditional(params.model, n_classes))
    model = build_model(model_cfg)
    with distributed.session(params.train.device, batch_size=params.train.batch_size) as (dist, device):
        if dist.main:
            _mkdir(reports_dir)
            if state_path is not None:
                _mkdir(Path(state_path).parent)
        fingerprint = train_fingerprint(params.train, model_cfg, data_dir=data_dir, world_size=dist.world_size,
                                        device=device)
        state = _saved_state(state_path, fingerprint, dist)
        steps = _unpack_steps(state["steps"]) if state is not None else []
        history = _run_training(params, model, train_split, val_split, device=device, dist=dist, state=state,
                                state_path=state_path, fingerprint=fingerprint, steps=steps)
        metrics = _write_train_outputs(params, model, model_cfg, history, steps, data_dir=data_dir,
                                       train_labels=train_split.labels, model_path=model_path,
                                       reports_dir=reports_dir) if dist.main else {}
        dist.barrier()  # every process ends once the outputs exist
    return metrics


def _run_training(params: Params, model, train_split, val_split, *, device, dist: distributed.Dist, state: dict | None,
                  state_path: Path | None, fingerprint: dict, steps: list[dict]) -> list[EpochRecord]:
    """fit, from the saved state if any, saving as it goes; or, for a finished state, its final weights."""
    cfg = params.train
    total = batches_per_epoch(len(train_split.images), cfg.batch_size) * cfg.epochs
    say = tqdm.write if dist.main else (lambda _: None)
    if state is not None:
        progress = Progress.from_state(state["progress"])
        if finished(progress, cfg):
            say(f"training already finished (step {progress.step} of {total}, {len(progress.history)} epochs) "
                f"in {state_path}: writing the model and reports again without retraining")
            restore_final(model, state)
            return progress.history
        say(f"resuming from step {progress.step} of {total} (epoch {progress.epoch}) saved in {state_path}")

    def on_save(full: dict) -> None:
        save_train_state(full | {"fingerprint": fingerprint, "steps": _pack_steps(steps)}, state_path)

    with tqdm(total=total, initial=len(steps), desc="train", unit="batch", mininterval=1.0,
              disable=not dist.main) as bar:
        def on_step(step: int, epoch: int, loss_bpd: float) -> None:
            steps.append({"step": step, "epoch": epoch, "train_bpd": loss_bpd})
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss_bpd=f"{loss_bpd:.4f}", refresh=False)

        def on_epoch(record: EpochRecord) -> None:
            say(f"epoch {record.epoch}: train {record.train_bpd:.4f} bits/dim, "
                f"val {record.val_bpd:.4f} bits/dim, {record.images_per_s:.0f} images/s")

        return fit(model, train_split, val_split, cfg, device=device, on_step=on_step, on_epoch=on_epoch,
                   on_save=on_save if state_path is not None else None, resume=state, dist=dist)


def _write_train_outputs(params: Params, model, model_cfg, history: list[EpochRecord], steps: list[dict], *,
                         data_dir: Path, train_labels: torch.Tensor, model_path: Path, reports_dir: Path) -> dict:
    pd.DataFrame(steps).to_csv(reports_dir / "steps.csv", index=False)
    pd.DataFrame([vars(r) for r in history]).to_csv(reports_dir / "epochs.csv", index=False)
    last = history[-1]
    metrics = {
        "train_bits_per_dim": last.train_bpd,
        "val_bits_per_dim": last.val_bpd,
        "train_seconds": last.elapsed_seconds,  # summed over the sessions of a resumed run
        "images_per_s": sum(r.images_per_s * r.seconds for r in history) / sum(r.seconds for r in history),
        "epochs": len(history),
        "epochs_planned": params.train.epochs,
        "budget_bound": len(history) < params.train.epochs,  # train.max_minutes stopped it: not reproducible
        "steps": last.step,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    write_json(reports_dir / "metrics.json", metrics)
    meta = {"data_manifest_sha256": sha256_file(Path(data_dir) / "manifest.json")}
    if model_cfg.conditional:  # p(y), with which a conditional model scores images without labels (PixelNetPyfunc)
        meta["class_prior"] = class_prior(train_labels, model_cfg.n_classes).tolist()
    save_checkpoint(model, model_cfg, model_path, meta=meta)
    return metrics


def sample_labels(cfg: SampleConfig, mcfg) -> tuple[torch.Tensor | None, int | None]:
    """Class labels (n,) to draw for a conditional model, and the grid's images per row.

    With sample.label set, every image is of that class.  Otherwise the classes
    take turns, image k of class k mod classes: every class is drawn equally
    often, any `classes` consecutive images hold one of each, and the grid has
    one column per class.
    """
    if not mcfg.conditional:
        if cfg.label is not None:
            raise PixelNetError(f"sample.label={cfg.label} needs a conditional model (model.conditional: true); "
                                "this model is unconditional: drop the label")
        return None, None
    if cfg.label is not None:
        if cfg.label >= mcfg.n_classes:
            raise PixelNetError(f"sample.label={cfg.label} is not a class of this model: use 0 .. {mcfg.n_classes - 1}")
        return torch.full((cfg.n,), cfg.label, dtype=torch.long), None
    return torch.arange(cfg.n) % mcfg.n_classes, mcfg.n_classes


def sample(cfg: SampleConfig, *, model_path: Path, out_dir: Path, device: str = "auto") -> dict:
    """Draw cfg.n images; write samples.npy (uint8 levels, (N, C, H, W)), labels.npy, grid.png and sample.json.

    labels.npy holds the class each image was drawn for (-1: unconditional model).
    """
    model, mcfg = load_model(model_path, device=select_device(device))
    if cfg.method == "fast" and not supports(model):
        raise PixelNetError(f"sample.method fast has no cached form for model.arch {mcfg.arch}: set sample.method=naive")
    labels, per_row = sample_labels(cfg, mcfg)
    noise = sampling_noise(cfg.n, mcfg.image_channels, mcfg.height, mcfg.width, seed=cfg.seed)
    progress = lambda rows: tqdm(rows, desc=f"sample {cfg.n} ({cfg.method})", unit="row")  # noqa: E731
    t0 = time.perf_counter()
    if cfg.method == "fast":
        images = sample_fast(model, noise, temperature=cfg.temperature, labels=labels, progress=progress)
    else:
        images = sample_naive(model, noise, temperature=cfg.temperature, labels=labels, progress=progress)
    seconds = time.perf_counter() - t0
    _mkdir(out_dir)
    np.save(out_dir / "samples.npy", images.numpy())
    np.save(out_dir / "labels.npy", (labels if labels is not None else torch.full((cfg.n,), -1)).numpy().astype(np.int64))
    image_grid(images, mcfg.levels, nrow=per_row).save(out_dir / "grid.png")
    info = {"n": cfg.n, "method": cfg.method, "temperature": cfg.temperature, "seed": cfg.seed,
            "levels": mcfg.levels, "sample_seconds": seconds, "label": cfg.label, "conditional": mcfg.conditional}
    write_json(out_dir / "sample.json", info)
    return info


def complete(cfg: CompleteConfig, *, model_path: Path, data_dir: Path, out_dir: Path, device: str = "auto") -> dict:
    """Complete cfg.images test images from their top cfg.rows rows, cfg.per_image times each.

    The images are spread evenly through the test split (splits may be sorted
    by class, and the first ones would then all show one class).

    Writes completions.npy (uint8 levels, (N, K, C, H, W)), completions.png
    (original | top rows only | completions, one line per image) and complete.json.
    """
    model, mcfg = load_model(model_path, device=select_device(device))
    if not supports(model):
        raise PixelNetError(f"completion uses the fast sampler, which has no cached form for model.arch {mcfg.arch}")
    manifest = read_manifest(data_dir)
    if manifest["levels"] != mcfg.levels or list(manifest["shape"]) != [mcfg.image_channels, mcfg.height, mcfg.width]:
        raise PixelNetError(f"model {model_path} was trained on different data than {data_dir}: train again")
    if cfg.rows >= mcfg.height:
        raise PixelNetError(f"complete.rows={cfg.rows} keeps all {mcfg.height} rows, leaving nothing to sample: "
                            f"choose fewer than {mcfg.height}")
    test = load_split(data_dir, "test", manifest)
    count = min(cfg.images, len(test.images))
    index = torch.arange(count) * len(test.images) // count  # evenly spaced, first one included
    images, labels = test.images[index], test.labels[index]
    t0 = time.perf_counter()
    completions = complete_images(
        model, images, rows=cfg.rows, completions=cfg.per_image, seed=cfg.seed, temperature=cfg.temperature,
        labels=labels if mcfg.conditional else None,
        progress=lambda rows: tqdm(rows, desc=f"complete {len(images)}x{cfg.per_image}", unit="row"),
    )
    seconds = time.perf_counter() - t0
    _mkdir(out_dir)
    np.save(out_dir / "completions.npy", completions.numpy())
    completion_grid(images, completions, rows=cfg.rows, levels=mcfg.levels).save(out_dir / "completions.png")
    info = {"images": len(images), "per_image": cfg.per_image, "rows": cfg.rows, "temperature": cfg.temperature,
            "seed": cfg.seed, "levels": mcfg.levels, "complete_seconds": seconds, "test_indices": index.tolist()}
    write_json(out_dir / "complete.json", info)
    return info


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
    tqdm.write(quality_table(scores))
    return scores


def evaluate(
    cfg: EvaluateConfig, *, model_path: Path, data_dir: Path, samples_path: Path, train_reports: Path, out_dir: Path
) -> dict:
    """Test NLL, loss curves, and the samples beside real test images."""
    device = select_device("auto")
    model, mcfg = load_model(model_path, device=device)
    manifest = read_manifest(data_dir)
    test = load_split(data_dir, "test", manifest)
    if manifest["levels"] != mcfg.levels or list(manifest["shape"]) != [mcfg.image_channels, mcfg.height, mcfg.width]:
        raise PixelNetError(f"model {model_path} was trained on different data than {data_dir}: train again")
    prior = class_prior(load_split(data_dir, "train", manifest).labels, mcfg.n_classes) if mcfg.conditional else None
    metrics = test_nll(model, test.images, batch_size=cfg.batch_size, device=device, labels=test.labels, prior=prior)
    metrics["test_images"] = len(test.images)
    _mkdir(out_dir)
    try:
        samples = np.load(samples_path, allow_pickle=False)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise PixelNetError(f"cannot read samples {samples_path} ({e}); run `pixelnet sample` first") from None
    if samples.ndim != 4 or list(samples.shape[1:]) != list(manifest["shape"]) or samples.max(initial=0) >= mcfg.levels:
        raise PixelNetError(f"samples {samples_path} {samples.shape} do not fit the model (levels {mcfg.levels}, "
                            f"shape {manifest['shape']}); run `pixelnet sample` with this model")
    labels_path = Path(samples_path).parent / "labels.npy"  # written beside samples.npy by `sample`
    labels = np.load(labels_path, allow_pickle=False) if labels_path.is_file() else None
    metrics.update(sample_scores(samples, data_dir=data_dir, manifest=manifest, test=test, levels=mcfg.levels,
                                 labels=labels))
    real = test.images[: cfg.grid_n]
    side_by_side(image_grid(samples[: cfg.grid_n], mcfg.levels), image_grid(real, mcfg.levels)).save(
        out_dir / "samples_vs_real.png")
    try:
        steps = pd.read_csv(Path(train_reports) / "steps.csv")
        epochs = pd.read_csv(Path(train_reports) / "epochs.csv")
    except (FileNotFoundError, pd.errors.ParserError) as e:
        raise PixelNetError(f"cannot read training reports in {train_reports} ({e}); run `pixelnet train` first") from None
    plot_loss_curves(steps, epochs, out_dir / "loss_curves.png")
    write_json(out_dir / "metrics.json", metrics)
    return metrics
