"""The PixelCNN network.

PixelCNN (van den Oord et al. 2016) as the project's seed describes it: a
masked k x k type-A convolution, residual blocks around type-B masked
convolutions, and a 1x1 head giving `levels` logits for every sub-pixel.

Inputs are integer intensity levels; `scale_input` (layers.py) is the one
place where they become network values.  With `conditional`, a learned
per-class bias is added after the input conv and after every block.  Outputs are logits shaped (B, levels, C, H, W),
which is what `F.cross_entropy` takes against targets shaped (B, C, H, W).
"""

from __future__ import annotations

import torch
from torch import nn

from pixelnet.model.config import ModelConfig
from pixelnet.model.layers import MaskedConv2d, ResidualBlock, scale_input


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
