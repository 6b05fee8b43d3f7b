"""Model checkpoints: saved atomically, loaded without unpickling objects, one loader for every command.

A checkpoint is a `torch.save`d dict of plain types and tensors: {"schema_version", "config" (the ModelConfig
keys its architecture reads), "state_dict", "meta"}.  `load_model` reads it with `weights_only=True` and rebuilds
the model through `build_model`; an older schema is brought up to this one by `MIGRATIONS`, one version at a
time, in memory (the file is not rewritten).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixelnet.errors import ConfigError, PixelNetError
from pixelnet.files import atomic_file
from pixelnet.config import UNREAD, applies
from pixelnet.model import ModelConfig
from pixelnet.model.build import build_model

SCHEMA_VERSION = 3


def _schema_1_to_2(ckpt: dict) -> dict:
    """Schema 1 -> 2: PixelCNN's and Gated PixelCNN's nn.Sequential blocks and heads got named layers; configs
    written before `head`, `norm` and `conditional` existed held softmax, BatchNorm and unconditional."""
    config = {"head": "softmax", "norm": "batch", "conditional": False} | ckpt["config"]
    names = {"1": "conv_in", "2": "norm_in", "4": "conv_mid", "5": "norm_mid", "7": "conv_out", "8": "norm_out"}

    def rename(key: str) -> str:
        if config.get("arch") not in ("pixelcnn", "gated"):
            return key
        key = re.sub(r"^head\.1\.", "head.hidden.", key)
        key = re.sub(r"^head\.3\.", "head.out.", key)
        return re.sub(r"^(blocks\.\d+)\.body\.(\d)\.", lambda m: f"{m[1]}.{names[m[2]]}.", key)

    return ckpt | {"schema_version": 2, "config": stored_config(config),
                   "state_dict": {rename(k): v for k, v in ckpt["state_dict"].items()}}


def _schema_2_to_3(ckpt: dict) -> dict:
    """Schema 2 -> 3: PixelCNN++ configs written before `activation`, `init` and `attention` held concat_elu,
    the default init and no attention."""
    config = ckpt["config"]
    if config["arch"] == "pixelcnnpp":
        config = {"activation": "concat_elu", "init": "default", "attention": False} | config
    return ckpt | {"schema_version": 3, "config": config}


# Schema version -> the function that brings a checkpoint of that version to the next one.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _schema_1_to_2, 2: _schema_2_to_3}


def stored_config(config: dict) -> dict:
    """A ModelConfig dict without the model keys its model does not read (load_model puts back config.UNREAD's)."""
    return {k: v for k, v in config.items() if applies(k, arch=config["arch"], head=config["head"])}


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through `atomic_file`: the old file or the new one, never a torn one."""
    with atomic_file(path) as tmp, tmp.open("wb") as f:
        torch.save(obj, f)  # into a file object: the archive's inner name is then fixed, not the temp file's


def save_checkpoint(model: nn.Module, config: ModelConfig, path: Path, *, meta: dict | None = None) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(
        {"schema_version": SCHEMA_VERSION, "config": stored_config(config.model_dump()), "state_dict": state,
         "meta": meta or {}}, path
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
    version = ckpt.get("schema_version")
    while version in MIGRATIONS:
        try:
            ckpt = MIGRATIONS[version](ckpt)
        except (KeyError, TypeError, AttributeError) as e:
            raise PixelNetError(f"{path} has checkpoint schema {version} but not its layout ({type(e).__name__}: "
                                f"{e}), so it cannot be brought up to schema {SCHEMA_VERSION}: retrain the model") from None
        version = ckpt["schema_version"]
    if version != SCHEMA_VERSION:
        raise PixelNetError(f"{path} has checkpoint schema {ckpt.get('schema_version')!r}, this PixelNet reads "
                            f"{', '.join(map(str, [*MIGRATIONS, SCHEMA_VERSION]))}: retrain the model, or load it with "
                            "the PixelNet that wrote it")
    return ckpt


def load_model(path: Path, *, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Rebuild the model from a checkpoint, in eval mode, on `device`."""
    ckpt = read_checkpoint(path)
    try:
        config = ModelConfig.from_mapping(UNREAD | ckpt["config"])
    except ConfigError as e:
        raise PixelNetError(f"checkpoint {path} holds a model config this PixelNet cannot use ({e}): retrain the "
                            "model") from None
    model = build_model(config)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise PixelNetError(f"checkpoint {path} does not match its config ({e}); retrain the model") from None
    return model.to(device).eval(), config
