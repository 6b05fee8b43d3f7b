"""The train stage: the model, its resume state, and the training reports.

Writes the checkpoint, metrics.json, steps.csv and epochs.csv (deterministic: the same params, data and code
give the same bytes) and timing.json (wall-clock figures, which nothing downstream reads).  As it trains it
saves the run's full state (training/loop.py's `capture`) with the run's fingerprint and step log to --state;
a run started again with the same fingerprint (`train_fingerprint`) resumes from it and ends as the
uninterrupted run would, while any change trains afresh and says why.  Under torchrun (`session`) every
process trains; rank 0 alone reads the state, writes files and talks to MLflow.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import torch.distributed as torch_dist
import typer
from tqdm.auto import tqdm

from pixelnet.checkpoint import atomic_torch_save, save_checkpoint
from pixelnet.command import ParamsOpt, SetOpt, report, run_command
from pixelnet.config import Params, TrainConfig, load_params
from pixelnet.data.processed import load_split, read_manifest
from pixelnet.device import select_device
from pixelnet.errors import ConfigError, PixelNetError
from pixelnet.files import make_dir, sha256_file, write_json
from pixelnet.model import ModelConfig
from pixelnet.model.build import build_model
from pixelnet.model.likelihood import class_prior
from pixelnet.training.loop import (
    READ_EVERY,
    STATE_FORMAT,
    Dist,
    EpochRecord,
    Progress,
    batches_per_epoch,
    emulated_bf16_warning,
    finished,
    fit,
    resolve_precision,
)

# EpochRecord's wall-clock fields: they differ between two runs of the same params, so timing.json keeps them.
TIMING_FIELDS = ("seconds", "images_per_s", "elapsed_seconds")
# train params that leave the weights alone: how often the state is saved, the device's name (its kind is
# fingerprinted), and the time budget, which is checked again on every start against the saved training time.
NOT_FINGERPRINTED = {"checkpoint_every", "device", "max_minutes"}
# Loaded modules that cannot change a run's weights: the entry points, and MLflow logging, which runs around it.
NOT_TRAINING_CODE = ("pixelnet.cli", "pixelnet.__main__", "pixelnet.tracking")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # src/pixelnet
TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
# The later stages (sample, complete, evaluate) cost about as much as training this many images (78 s at 85
# images/s in the default run: docs/pipeline.md): what the pace line adds for them.
LATER_STAGES_IMAGES = 6700


def train(params: Params, *, data_dir: Path, model_path: Path, reports_dir: Path, state_path: Path) -> dict:
    """Train the configured model on data_dir's train split; write the checkpoint and reports.

    The run's full state is saved to state_path as it goes.  Started again after a kill with the same
    fingerprint, it resumes; if that run had finished, nothing is retrained and the outputs are written again
    from the state.  Returns metrics.json's values and timing.json's.
    """
    make_deterministic(params.train.seed)  # before the model is built: its initial weights are drawn too
    manifest = read_manifest(data_dir)
    train_split, val_split = load_split(data_dir, "train", manifest), load_split(data_dir, "val", manifest)
    model_cfg = model_config_for(params, manifest, data_dir)
    model = build_model(model_cfg)
    with session(params.train.device, batch_size=params.train.batch_size) as dist:
        device = dist.device
        warning = emulated_bf16_warning(params.train.precision, device)
        if warning and dist.main:
            tqdm.write(warning, file=sys.stderr)
        # From here on train.precision is what this device runs ("auto" resolved): the fingerprint and reports say so.
        params = params.replace(train=params.train.replace(precision=resolve_precision(params.train.precision, device)))
        if dist.main:
            make_dir(reports_dir)
            make_dir(Path(state_path).parent)
        fingerprint = train_fingerprint(params.train, model_cfg, data_dir=data_dir, world_size=dist.world_size,
                                        device=device)
        say = tqdm.write if dist.main else (lambda _: None)
        state = saved_state(state_path, fingerprint, dist, say=say)
        steps = unpack_steps(state["steps"]) if state is not None else []
        history = _run_training(params.train, model, train_split, val_split, dist=dist, state=state,
                                state_path=state_path, fingerprint=fingerprint, steps=steps, say=say)
        metrics = _write_train_outputs(params, model, model_cfg, history, steps, data_dir=data_dir,
                                       train_labels=train_split.labels, model_path=model_path,
                                       reports_dir=reports_dir) if dist.main else {}
        dist.barrier()  # every process ends once the outputs exist
    return metrics


def make_deterministic(seed: int) -> None:
    """Seed every RNG and use deterministic kernels, so that a seeded run repeats bit for bit (the pipeline's
    reproducibility check relies on it).  On CUDA, cuBLAS needs the workspace setting below before its first use.
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


def _run_training(cfg: TrainConfig, model, train_split, val_split, *, dist: Dist, state: dict | None,
                  state_path: Path, fingerprint: dict, steps: list[dict], say: Callable[[str], None]
                  ) -> list[EpochRecord]:
    """fit, from the saved state if any, saving as it goes; or, for a finished state, its final weights."""
    total = batches_per_epoch(len(train_split.images), cfg.batch_size) * cfg.epochs
    if state is not None:
        progress = Progress.from_state(state["progress"])
        if finished(progress, cfg):
            say(f"training already finished (step {progress.step} of {total}, {len(progress.history)} epochs) "
                f"in {state_path}: writing the model and reports again without retraining")
            ema = state["train_step"]["ema"]  # the weights fit leaves: the EMA's if any
            model.load_state_dict(ema["shadow"] if ema else state["model"])
            model.eval()
            return progress.history
        say(f"resuming from step {progress.step} of {total} (epoch {progress.epoch}) saved in {state_path}")

    def on_save(full: dict) -> None:
        atomic_torch_save(full | {"fingerprint": fingerprint, "steps": pack_steps(steps)}, state_path)

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

        return fit(model, train_split, val_split, cfg, device=dist.device, on_step=on_step, on_epoch=on_epoch,
                   on_save=on_save, resume=state, dist=dist)


# ---- the resume state: its fingerprint, its step log, reading it back ----

def train_fingerprint(train: TrainConfig, model: ModelConfig, *, data_dir: Path, world_size: int,
                      device: torch.device) -> dict:
    """Everything that decides a training run's weights: a saved state is resumed only while this is unchanged.

    A different number of processes changes the BatchNorm statistics and the order of float sums, and a
    different device kind (cpu, cuda) different kernels, so either starts afresh.
    """
    return ({f"train.{k}": v for k, v in train.model_dump().items() if k not in NOT_FINGERPRINTED}
            | {f"model.{k}": v for k, v in model.model_dump().items()}
            | {"data manifest sha256": sha256_file(Path(data_dir) / "manifest.json"), "world size": world_size,
               "device type": device.type, "torch": str(torch.__version__),
               "training code sha256": training_code_sha256(), "state format": STATE_FORMAT})


def loaded_source_files() -> list[Path]:
    """The pixelnet source files this process has imported so far, sorted; by file, not by module name, so that
    a stage run as `python -m pixelnet.stages.train` (module __main__) counts too."""
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and Path(path).resolve().is_relative_to(PACKAGE_ROOT):
            files.add(Path(path).resolve())
    return sorted(files)


def training_code_sha256() -> str:
    """One hash over the source of every pixelnet module loaded for training (not NOT_TRAINING_CODE)."""
    digest = hashlib.sha256()
    for f in loaded_source_files():
        rel = f.relative_to(PACKAGE_ROOT)
        if ".".join(("pixelnet", *rel.with_suffix("").parts)).startswith(NOT_TRAINING_CODE):
            continue
        digest.update(rel.as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()


def saved_state(path: Path, fingerprint: dict, dist: Dist, *, say: Callable[[str], None]) -> dict | None:
    """The state to continue from: rank 0 reads it and every rank gets its bytes; None to train afresh (said why).

    It is loaded with weights_only=True: a state holding other objects than tensors and plain data is refused.
    """
    data = None
    if dist.main:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise PixelNetError(f"cannot read the training state {path}: {e.strerror}; fix its permissions, "
                                "or delete it to train afresh") from None
    data = dist.share(data)
    if data is None:
        return None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        problem = None if isinstance(state, dict) and isinstance(state.get("fingerprint"), dict) else (
            f"{path} is not a PixelNet training state (no fingerprint)")
    except pickle.UnpicklingError as e:
        problem = (f"refusing to load the training state {path}: it holds objects other than tensors and plain "
                   f"data, which could run code ({str(e).splitlines()[0]})")
    except Exception as e:  # a damaged file fails in many ways (RuntimeError, EOFError, struct.error, ...)
        problem = f"cannot read the training state {path} ({type(e).__name__}: {e})"
    if problem:
        say(f"{problem}: training afresh; the state will be overwritten")
        return None
    changes = fingerprint_changes(state["fingerprint"], fingerprint)
    if changes:
        say(f"params, data or code changed since the training state {path} was saved ({'; '.join(changes)}): "
            "training afresh; the state will be overwritten")
        return None
    return state


def fingerprint_changes(saved: dict, current: dict) -> list[str]:
    """What differs between two fingerprints, as `key: saved -> current` (long hashes shortened)."""
    def short(v: object) -> str:
        return f"{v[:12]}..." if isinstance(v, str) and len(v) == 64 else repr(v)

    return [f"{k}: {short(saved.get(k))} -> {short(current.get(k))}"
            for k in sorted(set(saved) | set(current), key=str) if saved.get(k) != current.get(k)]


def pack_steps(steps: list[dict]) -> dict:
    """The stage's step log as tensors, to travel in the state."""
    return {"step": torch.tensor([s["step"] for s in steps], dtype=torch.long),
            "epoch": torch.tensor([s["epoch"] for s in steps], dtype=torch.long),
            "train_bpd": torch.tensor([s["train_bpd"] for s in steps], dtype=torch.float64)}


def unpack_steps(packed: dict) -> list[dict]:
    return [{"step": s, "epoch": e, "train_bpd": b}
            for s, e, b in zip(packed["step"].tolist(), packed["epoch"].tolist(), packed["train_bpd"].tolist())]


# ---- the process: torchrun's world, the device, the precision warning ----

def from_env() -> tuple[int, int, int]:
    """(world_size, rank, local_rank) as torchrun sets them; (1, 0, 0) outside torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return 1, 0, 0
    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise PixelNetError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start data-parallel training "
                            "with torchrun (torchrun --nproc_per_node N -m pixelnet train ...), or unset WORLD_SIZE")
    world, rank, local = (_env_int(k) for k in TORCHRUN_ENV)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise PixelNetError(f"WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local} do not describe a world: "
                            "start data-parallel training with torchrun")
    return world, rank, local


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise PixelNetError(f"environment variable {name}={os.environ[name]!r} is not an integer: "
                            "start data-parallel training with torchrun, which sets it") from None


def is_main_process() -> bool:
    """Rank 0, or a run outside torchrun: the process that writes files and talks to MLflow."""
    return from_env()[1] == 0


@contextmanager
def session(device_name: str, *, batch_size: int) -> Iterator[Dist]:
    """This process's Dist (its device: cuda:LOCAL_RANK on CUDA), inside the process group (gloo on the CPU,
    NCCL on CUDA) when torchrun started several processes."""
    world, rank, local = from_env()
    if batch_size % world:
        raise ConfigError(f"train.batch_size {batch_size} is not divisible by the {world} processes (WORLD_SIZE): "
                          f"each takes an equal share of every batch; choose a multiple of {world}")
    device = select_device(device_name, local)
    if world == 1:
        yield Dist(device=device)
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", world_size=world, rank=rank)
    try:
        yield Dist(world_size=world, rank=rank, device=device)
    finally:
        torch_dist.destroy_process_group()




# ---- the reports ----

def pace_line(cfg: TrainConfig, *, done: int, left: int, seconds: float) -> str:
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
        "precision": params.train.precision,  # train.precision as resolved for the device (resolve_precision)
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
    if not is_main_process():
        work()  # the other ranks of a torchrun job compute only: rank 0 reports, writes and tracks
        return
    if not mlflow:
        report(work())
        return
    from pixelnet.tracking.runs import track_train

    report(track_train(p, data_dir=data, reports_dir=reports, model_path=model, validation_dir=validation, train=work))


if __name__ == "__main__":
    run_command(command, prog="pixelnet train")
