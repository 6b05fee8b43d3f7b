"""The train stage: the model, its resume state, and the training reports.

Writes the checkpoint (models/model.pt), reports/train/metrics.json,
steps.csv and epochs.csv (deterministic: the same params, data and code give
the same bytes) and timing.json (wall-clock figures, which nothing downstream
reads).  A killed run resumes from its state file (training/resume.py).
"""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer
from tqdm.auto import tqdm

from pixelnet.checkpoint import save_checkpoint
from pixelnet.command import ParamsOpt, SetOpt, load_params, report, run_command
from pixelnet.config import Params
from pixelnet.data.processed import load_split, read_manifest
from pixelnet.errors import PixelNetError
from pixelnet.files import make_dir, sha256_file, write_json
from pixelnet.model import ModelConfig
from pixelnet.model.build import build_model
from pixelnet.model.likelihood import class_prior
from pixelnet.training import distributed
from pixelnet.training.loop import READ_EVERY, batches_per_epoch, fit
from pixelnet.training.precision import emulated_bf16_warning, resolve_precision
from pixelnet.training.resume import (
    TIMING_FIELDS,
    EpochRecord,
    Progress,
    finished,
    pack_steps,
    restore_final,
    save_train_state,
    saved_state,
    train_fingerprint,
    unpack_steps,
)


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
    # Determinism does not need empty tensors pre-filled with NaN (a debugging aid), which costs time on a CPU.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False


def model_config_for(params: Params, manifest: dict, data_dir: Path) -> ModelConfig:
    """The model params resolved against the data: its levels, shape and classes."""
    c, h, w = manifest["shape"]
    n_classes = len(manifest["classes"]) if manifest.get("labeled") else 0
    if params.model.conditional is True and n_classes < 2:
        raise PixelNetError(f"model.conditional: true needs a labelled dataset with 2+ classes, and {data_dir} has "
                            f"{n_classes}: use one subfolder per class, or set model.conditional: auto or false")
    return ModelConfig.for_data(params.model, levels=manifest["levels"], image_channels=c, height=h, width=w,
                                n_classes=n_classes)


def train(params: Params, *, data_dir: Path, model_path: Path, reports_dir: Path, state_path: Path | None = None) -> dict:
    """Train the configured model on data_dir's train split; write the checkpoint and reports.

    With state_path, the run's full state is saved there as it goes (train.checkpoint_every, and every epoch
    end).  Started again after a kill with the same fingerprint (train_fingerprint), it resumes and ends with
    the weights and reports an uninterrupted run would have; if that run had finished, nothing is retrained
    and the outputs are written again from the state.  Other params start afresh, and say why.
    Under torchrun every process trains; rank 0 alone reads the state and writes files.
    Returns metrics.json's values and timing.json's.
    """
    make_deterministic(params.train.seed)  # before the model is built: its initial weights are drawn too
    manifest = read_manifest(data_dir)
    train_split, val_split = load_split(data_dir, "train", manifest), load_split(data_dir, "val", manifest)
    model_cfg = model_config_for(params, manifest, data_dir)
    model = build_model(model_cfg)
    with distributed.session(params.train.device, batch_size=params.train.batch_size) as (dist, device):
        warning = emulated_bf16_warning(params.train.precision, device)
        if warning and dist.main:
            tqdm.write(warning, file=sys.stderr)
        # From here on train.precision is what this device runs ("auto" resolved): the fingerprint and reports say so.
        params = replace(params, train=replace(params.train, precision=resolve_precision(params.train.precision,
                                                                                         device)))
        if dist.main:
            make_dir(reports_dir)
            if state_path is not None:
                make_dir(Path(state_path).parent)
        fingerprint = train_fingerprint(params.train, model_cfg, data_dir=data_dir, world_size=dist.world_size,
                                        device=device)
        say = tqdm.write if dist.main else (lambda _: None)
        state = saved_state(state_path, fingerprint, dist, say=say)
        steps = unpack_steps(state["steps"]) if state is not None else []
        history = _run_training(params, model, train_split, val_split, device=device, dist=dist, state=state,
                                state_path=state_path, fingerprint=fingerprint, steps=steps)
        metrics = _write_train_outputs(params, model, model_cfg, history, steps, data_dir=data_dir,
                                       train_labels=train_split.labels, model_path=model_path,
                                       reports_dir=reports_dir) if dist.main else {}
        dist.barrier()  # every process ends once the outputs exist
    return metrics


def _run_training(params: Params, model, train_split, val_split, *, device, dist: distributed.Dist,
                  state: dict | None, state_path: Path | None, fingerprint: dict, steps: list[dict]) -> list[EpochRecord]:
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
        save_train_state(full | {"fingerprint": fingerprint, "steps": pack_steps(steps)}, state_path)

    started, first = time.perf_counter(), len(steps)
    with tqdm(total=total, initial=len(steps), desc="train", unit="batch", mininterval=1.0,
              disable=not dist.main) as bar:
        def on_step(step: int, epoch: int, loss_bpd: float) -> None:
            steps.append({"step": step, "epoch": epoch, "train_bpd": loss_bpd})
            if step - first == min(READ_EVERY, total - first):  # the session's first read of the losses
                say(pace_line(cfg, done=step - first, left=total - step, seconds=time.perf_counter() - started))
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss_bpd=f"{loss_bpd:.4f}", refresh=False)

        def on_epoch(record: EpochRecord, _validated) -> None:
            say(f"epoch {record.epoch}: train {record.train_bpd:.4f} bits/dim, "
                f"val {record.val_bpd:.4f} bits/dim, {record.images_per_s:.0f} images/s")

        return fit(model, train_split, val_split, cfg, device=device, on_step=on_step, on_epoch=on_epoch,
                   on_save=on_save if state_path is not None else None, resume=state, dist=dist)


# The later stages (sample, complete, evaluate) cost about as much as training this many images (78 s at 85
# images/s in the default run: docs/pipeline.md): what the pace line adds for them.
LATER_STAGES_IMAGES = 6700


def pace_line(cfg, *, done: int, left: int, seconds: float) -> str:
    """The one plain line the stage prints once the pace is known: the time left, and how to look sooner."""
    pace = done * cfg.batch_size / max(seconds, 1e-9)  # images/s so far, start-up included
    train_s = left * cfg.batch_size / pace
    later_s = LATER_STAGES_IMAGES / pace
    short = max(1, round(cfg.epochs * 120 / max(train_s, 1e-9))) if train_s > 300 else None
    tip = (f"; for a first look in a few minutes, set train.epochs={short} (dvc exp run -S train.epochs={short}), "
           "or train.max_minutes" if short and short < cfg.epochs else "")
    return (f"pace: {pace:.1f} images/s over the first {done} steps: training needs about {_minutes(train_s)} more, "
            f"and sample, complete and evaluate about {_minutes(later_s)}{tip}")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _write_train_outputs(params: Params, model, model_cfg: ModelConfig, history: list[EpochRecord],
                         steps: list[dict], *, data_dir: Path, train_labels: torch.Tensor, model_path: Path,
                         reports_dir: Path) -> dict:
    epochs = pd.DataFrame([vars(r) for r in history])
    pd.DataFrame(steps).to_csv(reports_dir / "steps.csv", index=False)
    epochs.drop(columns=list(TIMING_FIELDS)).to_csv(reports_dir / "epochs.csv", index=False)
    last = history[-1]
    metrics = {
        "train_bits_per_dim": last.train_bpd,
        "val_bits_per_dim": last.val_bpd,
        "epochs": len(history),
        "epochs_planned": params.train.epochs,
        "budget_bound": len(history) < params.train.epochs,  # train.max_minutes stopped it: not reproducible
        "steps": last.step,
        "parameters": sum(p.numel() for p in model.parameters()),
        "precision": params.train.precision,  # train.precision as resolved for the device (training/precision.py)
    }
    timing = {
        "train_seconds": last.elapsed_seconds,  # summed over the sessions of a resumed run
        "images_per_s": sum(r.images_per_s * r.seconds for r in history) / sum(r.seconds for r in history),
        "by_epoch": epochs[["epoch", *TIMING_FIELDS]].to_dict(orient="records"),
    }
    write_json(reports_dir / "metrics.json", metrics)
    write_json(reports_dir / "timing.json", timing)
    meta = {"data_manifest_sha256": sha256_file(Path(data_dir) / "manifest.json")}
    if model_cfg.conditional:  # p(y), with which a conditional model scores images without labels (tracking.pyfunc)
        meta["class_prior"] = class_prior(train_labels, model_cfg.n_classes).tolist()
    save_checkpoint(model, model_cfg, model_path, meta=meta)
    return metrics | {k: v for k, v in timing.items() if k != "by_epoch"}


def command(
    data: Annotated[Path, typer.Option(help="preprocessed data directory")],
    model: Annotated[Path, typer.Option(help="checkpoint file to write, e.g. models/model.pt")],
    reports: Annotated[Path, typer.Option(help="directory for metrics.json, steps.csv, epochs.csv, timing.json")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    validation: Annotated[Path | None, typer.Option(
        help="validation report directory written by `validate`: refuse data that failed or skipped it")] = None,
    mlflow: Annotated[bool, typer.Option(
        "--mlflow", help="track the run in MLflow and register the model")] = False,
    state: Annotated[Path | None, typer.Option(
        help="the resume state, saved as training goes and resumed after a kill "
             "[default: beside --model, MODEL's name with .state.pt]")] = None,
) -> None:
    """Train the model (params: model, train) and save a checkpoint; resumes a killed run from --state.

    Under `torchrun --nproc_per_node N -m pixelnet.stages.train ...` it trains data-parallel; rank 0 alone
    writes files and tracks in MLflow.
    """
    p = load_params(params, set_)
    if validation is not None:
        from pixelnet.data.validation import check_validated

        check_validated(validation, data)
    state = state if state is not None else model.with_name(f"{model.stem}.state.pt")
    work = lambda: train(p, data_dir=data, model_path=model, reports_dir=reports, state_path=state)  # noqa: E731
    if not distributed.is_main_process():
        work()  # the other ranks of a torchrun job compute only: rank 0 reports, writes and tracks
        return
    if not mlflow:
        report(work())
        return
    from pixelnet.tracking.runs import track_train

    report(track_train(p, data_dir=data, reports_dir=reports, model_path=model, validation_dir=validation, train=work))


if __name__ == "__main__":
    run_command(command, prog="pixelnet train")
