"""Resume after any kill: the full state of a training run, its fingerprint, and reading it back.

Every `checkpoint_every` optimizer steps, every CHECKPOINT_SECONDS and at
each epoch end (loop.py says when), `fit` hands `on_save` the full state of the
run (`capture`): weights, optimizer, schedule, EMA, every RNG of every rank,
the position (`Progress`: epoch, batch, step), the epoch's partial loss sums,
the training time so far and the epoch history, as tensors and plain types
that load with weights_only=True.  The data order is kept as the order
generator's state at the start of the epoch in progress: the permutation is
drawn again and the batches done are skipped.  `fit(..., resume=state)`
continues from such a state and ends bit for bit where the uninterrupted run
ends; under torchrun each rank takes back its own RNGs (its dropout masks are
its own: distributed.py).

The train stage saves the state with its fingerprint (`train_fingerprint`:
params, data, code, world) and step log; `saved_state` gives it back only
while the fingerprint is unchanged, and says why it trains afresh otherwise.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pixelnet.checkpoint import atomic_torch_save
from pixelnet.config import TrainConfig
from pixelnet.errors import PixelNetError
from pixelnet.files import sha256_file
from pixelnet.model import ModelConfig
from pixelnet.schema import to_dict
from pixelnet.training.distributed import Dist

STATE_FORMAT = 3  # the layout of `capture`'s dict (2: one RNG state a rank; 3: a list of optimizers)


@dataclass
class EpochRecord:
    """One finished epoch, as the run's history keeps it."""

    epoch: int
    step: int
    train_bpd: float
    val_bpd: float
    seconds: float
    images_per_s: float
    lr: float  # the learning rate of the epoch's last step
    elapsed_seconds: float  # since fit began, validation included: what train.max_minutes is checked against


# EpochRecord's wall-clock fields: they differ between two runs of the same params, so the reports keep them
# apart from the deterministic ones (stages/train.py).
TIMING_FIELDS = ("seconds", "images_per_s", "elapsed_seconds")


@dataclass
class Progress:
    """Where a run stands between two optimizer steps, besides its weights, optimizer and RNGs."""

    epoch: int = 1  # the epoch in progress, from 1
    batch: int = 0  # its batches done
    step: int = 0  # optimizer steps done in all
    loss_sum: float = 0.0  # the epoch's sum of batch loss (bits/dim) x batch size, so far
    seen: int = 0  # the epoch's images so far
    epoch_seconds: float = 0.0  # the epoch's training time so far
    elapsed: float = 0.0  # the run's time so far, validation and earlier sessions included
    order: torch.Tensor | None = None  # the data-order generator's state at the start of `epoch`
    history: list[EpochRecord] = field(default_factory=list)

    def to_state(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "history"} | {
            "history": [vars(r) for r in self.history]}

    @classmethod
    def from_state(cls, state: dict) -> Progress:
        return cls(**{k: v for k, v in state.items() if k != "history"},
                   history=[EpochRecord(**r) for r in state["history"]])

    def advance(self, n_images: int, loss_bpd: float) -> None:
        """One optimizer step done, on a (global) batch of n_images with this loss in bits/dim."""
        self.step, self.batch = self.step + 1, self.batch + 1
        self.loss_sum += loss_bpd * n_images
        self.seen += n_images

    def next_epoch(self, *, val_bpd: float, seconds: float, lr: float, elapsed: float,
                   order: torch.Tensor) -> EpochRecord:
        """Close the epoch in progress, trained for `seconds`; its record joins the history and is returned.

        `lr` is the learning rate of its last step, `elapsed` the run's time so far (validation included),
        `order` the data-order generator's state for the next epoch, which starts here.
        """
        record = EpochRecord(self.epoch, self.step, self.loss_sum / self.seen, val_bpd, seconds, self.seen / seconds,
                             lr, elapsed)
        self.history.append(record)
        self.epoch, self.batch, self.loss_sum, self.seen = self.epoch + 1, 0, 0.0, 0
        self.epoch_seconds, self.elapsed, self.order = 0.0, elapsed, order
        return record


def budget_binds(history: list[EpochRecord], cfg: TrainConfig) -> bool:
    """train.max_minutes: the next epoch would end past the budget, at the average pace so far."""
    if cfg.max_minutes is None or not history:
        return False
    elapsed = history[-1].elapsed_seconds
    return elapsed + elapsed / len(history) > 60 * cfg.max_minutes


def finished(progress: Progress, cfg: TrainConfig) -> bool:
    """At an epoch boundary, with every epoch done or the time budget spent."""
    return progress.batch == 0 and (len(progress.history) >= cfg.epochs or budget_binds(progress.history, cfg))


def rng_state(device: torch.device) -> dict:
    """Every RNG a run could draw from, as tensors and plain types (weights_only-loadable)."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n, p = state["numpy"], state["python"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))


def capture(step_fn, progress: Progress, rngs: list[dict]) -> dict:
    """The full state of a run (step_fn: loop.TrainStep; rngs: every rank's `rng_state`, in rank order).

    Its tensors are the live ones: save or copy them at once.
    """
    return {"format": STATE_FORMAT, "model": step_fn.module.state_dict(), "train_step": step_fn.state_dict(),
            "rng": rngs, "progress": progress.to_state()}


def restore_final(model: nn.Module, state: dict) -> None:
    """Give `model` the weights a finished run's state ends with, as `fit` leaves them (the EMA's if any)."""
    ema = state["train_step"]["ema"]
    model.load_state_dict(ema["shadow"] if ema else state["model"])
    model.eval()


def pack_steps(steps: list[dict]) -> dict:
    """The stage's step log as tensors, to travel in the state."""
    return {"step": torch.tensor([s["step"] for s in steps], dtype=torch.long),
            "epoch": torch.tensor([s["epoch"] for s in steps], dtype=torch.long),
            "train_bpd": torch.tensor([s["train_bpd"] for s in steps], dtype=torch.float64)}


def unpack_steps(packed: dict) -> list[dict]:
    return [{"step": s, "epoch": e, "train_bpd": b}
            for s, e, b in zip(packed["step"].tolist(), packed["epoch"].tolist(), packed["train_bpd"].tolist())]


def save_train_state(state: dict, path: Path) -> None:
    atomic_torch_save(state, path)


def read_train_state(path: Path) -> bytes | None:
    """The saved training state's bytes, or None when there is none."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PixelNetError(f"cannot read the training state {path}: {e.strerror}; fix its permissions, "
                            "or delete it to train afresh") from None


def parse_train_state(data: bytes, path: Path) -> dict:
    """A training state from its bytes, loaded with weights_only=True; a PixelNetError naming `path` otherwise."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PixelNetError(f"refusing to load the training state {path}: it holds objects other than tensors and "
                            f"plain data, which could run code ({str(e).splitlines()[0]})") from None
    except Exception as e:  # a damaged file fails in many ways (RuntimeError, EOFError, struct.error, ...)
        raise PixelNetError(f"cannot read the training state {path} ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), dict):
        raise PixelNetError(f"{path} is not a PixelNet training state (no fingerprint)")
    return state


def fingerprint_changes(saved: dict, current: dict) -> list[str]:
    """What differs between two fingerprints, as `key: saved -> current` (long hashes shortened)."""
    def short(v: object) -> str:
        return f"{v[:12]}..." if isinstance(v, str) and len(v) == 64 else repr(v)

    return [f"{k}: {short(saved.get(k))} -> {short(current.get(k))}"
            for k in sorted(set(saved) | set(current), key=str) if saved.get(k) != current.get(k)]


# train params that leave the weights alone: how often the state is saved, the device's name (its kind is
# fingerprinted), and the time budget, which is checked again on every start against the saved training time.
NOT_FINGERPRINTED = {"checkpoint_every", "device", "max_minutes"}
# Loaded modules that cannot change a run's weights: the entry points, and MLflow logging, which runs around it.
NOT_TRAINING_CODE = ("pixelnet.cli", "pixelnet.__main__", "pixelnet.tracking")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # src/pixelnet


def loaded_source_files() -> list[Path]:
    """The pixelnet source files this process has imported so far, sorted.

    By file, not by module name, so that a stage run as `python -m pixelnet.stages.train` (module __main__)
    counts too.  These are the facts tests/test_pipeline.py checks dvc.yaml's deps against: what a process
    ran is what it loaded, lazy imports included.
    """
    root = PACKAGE_ROOT
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and Path(path).resolve().is_relative_to(root):
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


def train_fingerprint(train: TrainConfig, model: ModelConfig, *, data_dir: Path, world_size: int,
                      device: torch.device) -> dict:
    """Everything that decides a training run's weights: a saved state is resumed only while this is unchanged.

    A different number of processes changes the BatchNorm statistics and the order of float sums, and a
    different device kind (cpu, cuda) different kernels, so either starts afresh.
    """
    return ({f"train.{k}": v for k, v in to_dict(train).items() if k not in NOT_FINGERPRINTED}
            | {f"model.{k}": v for k, v in to_dict(model).items()}
            | {"data manifest sha256": sha256_file(Path(data_dir) / "manifest.json"), "world size": world_size,
               "device type": device.type, "torch": str(torch.__version__),
               "training code sha256": training_code_sha256(), "state format": STATE_FORMAT})


def saved_state(path: Path | None, fingerprint: dict, dist: Dist, *, say: Callable[[str], None]) -> dict | None:
    """The state to continue from: rank 0 reads it and every rank gets its bytes; None to train afresh (said why)."""
    if path is None:
        return None
    data = dist.share(read_train_state(path) if dist.main else None)
    if data is None:
        return None
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
