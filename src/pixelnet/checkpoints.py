"""Model checkpoints and the training state: saved atomically, loaded safely.

A checkpoint is a `torch.save`d dict of plain types and tensors:
{"schema_version", "config" (ModelConfig as a dict), "state_dict", "meta"}.
`load_model` is the one loader every command uses: it reads with
`weights_only=True`, so no arbitrary object is ever unpickled, and rebuilds
the model through `build_model` from the stored config.

The training state (training.capture, plus the stage's fingerprint and step
log) is what a killed run resumes from.  It is written the same atomic way and
read the same safe way; `parse_train_state` turns any failure into one
PixelNetError, which the train stage reports before training afresh.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixelnet.config import TrainConfig
from pixelnet.data.processed import sha256_file
from pixelnet.errors import PixelNetError
from pixelnet.model import ModelConfig, build_model
from pixelnet.schema import from_mapping, to_dict
from pixelnet.training import STATE_FORMAT

SCHEMA_VERSION = 1


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same directory, then rename over `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise PixelNetError(f"cannot write {path}: {e.strerror}. Choose a writable location or fix its permissions.") from e
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the rename below must not land before the bytes (a crash of the machine)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the mode a plain open() gives, not mkstemp's owner-only 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(model: nn.Module, config: ModelConfig, path: Path, *, meta: dict | None = None) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(
        {"schema_version": SCHEMA_VERSION, "config": to_dict(config), "state_dict": state, "meta": meta or {}}, path
    )


def read_checkpoint(path: Path) -> dict:
    """torch.load with weights_only=True, with clear messages for every failure."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PixelNetError(f"checkpoint {path} not found: run `pixelnet train` first or pass --model") from None
    except pickle.UnpicklingError as e:
        raise PixelNetError(
            f"refusing to load {path}: it contains objects other than tensors and plain data, which could run code "
            f"({str(e).splitlines()[0]}). Only load checkpoints written by PixelNet."
        ) from None
    except Exception as e:  # torch.load fails in many ways on a damaged file (RuntimeError, EOFError, struct.error, ...)
        raise PixelNetError(
            f"cannot read checkpoint {path} ({type(e).__name__}: {e}); it is corrupt or truncated: train again"
        ) from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise PixelNetError(f"{path} is not a PixelNet checkpoint (no config/state_dict)")
    if ckpt.get("schema_version") != SCHEMA_VERSION:
        raise PixelNetError(
            f"{path} has checkpoint schema {ckpt.get('schema_version')!r}, this PixelNet reads {SCHEMA_VERSION}: retrain the model"
        )
    return ckpt


def load_model(path: Path, *, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Rebuild the model from a checkpoint, in eval mode, on `device`."""
    ckpt = read_checkpoint(path)
    config = from_mapping(ModelConfig, ckpt["config"], section="model")
    model = build_model(config)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise PixelNetError(f"checkpoint {path} does not match its config ({e}); retrain the model") from None
    return model.to(device).eval(), config


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


# What a training run's result depends on besides params and data: the modules its arithmetic runs through.
TRAINING_CODE = ("model", "training.py", "likelihood.py", "distributed.py")
# train params that leave the weights alone: how often the state is saved, the device's name (its kind is
# fingerprinted), and the time budget, which is checked again on every start against the saved training time.
NOT_FINGERPRINTED = {"checkpoint_every", "device", "max_minutes"}


def training_code_sha256() -> str:
    src = Path(__file__).parent
    files = sorted(f for name in TRAINING_CODE
                   for f in ([src / name] if name.endswith(".py") else (src / name).rglob("*.py")))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(src).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
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
