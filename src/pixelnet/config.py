"""params.yaml -> typed, frozen, checked config objects, one per section.

params.yaml is the only home of hyperparameters and of their defaults: the classes here declare each key's type
and checks, never a value (but `ONLY_FOR`'s fixed values for the keys a model does not read).  `load_params` reads a params file, applies `section.key=value` overrides (the CLI's
`--set`) and checks every section before any work starts: an unknown, missing or mistyped key or a bad value is
a `ConfigError` naming `section.key`.  Code that builds configs itself (tests, benchmarks) starts from
`defaults()`, the repository's params.yaml, and changes keys with `.replace(key=value)`, checked the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from pixelnet.errors import ConfigError, PixelNetError

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
MISSING_HINT = (": params.yaml must set every key (the repository's params.yaml lists each with its default and "
                "meaning); add them")
COMPARE = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
TYPES = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false", "string_type": "a string"}


class ParamsLoader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-05 (no dot), as `dvc exp run -S train.lr=0.00001` writes it, as a string: read a number."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 (a SafeLoader)


class Config(BaseModel):
    """A frozen config: strict types (no "1" for 1), no unknown keys; `check` holds the checks types cannot say."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def check(self) -> None:
        """Raise ValueError (through `require`) for a value the types allow but the model cannot use."""

    @model_validator(mode="after")
    def _checked(self) -> Self:
        self.check()
        return self

    def require(self, ok: bool, key: str, expectation: str) -> None:
        if not ok:
            raise ValueError(f"{key} {expectation}, got {getattr(self, key)!r}")

    @classmethod
    def from_mapping(cls, mapping: Any) -> Self:
        try:
            return cls.model_validate(mapping)
        except ValidationError as e:
            raise ConfigError(explain(cls, e)) from None

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes`, checked as params.yaml's values are."""
        return self.from_mapping(self.model_dump() | changes)


def explain(cls: type[Config], e: ValidationError) -> str:
    """pydantic's errors as one message naming `section.key`: unknown keys, else missing ones, else a bad value."""
    section = next((name for name, base in SECTIONS.items() if issubclass(cls, base)), None)  # None: all of Params
    errors = [((*([section] if section else []), *map(str, err["loc"])), err) for err in e.errors()]
    sections = {section: cls} if section else SECTIONS
    unknown = [loc for loc, err in errors if err["type"] == "extra_forbidden"]
    if any(len(loc) == 1 for loc in unknown):
        names = ", ".join(loc[0] for loc in unknown if len(loc) == 1)
        return f"unknown params section(s) {names}; valid sections are {', '.join(SECTIONS)}"
    if unknown:
        return (f"unknown parameter {', '.join('.'.join(loc) for loc in unknown)}; valid keys in {unknown[0][0]} are: "
                f"{', '.join(sorted(sections[unknown[0][0]].model_fields))}")
    missing = sorted(f"{loc[0]}.{key}" for loc, err in errors if err["type"] == "missing"
                     for key in (loc[1:] or sections[loc[0]].model_fields))  # a whole section missing: each key
    if missing:
        return f"missing parameter(s) {', '.join(missing)}" + (MISSING_HINT if cls is Params else "")
    loc, err = errors[0]
    if err["type"] == "value_error":  # from a `check`: its message starts with the key
        return ".".join([*loc, str(err["ctx"]["error"])])
    if err["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{loc[0]}.{loc[1]} must be {bounds(sections[loc[0]].model_fields[loc[1]])}, got {err['input']!r}"
    if len(loc) < 2:
        return f"{loc[0] if loc else 'params'} must be a mapping of keys to values, got {err['input']!r}"
    # A union (`bool | Literal["auto"]`) fails once for each member, which is named last in the loc.
    kinds = [expected(other) for at, other in errors if at[:2] == loc[:2]]
    return f"{loc[0]}.{loc[1]} must be {' or '.join(kinds)}, got {err['input']!r}"


def expected(err: dict) -> str:
    """What a value of the wrong type should have been, as params.yaml spells it."""
    if err["type"] == "literal_error":
        return "one of " + err["ctx"]["expected"].replace(" or ", ", ")  # pydantic's "'a', 'b' or 'c'"
    return TYPES.get(err["type"], err["msg"])


def bounds(field: FieldInfo) -> str:
    """A field's range as `Field(...)` declares it: "between 4 and 256", "in [0, 1)", ">= 1"."""
    b = {k: v for m in field.metadata for k, v in dataclasses.asdict(m).items()}  # Ge(ge=4) -> {"ge": 4}
    if b.keys() == {"ge", "le"}:
        text = f"between {b['ge']} and {b['le']}"
    elif len(b) == 2:
        low = f"[{b['ge']}" if "ge" in b else f"({b['gt']}"
        high = f"{b['le']}]" if "le" in b else f"{b['lt']})"
        text = f"in {low}, {high}"
    else:
        ((op, value),) = b.items()
        text = f"{COMPARE[op]} {value}"
    return text + (" or null" if type(None) in get_args(field.annotation) else "")


class DataConfig(Config):
    dataset: Literal["mnist-5k", "mnist", "fashion-mnist", "cifar10", "folder"]
    folder: str | None
    size: Annotated[int, Field(ge=4, le=256)]
    mode: Literal["keep", "gray", "rgb"]
    fit: Literal["crop", "pad", "stretch"]
    levels: Annotated[int, Field(ge=2, le=256)]
    val_fraction: Annotated[float, Field(ge=0, lt=0.5)]
    test_fraction: Annotated[float, Field(gt=0, lt=0.5)]
    seed: int


PIXELCNNS = ("pixelcnn", "gated")
# The model keys that only some models read: the archs (or, for mixtures, the head) that read each, and the value
# it keeps where it is not read.  A changed value that the chosen model would ignore is refused, and a checkpoint
# leaves the key out.  The values are params.yaml's (tests/test_config.py), written here too because
# `dvc exp run -S model.blocks=12` edits params.yaml itself, which then cannot be the reference.
ONLY_FOR: dict[str, tuple[tuple[str, ...], Any]] = {
    "blocks": (PIXELCNNS, 7), "first_kernel": (PIXELCNNS, 7), "kernel": (PIXELCNNS, 5),
    "mixtures": (("logistic_mixture",), 10), "resnet_layers": (("pixelcnnpp",), 1),
    "resolutions": (("pixelcnnpp",), 3), "dropout": (("pixelcnnpp",), 0.0),
    "activation": (("pixelcnnpp",), "concat_elu"), "init": (("pixelcnnpp",), "default"),
    "attention": (("pixelcnnpp",), True),
}
UNREAD = {key: value for key, (_, value) in ONLY_FOR.items()}


def applies(key: str, *, arch: str, head: str) -> bool:
    """Whether a model of `arch` with `head` ("auto" allowed) reads the model key `key`."""
    readers = ONLY_FOR[key][0] if key in ONLY_FOR else (arch,)
    return arch in readers or resolve_head(head, arch) in readers


def resolve_head(head: str, arch: str) -> str:
    """model.head "auto": the logistic mixture for pixelcnnpp (the paper's), else the softmax."""
    return ("logistic_mixture" if arch == "pixelcnnpp" else "softmax") if head == "auto" else head


class ModelParams(Config):
    """params.yaml's `model` section; pixelnet.model.ModelConfig adds the data's facts."""

    arch: Literal["pixelcnn", "gated", "pixelcnnpp"]
    channels: int
    blocks: Annotated[int, Field(ge=0)]
    first_kernel: int
    kernel: int
    norm: Literal["auto", "batch", "weight", "none"]
    head: Literal["auto", "softmax", "logistic_mixture"]
    mixtures: Annotated[int, Field(ge=1)]
    resnet_layers: Annotated[int, Field(ge=1)]
    resolutions: Annotated[int, Field(ge=1)]
    dropout: Annotated[float, Field(ge=0, lt=1)]
    activation: Literal["concat_elu", "elu"]
    init: Literal["default", "data"]
    attention: bool
    conditional: bool | Literal["auto"]

    def check(self) -> None:
        self.require(self.channels >= 2 and self.channels % 2 == 0, "channels", "must be an even integer >= 2")
        for key in ("first_kernel", "kernel"):
            self.require(getattr(self, key) % 2 == 1 and getattr(self, key) >= 1, key,
                         "must be an odd integer >= 1 (masks need a centre tap)")
        self.require(self.first_kernel >= 3, "first_kernel", "must be >= 3 (a 1x1 type-A conv sees no pixel)")
        takes = ("weight", "none") if self.arch == "pixelcnnpp" else ("batch", "none")
        self.require(self.norm in ("auto", *takes), "norm",
                     "must be auto, weight or none for pixelcnnpp, and auto, batch or none for pixelcnn and gated")
        self.require(self.init == "default" or self.arch != "pixelcnnpp" or self.norm in ("auto", "weight"), "init",
                     "data initializes weight-normalized convs: it needs model.norm auto or weight")
        reads = [k for k in ModelParams.model_fields if applies(k, arch=self.arch, head=self.head)]
        for key, (readers, unread) in ONLY_FOR.items():
            if key not in reads and getattr(self, key) != unread:
                who = f"head {readers[0]}" if key == "mixtures" else f"arch {' and '.join(readers)}"
                raise ValueError(f"{key} is for {who}: arch {self.arch} with head {resolve_head(self.head, self.arch)} "
                                 f"does not read it, so it must keep its default {unread!r}, got "
                                 f"{getattr(self, key)!r} (the keys this model reads: {', '.join(reads)})")


class TrainConfig(Config):
    epochs: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]
    optimizer: Literal["adam", "muon"]
    lr: Annotated[float, Field(gt=0, lt=1)]
    beta1: Annotated[float, Field(ge=0, lt=1)]
    beta2: Annotated[float, Field(ge=0, lt=1)]
    weight_decay: Annotated[float, Field(ge=0, lt=1)]
    shift: Annotated[int, Field(ge=0, le=8)]
    lr_schedule: Literal["cosine", "linear", "constant", "exponential"]
    lr_decay: Annotated[float, Field(gt=0, le=1)]
    warmup_fraction: Annotated[float, Field(ge=0, lt=1)]
    ema_decay: Annotated[float, Field(ge=0, lt=1)]
    max_minutes: Annotated[float | None, Field(gt=0)]
    compile: bool
    precision: Literal["auto", "fp32", "bf16"]
    checkpoint_every: Annotated[int, Field(ge=0)]
    seed: int
    device: Literal["auto", "cpu", "cuda"]


class SampleConfig(Config):
    n: Annotated[int, Field(ge=1, le=100_000)]
    temperature: Annotated[float, Field(gt=0, le=10)]
    seed: int
    method: Literal["fast", "naive"]
    label: Annotated[int | None, Field(ge=0)]


class CompleteConfig(Config):
    rows: int | Literal["auto"]  # "auto": half the image's rows, resolved by the complete stage, which knows the size
    images: Annotated[int, Field(ge=1, le=1000)]
    per_image: Annotated[int, Field(ge=1, le=100)]
    temperature: Annotated[float, Field(gt=0, le=10)]
    seed: int

    def check(self) -> None:
        self.require(self.rows == "auto" or self.rows >= 0, "rows", "must be >= 0 or auto")


class EvaluateConfig(Config):
    batch_size: Annotated[int, Field(ge=1)]
    grid_n: Annotated[int, Field(ge=1)]


class Params(Config):
    """The whole params file: its sections are these fields."""

    data: DataConfig
    model: ModelParams
    train: TrainConfig
    sample: SampleConfig
    complete: CompleteConfig
    evaluate: EvaluateConfig


SECTIONS: dict[str, type[Config]] = {name: field.annotation for name, field in Params.model_fields.items()}


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (values parsed as YAML) to a params mapping."""
    if not isinstance(raw, dict):
        raise ConfigError(f"params must be a mapping with the sections {', '.join(SECTIONS)}")
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=0.0003")
        if section not in SECTIONS:
            raise ConfigError(f"override {item!r}: unknown section {section!r}; sections are {', '.join(SECTIONS)}")
        if not isinstance(out.setdefault(section, {}), dict):
            raise ConfigError(f"params section {section} must be a mapping")
        out[section][name] = read_yaml(value)
    return out


def load_params(path: Path, overrides: list[str] | None = None) -> Params:
    """Read and check the whole params file (plus overrides) once."""
    path = Path(path)
    try:
        raw = read_yaml(path.read_text())
    except FileNotFoundError:
        raise PixelNetError(f"params file {path} not found: pass --params with the path to params.yaml") from None
    except yaml.YAMLError as e:
        raise PixelNetError(f"params file {path} is not valid YAML: {e}") from None
    try:
        return Params.from_mapping(apply_overrides(raw or {}, overrides or []))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


@functools.cache
def defaults() -> Params:
    """The repository's params.yaml, for code that builds configs itself; change keys with `.replace(...)`."""
    return load_params(REPO_PARAMS)
