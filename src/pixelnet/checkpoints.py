"""Model checkpoints: config + weights + schema version, saved atomically, loaded safely.

A checkpoint is a `torch.save`d dict of plain types and tensors:
{"schema_version", "config" (ModelConfig as a dict), "state_dict", "meta"}.
`load_model` is the one loader every command uses: it reads with
`weights_only=True`, so no arbitrary object is ever unpickled, and rebuilds
the model through `build_model` from the stored config.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixelnet.errors import PixelNetError
from pixelnet.model import ModelConfig, build_model
from pixelnet.schema import from_mapping, to_dict

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
