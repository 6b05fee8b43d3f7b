"""ModelConfig: what a network is built from and what a checkpoint stores.

It is params.yaml's `model` section (pixelnet.config.ModelParams) with its "auto" values resolved for the
architecture and the data, plus the facts of the data it models (intensity levels, image shape, classes), so a
model can only be built for data it was told about (`ModelConfig.for_data`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from pixelnet.config import ModelParams, resolve_head

if TYPE_CHECKING:  # importing ModelConfig loads no torch
    from pixelnet.model.distributions import Distribution


class ModelConfig(ModelParams):
    """ModelParams with conditional, head and norm resolved, and the data's facts."""

    conditional: bool
    head: Literal["softmax", "logistic_mixture"]
    norm: Literal["batch", "weight", "none"]
    n_classes: Annotated[int, Field(ge=0)]  # labelled classes of the data, 0 if unlabelled
    levels: Annotated[int, Field(ge=2, le=256)]
    image_channels: Literal[1, 3]
    height: Annotated[int, Field(ge=1)]
    width: Annotated[int, Field(ge=1)]

    def check(self) -> None:
        super().check()
        self.require(self.channels // 2 >= self.image_channels, "channels",
                     f"must give at least one feature per image channel (>= {2 * self.image_channels})")
        self.require(not self.conditional or self.n_classes >= 2, "conditional",
                     "needs a labelled dataset with at least 2 classes")

    def distribution(self) -> Distribution:
        """The output distribution this config's network parameterizes."""
        from pixelnet.model.distributions import make_distribution

        return make_distribution(head=self.head, levels=self.levels, image_channels=self.image_channels,
                                 mixtures=self.mixtures)

    @classmethod
    def for_data(cls, params: ModelParams, *, levels: int, image_channels: int, height: int, width: int,
                 n_classes: int) -> ModelConfig:
        """The config of `params` for data with these levels, shape and classes (0: unlabelled).

        "auto": conditional on 2+ classes; the logistic mixture head and weight normalization for pixelcnnpp
        (the paper's), else the softmax and BatchNorm.
        """
        pp = params.arch == "pixelcnnpp"
        resolved = {"conditional": n_classes >= 2 if params.conditional == "auto" else params.conditional,
                    "head": resolve_head(params.head, params.arch),
                    "norm": ("weight" if pp else "batch") if params.norm == "auto" else params.norm}
        return cls.from_mapping(params.model_dump() | resolved | dict(
            levels=levels, image_channels=image_channels, height=height, width=width, n_classes=n_classes))
