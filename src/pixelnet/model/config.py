"""The model's configuration: what params.yaml's `model` section sets, and what the data adds.

`ModelParams` is the `model` section, checked by pixelnet.config like every
section.  Some of its keys are read by only some architectures (`ONLY_FOR`)
and `mixtures` only by the logistic mixture head: params.yaml sets them all,
and a key that does not apply must keep its default, so that a changed value
the chosen model would ignore is an error naming the keys that do apply.

`ModelConfig` is what a network is built from and what a checkpoint stores:
those params plus the facts of the data it models (intensity levels, image
shape, classes), which have no defaults, so a model can only be built for data
it was told about (`ModelConfig.for_data`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from pixelnet.errors import ConfigError
from pixelnet.schema import require

if TYPE_CHECKING:  # the data stages read these configs without loading torch
    from pixelnet.model.distributions import Distribution


# The model keys that only some architectures read; every other key applies to all three.
ONLY_FOR: dict[str, tuple[str, ...]] = {
    "blocks": ("pixelcnn", "gated"), "first_kernel": ("pixelcnn", "gated"), "kernel": ("pixelcnn", "gated"),
    "resnet_layers": ("pixelcnnpp",), "resolutions": ("pixelcnnpp",), "dropout": ("pixelcnnpp",),
    "activation": ("pixelcnnpp",), "init": ("pixelcnnpp",), "attention": ("pixelcnnpp",),
}


@dataclass(frozen=True)
class ModelParams:
    """params.yaml's `model` section (its defaults equal params.yaml's: tests/test_config.py)."""

    SECTION: ClassVar[str] = "model"

    arch: Literal["pixelcnn", "gated", "pixelcnnpp"] = "pixelcnnpp"
    channels: int = 32
    blocks: int = 7
    first_kernel: int = 7
    kernel: int = 5
    # "auto": batch for pixelcnn and gated, weight (weight normalization, the paper's) for pixelcnnpp.
    norm: Literal["auto", "batch", "weight", "none"] = "auto"
    # The output distribution over intensities (model/distributions.py) and its components.
    # "auto": softmax for pixelcnn and gated, logistic_mixture for pixelcnnpp.
    head: Literal["auto", "softmax", "logistic_mixture"] = "softmax"
    mixtures: int = 10
    # pixelcnnpp only (model/pixelcnnpp.py): gated ResNet layers a block, resolution levels, dropout on the residual path.
    resnet_layers: int = 1
    resolutions: int = 3
    dropout: float = 0.0
    # pixelcnnpp: the gated ResNet layers' nonlinearity: concat_elu ([elu(x), elu(-x)], the paper's; its convs
    # read twice the channels) or elu.  init: data (openai's data-dependent init of the weight-normalized convs).
    activation: Literal["concat_elu", "elu"] = "concat_elu"
    init: Literal["default", "data"] = "default"
    attention: bool = True  # pixelcnnpp: causal self-attention over the ul stream at the lowest resolution
    # A learned class embedding added in every layer; "auto": when the data has labels (resolve_conditional).
    conditional: bool | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        s = self.SECTION
        require(self.channels >= 2 and self.channels % 2 == 0, s, "channels", "must be an even integer >= 2", self.channels)
        require(self.blocks >= 0, s, "blocks", "must be >= 0", self.blocks)
        require(self.mixtures >= 1, s, "mixtures", "must be >= 1", self.mixtures)
        require(self.resnet_layers >= 1, s, "resnet_layers", "must be >= 1", self.resnet_layers)
        require(self.resolutions >= 1, s, "resolutions", "must be >= 1 (1: no downsampling)", self.resolutions)
        require(0 <= self.dropout < 1, s, "dropout", "must be in [0, 1)", self.dropout)
        require(self.init == "default" or self.arch != "pixelcnnpp" or self.norm in ("auto", "weight"), s, "init",
                "data initializes weight-normalized convs: it needs model.norm auto or weight", self.init)
        takes = ("weight", "none") if self.arch == "pixelcnnpp" else ("batch", "none")
        require(self.norm in ("auto", *takes), s, "norm",
                "must be auto, weight or none for pixelcnnpp, and auto, batch or none for pixelcnn and gated", self.norm)
        for key in ("first_kernel", "kernel"):
            k = getattr(self, key)
            require(k >= 1 and k % 2 == 1, s, key, "must be an odd integer >= 1 (masks need a centre tap)", k)
        require(self.first_kernel >= 3, s, "first_kernel", "must be >= 3 (a 1x1 type-A conv sees no pixel)", self.first_kernel)
        for f in dataclasses.fields(ModelParams):
            if not self.applies(f.name) and getattr(self, f.name) != f.default:
                head = resolve_head(self.head, self.arch)
                users = "head logistic_mixture" if f.name == "mixtures" else f"arch {' and '.join(ONLY_FOR[f.name])}"
                raise ConfigError(f"{s}.{f.name} is for {users}: arch {self.arch} with head {head} does not read it, "
                                  f"so it must keep its default {f.default!r}, got {getattr(self, f.name)!r} (the keys "
                                  f"this model reads: {', '.join(self.applicable())})")

    def applies(self, key: str) -> bool:
        """Whether the model this config chooses reads `key`."""
        return applies(key, arch=self.arch, head=self.head)

    def applicable(self) -> list[str]:
        """The ModelParams keys the chosen model reads."""
        return [f.name for f in dataclasses.fields(ModelParams) if self.applies(f.name)]


@dataclass(frozen=True)
class ModelConfig(ModelParams):
    """ModelParams plus the data's facts; `conditional` resolved to true or false."""

    # Resolved for the arch and the data (for_data).
    conditional: bool = field(kw_only=True)
    head: Literal["softmax", "logistic_mixture"] = field(kw_only=True)
    norm: Literal["batch", "weight", "none"] = field(kw_only=True)
    n_classes: int = field(kw_only=True)  # labelled classes of the data, 0 if unlabelled
    levels: int = field(kw_only=True)
    image_channels: int = field(kw_only=True)
    height: int = field(kw_only=True)
    width: int = field(kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        s = self.SECTION
        require(isinstance(self.conditional, bool), s, "conditional", "must be resolved to true or false against "
                "the data (ModelConfig.for_data)", self.conditional)
        require(self.head != "auto" and self.norm != "auto", s, "head/norm", "must be resolved for the architecture "
                "(ModelConfig.for_data)", (self.head, self.norm))
        require(self.channels // 2 >= self.image_channels, s, "channels",
                f"must give at least one feature per image channel (>= {2 * self.image_channels})", self.channels)
        require(2 <= self.levels <= 256, s, "levels", "must be between 2 and 256", self.levels)
        require(self.image_channels in (1, 3), s, "image_channels", "must be 1 or 3", self.image_channels)
        require(self.height >= 1 and self.width >= 1, s, "height/width", "must be >= 1", (self.height, self.width))
        require(self.n_classes >= 0, s, "n_classes", "must be >= 0", self.n_classes)
        require(not self.conditional or self.n_classes >= 2, s, "conditional",
                "needs a labelled dataset with at least 2 classes", self.n_classes)

    def distribution(self) -> Distribution:
        """The output distribution this config's network parameterizes."""
        from pixelnet.model.distributions import make_distribution

        return make_distribution(head=self.head, levels=self.levels, image_channels=self.image_channels,
                                 mixtures=self.mixtures)

    @classmethod
    def for_data(cls, params: ModelParams, *, levels: int, image_channels: int, height: int, width: int,
                 n_classes: int) -> ModelConfig:
        """The config of `params` for data with these levels, shape and classes (0: unlabelled)."""
        chosen = {f.name: getattr(params, f.name) for f in dataclasses.fields(ModelParams)}
        resolved = {"conditional": resolve_conditional(params.conditional, n_classes),
                    "head": resolve_head(params.head, params.arch), "norm": resolve_norm(params.norm, params.arch)}
        return cls(**chosen | resolved, levels=levels, image_channels=image_channels, height=height, width=width,
                   n_classes=n_classes)


def applies(key: str, *, arch: str, head: str) -> bool:
    """Whether a model of `arch` with `head` ("auto" allowed) reads the model key `key`."""
    if key == "mixtures":
        return resolve_head(head, arch) == "logistic_mixture"
    return arch in ONLY_FOR.get(key, (arch,))


def resolve_conditional(conditional: bool | Literal["auto"], n_classes: int) -> bool:
    """model.conditional for data with n_classes labelled classes (0: unlabelled): "auto" is conditional on 2+."""
    if conditional == "auto":
        return n_classes >= 2
    return conditional


def resolve_head(head: str, arch: str) -> str:
    """model.head for `arch`: "auto" is the logistic mixture for pixelcnnpp (the paper's), else the softmax."""
    if head == "auto":
        return "logistic_mixture" if arch == "pixelcnnpp" else "softmax"
    return head


def resolve_norm(norm: str, arch: str) -> str:
    """model.norm for `arch`: "auto" is weight normalization for pixelcnnpp (the paper's), else BatchNorm."""
    if norm == "auto":
        return "weight" if arch == "pixelcnnpp" else "batch"
    return norm
