"""params.yaml -> typed, frozen, checked config objects, one per section.

params.yaml is the only home of hyperparameters.  `load_params` reads it once,
applies `section.key=value` overrides (the CLI's `--set`), and checks every
section before any work starts: a wrong type, a bad value, an unknown key or a
missing one is a `ConfigError` naming `section.key`.  Each stage then uses its
own sections.  Every key must be in the file: deleting one is an error, never a
silent change of the run.  The dataclasses' defaults are for code that builds
configs directly (tests, benchmarks); tests/test_config.py checks that they
equal params.yaml's values.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from pixelnet.errors import ConfigError, PixelNetError
from pixelnet.model.config import ModelParams
from pixelnet.schema import from_mapping, require

Dataset = Literal["mnist-5k", "mnist", "fashion-mnist", "cifar10", "folder"]


class ParamsLoader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-05 (no dot), as `dvc exp run -S train.lr=0.00001` writes it, as a string: read a number."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 (a SafeLoader)


@dataclass(frozen=True)
class DataConfig:
    SECTION: ClassVar[str] = "data"

    dataset: Dataset = "mnist-5k"
    folder: str | None = None  # the image folder when dataset is "folder"
    size: int = 28  # images are resized to size x size
    mode: Literal["keep", "gray", "rgb"] = "keep"
    fit: Literal["crop", "pad", "stretch"] = "crop"  # a folder's images of other sizes/shapes to size x size
    levels: int = 256  # intensity levels per sub-pixel; 256 keeps the raw 8 bits, 2 binarizes
    val_fraction: float = 0.1
    test_fraction: float = 0.1  # used only when the source has no official test split
    seed: int = 0  # the train/val/test split

    def __post_init__(self) -> None:
        s = self.SECTION
        require(4 <= self.size <= 256, s, "size", "must be between 4 and 256", self.size)
        require(2 <= self.levels <= 256, s, "levels", "must be between 2 and 256", self.levels)
        require(0.0 <= self.val_fraction < 0.5, s, "val_fraction", "must be in [0, 0.5)", self.val_fraction)
        require(0.0 < self.test_fraction < 0.5, s, "test_fraction", "must be in (0, 0.5)", self.test_fraction)


@dataclass(frozen=True)
class TrainConfig:
    SECTION: ClassVar[str] = "train"

    epochs: int = 8
    batch_size: int = 32
    optimizer: Literal["adam", "muon"] = "muon"  # muon: Muon for the conv filters (as matrices), Adam for the rest
    lr: float = 0.02  # the peak learning rate (Muon's updates are scaled to Adam's size, so one lr serves both)
    beta1: float = 0.9  # Adam's (and Muon's momentum is 0.95)
    beta2: float = 0.999
    weight_decay: float = 0.0  # decoupled (AdamW's), on the conv filters only
    shift: int = 0  # data augmentation: each training image moved by up to this many pixels each way (0: off)
    # After the warmup: cosine or linear to zero, constant, or exponential (times lr_decay every step: openai's PixelCNN++).
    lr_schedule: Literal["cosine", "linear", "constant", "exponential"] = "cosine"
    lr_decay: float = 0.999995  # exponential only: the factor per optimizer step (openai's pixel-cnn default)
    warmup_fraction: float = 0.05  # of all steps, with the learning rate rising linearly from 0
    ema_decay: float = 0.999  # 0 = off; else the EMA of the weights is what is validated and saved
    max_minutes: float | None = None  # wall-clock budget, checked between epochs (training/loop.py)
    compile: bool = False  # torch.compile the loss and its backward
    # bf16: bfloat16 autocast around the forward pass; auto: bf16 where the CPU or GPU runs it natively
    # (training/precision.py), else fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    checkpoint_every: int = 50  # optimizer steps between saves of the resume state; 0 = at epoch ends only
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        s = self.SECTION
        require(self.epochs >= 1, s, "epochs", "must be >= 1", self.epochs)
        require(self.batch_size >= 1, s, "batch_size", "must be >= 1", self.batch_size)
        require(0.0 < self.lr < 1.0, s, "lr", "must be in (0, 1)", self.lr)
        require(0.0 <= self.beta1 < 1.0, s, "beta1", "must be in [0, 1)", self.beta1)
        require(0.0 <= self.beta2 < 1.0, s, "beta2", "must be in [0, 1)", self.beta2)
        require(0.0 <= self.weight_decay < 1.0, s, "weight_decay", "must be in [0, 1) (0: off)", self.weight_decay)
        require(0 <= self.shift <= 8, s, "shift", "must be between 0 and 8 pixels (0: off)", self.shift)
        require(0.0 < self.lr_decay <= 1.0, s, "lr_decay", "must be in (0, 1]", self.lr_decay)
        require(0.0 <= self.warmup_fraction < 1.0, s, "warmup_fraction", "must be in [0, 1)", self.warmup_fraction)
        require(0.0 <= self.ema_decay < 1.0, s, "ema_decay", "must be in [0, 1) (0 turns EMA off)", self.ema_decay)
        require(self.max_minutes is None or self.max_minutes > 0, s, "max_minutes", "must be > 0 or null (no budget)",
                self.max_minutes)
        require(self.checkpoint_every >= 0, s, "checkpoint_every", "must be >= 0 (0: save at epoch ends only)",
                self.checkpoint_every)


@dataclass(frozen=True)
class SampleConfig:
    SECTION: ClassVar[str] = "sample"

    n: int = 256  # evaluate's Fréchet distance needs at least 256
    temperature: float = 1.0
    seed: int = 0
    method: Literal["fast", "naive"] = "fast"  # fast: cached, exact, same images as naive
    label: int | None = None  # conditional models: draw only this class (null: the classes take turns, one grid column each)

    def __post_init__(self) -> None:
        s = self.SECTION
        require(1 <= self.n <= 100_000, s, "n", "must be between 1 and 100000", self.n)
        require(self.label is None or self.label >= 0, s, "label", "must be a class index >= 0 or null", self.label)
        require(0.0 < self.temperature <= 10.0, s, "temperature", "must be in (0, 10]", self.temperature)


@dataclass(frozen=True)
class CompleteConfig:
    SECTION: ClassVar[str] = "complete"

    rows: int = 14  # top rows of each test image kept; the rest are sampled
    images: int = 8  # test images completed, evenly spaced through the test split
    per_image: int = 4  # completions drawn for each image
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        s = self.SECTION
        require(self.rows >= 0, s, "rows", "must be >= 0", self.rows)
        require(1 <= self.images <= 1000, s, "images", "must be between 1 and 1000", self.images)
        require(1 <= self.per_image <= 100, s, "per_image", "must be between 1 and 100", self.per_image)
        require(0.0 < self.temperature <= 10.0, s, "temperature", "must be in (0, 10]", self.temperature)


@dataclass(frozen=True)
class EvaluateConfig:
    SECTION: ClassVar[str] = "evaluate"

    batch_size: int = 64  # images per forward pass for the test NLL; on a CPU 64 beats 256 (cache)
    grid_n: int = 64  # real test images shown beside the samples

    def __post_init__(self) -> None:
        s = self.SECTION
        require(self.batch_size >= 1, s, "batch_size", "must be >= 1", self.batch_size)
        require(self.grid_n >= 1, s, "grid_n", "must be >= 1", self.grid_n)


@dataclass(frozen=True)
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    complete: CompleteConfig = field(default_factory=CompleteConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


# params.yaml's sections and the config class each is checked into (its fields are the section's keys).
SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelParams, "train": TrainConfig, "sample": SampleConfig,
    "complete": CompleteConfig, "evaluate": EvaluateConfig,
}


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (values parsed as YAML) to a params mapping."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=0.0003")
        if section not in SECTIONS:
            raise ConfigError(f"override {item!r}: unknown section {section!r}; sections are {', '.join(SECTIONS)}")
        out.setdefault(section, {})
        if not isinstance(out[section], dict):
            raise ConfigError(f"params section {section} must be a mapping")
        out[section][name] = read_yaml(value)
    return out


def params_from_mapping(raw: Any) -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("params must be a mapping with the sections " + ", ".join(SECTIONS))
    unknown = sorted(str(k) for k in raw if k not in SECTIONS)
    if unknown:
        raise ConfigError(f"unknown params section(s) {', '.join(unknown)}; valid sections are {', '.join(SECTIONS)}")
    missing = [f"{name}.{key}" for name, cls in SECTIONS.items() if isinstance(raw.get(name, {}), dict)
               for key in section_keys(cls) if key not in (raw.get(name) or {})]
    if missing:
        raise ConfigError(f"missing parameter(s) {', '.join(missing)}: params.yaml must set every key (the "
                          "repository's params.yaml lists each with its default and meaning); add them")
    built = {name: from_mapping(cls, raw.get(name), section=name) for name, cls in SECTIONS.items()}
    return Params(**built)


def section_keys(cls: type) -> list[str]:
    """The keys a params section must set: its config class's fields, sorted."""
    return sorted(f.name for f in dataclasses.fields(cls))


def load_params(path: Path, overrides: list[str] = ()) -> Params:
    """Read and check the whole params file (plus overrides) once."""
    path = Path(path)
    try:
        raw = read_yaml(path.read_text())
    except FileNotFoundError:
        raise PixelNetError(f"params file {path} not found: pass --params with the path to params.yaml") from None
    except yaml.YAMLError as e:
        raise PixelNetError(f"params file {path} is not valid YAML: {e}") from None
    try:
        return params_from_mapping(apply_overrides(raw or {}, list(overrides)))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
