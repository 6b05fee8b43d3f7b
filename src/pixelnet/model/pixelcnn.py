"""The PixelCNN network and its frozen config.

PixelCNN (van den Oord et al. 2016) as the project's seed describes it: a
masked k x k type-A convolution, residual blocks around type-B masked
convolutions, and a 1x1 head giving `levels` logits for every sub-pixel.

Inputs are integer intensity levels; `scale_input` (layers.py) is the one
place where they become network values.  With `conditional`, a learned
per-class bias is added after the input conv and after every block.  Outputs are logits shaped (B, levels, C, H, W),
which is what `F.cross_entropy` takes against targets shaped (B, C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from pixelnet.model.gated import GatedPixelCNN
from pixelnet.model.layers import MaskedConv2d, ResidualBlock, scale_input
from pixelnet.schema import require

# Keys of ModelConfig that params.yaml's `model` section may set; the rest
# (levels and image shape) come from the preprocessed data's manifest.
MODEL_PARAM_KEYS = {"arch", "channels", "blocks", "first_kernel", "kernel", "norm", "conditional"}


@dataclass(frozen=True)
class ModelConfig:
    SECTION: ClassVar[str] = "model"

    arch: Literal["pixelcnn", "gated"] = "pixelcnn"
    channels: int = 64
    blocks: int = 7
    first_kernel: int = 7
    kernel: int = 3
    norm: Literal["batch", "none"] = "batch"
    # A learned class embedding added in every layer; "auto": when the data has labels (resolve_conditional).
    conditional: bool | Literal["auto"] = False
    n_classes: int = 0  # from the data; used when conditional
    levels: int = 256
    image_channels: int = 1
    height: int = 28
    width: int = 28

    def __post_init__(self) -> None:
        s = self.SECTION
        require(self.channels >= 2 and self.channels % 2 == 0, s, "channels", "must be an even integer >= 2", self.channels)
        require(self.channels // 2 >= self.image_channels, s, "channels",
                f"must give at least one feature per image channel (>= {2 * self.image_channels})", self.channels)
        require(self.blocks >= 0, s, "blocks", "must be >= 0", self.blocks)
        for key in ("first_kernel", "kernel"):
            k = getattr(self, key)
            require(k >= 1 and k % 2 == 1, s, key, "must be an odd integer >= 1 (masks need a centre tap)", k)
        require(self.first_kernel >= 3, s, "first_kernel", "must be >= 3 (a 1x1 type-A conv sees no pixel)", self.first_kernel)
        require(2 <= self.levels <= 256, s, "levels", "must be between 2 and 256", self.levels)
        require(self.image_channels in (1, 3), s, "image_channels", "must be 1 or 3", self.image_channels)
        require(self.height >= 1 and self.width >= 1, s, "height/width", "must be >= 1", (self.height, self.width))
        # n_classes is 0 until the data fills it in (params.yaml cannot set it); then a conditional model needs 2+.
        require(self.conditional is not True or self.n_classes != 1, s, "conditional",
                "needs a labelled dataset with at least 2 classes", self.n_classes)


class PixelCNN(nn.Module):
    """Masked-convolution PixelCNN over `levels`-way categorical sub-pixels."""

    # Activation layout: channels-last is the faster one for oneDNN (CPU) and cuDNN convs (benchmarks/bench_training.py).
    memory_format: torch.memory_format = torch.channels_last

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c, h, g = config.image_channels, config.channels, config.image_channels
        self.input_conv = MaskedConv2d(c, h, kernel_size=config.first_kernel, mask_type="A", groups=g)
        self.blocks = nn.Sequential(
            *[ResidualBlock(h, kernel_size=config.kernel, norm=config.norm, groups=g) for _ in range(config.blocks)]
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(h, h, kernel_size=1, mask_type="B", groups=g),
            nn.ReLU(),
            MaskedConv2d(h, c * config.levels, kernel_size=1, mask_type="B", groups=g),
        )
        # Conditional: one learned per-channel bias for the input conv's output and each block's output.
        self.embed = nn.Embedding(config.n_classes, (config.blocks + 1) * h) if config.conditional else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) integer levels, labels (B,) when conditional -> logits (B, levels, C, H, W)."""
        b, c, hgt, wid = x.shape
        # A (B, 1, H, W) input is both NCHW- and channels-last-contiguous, so the first conv alone would pick
        # NCHW; the layout given here is the one every later layer keeps.
        feats = self.input_conv(scale_input(x, self.config.levels)).contiguous(memory_format=self.memory_format)
        if self.embed is None:
            feats = self.blocks(feats)
        else:
            biases = self.embed(labels)[:, :, None, None].chunk(len(self.blocks) + 1, dim=1)  # each (B, h, 1, 1)
            feats = feats + biases[0]
            for block, bias in zip(self.blocks, biases[1:]):
                feats = block(feats) + bias
        out = self.head(feats)
        # Head channels are grouped by image channel: (B, C * levels, H, W) -> (B, C, levels, H, W).
        out = out.view(b, c, self.config.levels, hgt, wid)
        return out.transpose(1, 2)  # (B, levels, C, H, W)


def resolve_conditional(config: ModelConfig, n_classes: int) -> bool:
    """model.conditional for data with n_classes labelled classes (0: unlabelled): "auto" is conditional on 2+."""
    if config.conditional == "auto":
        return n_classes >= 2
    return config.conditional


def build_model(config: ModelConfig) -> nn.Module:
    """The one constructor every command uses (model.conditional resolved: true or false)."""
    if config.conditional == "auto":
        raise ValueError("resolve model.conditional 'auto' against the data first (resolve_conditional)")
    if config.arch == "pixelcnn":
        return PixelCNN(config)
    if config.arch == "gated":
        return GatedPixelCNN(config)
    raise ValueError(f"unknown arch {config.arch!r}")
