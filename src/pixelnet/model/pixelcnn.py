"""PixelCNN (van den Oord et al. 2016): a masked k x k type-A conv, residual blocks of type-B masked convs, and a
masked 1x1 head giving the output distribution's parameters (model/distributions.py).

Inputs are integer levels (`scale_input` makes them network values).  With `conditional`, a learned per-class
bias is added after the input conv and after every block.  The output is what the distribution's `arrange` makes of
the head: softmax logits (B, levels, C, H, W), or mixture parameters (B, P, H, W).
"""

from __future__ import annotations

import torch
from torch import nn

from pixelnet.model.config import ModelConfig
from pixelnet.model.layers import MaskedConv2d, MaskedHead, ResidualBlock, in_float32, scale_input


class PixelCNN(nn.Module):
    """Masked-convolution PixelCNN over the intensities of every sub-pixel."""

    # Activation layout: channels-last is the faster one for oneDNN (CPU) and cuDNN convs (benchmarks/bench_training.py).
    memory_format: torch.memory_format = torch.channels_last

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.distribution = config.distribution()
        c, h, g = config.image_channels, config.channels, self.distribution.groups
        self.input_conv = MaskedConv2d(c, h, kernel_size=config.first_kernel, mask_type="A", groups=g)
        self.blocks = nn.Sequential(
            *[ResidualBlock(h, kernel_size=config.kernel, norm=config.norm, groups=g) for _ in range(config.blocks)]
        )
        self.head = MaskedHead(h, self.distribution.out_channels, groups=g)
        # Conditional: one learned per-channel bias for the input conv's output and each block's output.
        self.embed = nn.Embedding(config.n_classes, (config.blocks + 1) * h) if config.conditional else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) integer levels, labels (B,) when conditional -> the distribution's parameters."""
        # A (B, 1, H, W) input is both NCHW- and channels-last-contiguous, so the first conv alone would pick
        # NCHW; the layout given here is the one every later layer keeps.
        feats = self.input_conv(scale_input(x, self.config.levels)).contiguous(memory_format=self.memory_format)
        if self.embed is None:
            feats = self.blocks(feats)
        else:
            biases = self.embed(labels)[:, :, None, None].to(feats.dtype)  # in the activations' dtype (bf16 autocast)
            biases = biases.chunk(len(self.blocks) + 1, dim=1)  # each (B, h, 1, 1)
            feats = feats + biases[0]
            for block, bias in zip(self.blocks, biases[1:]):
                feats = block(feats) + bias
        return self.distribution.arrange(in_float32(self.head, feats))
