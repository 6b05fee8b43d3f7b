"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders").

Two stacks remove the plain PixelCNN's blind spot.  The vertical stack's (k//2 + 1) x k conv reads rows i - k//2 .. i,
so the horizontal stack reads it shifted down a row (`shift_down`: rows < i).  The horizontal stack's 1 x (k//2 + 1)
conv reads columns j - k//2 .. j of the current row, its centre tap masked by colour group (type A in the first layer,
B after: masks.py).  Each stack's conv gives 2p channels gated as tanh(a) * sigmoid(b), channel o of a paired with
channel o of b so that both halves share one colour grouping.  The horizontal stack is residual after the first
layer, every layer adds a skip connection (the head reads their sum), and with `conditional` a class embedding is
added to both stacks' pre-activations in every layer.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pixelnet.model.config import ModelConfig
from pixelnet.model.layers import Conv, MaskedConv2d, MaskedHead, in_float32, make_norm, scale_input, shift_down
from pixelnet.model.masks import conv_mask


def gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def horizontal_mask(*, in_channels: int, channels: int, kernel_size: int, mask_type: str, groups: int) -> torch.Tensor:
    """(2p, Cin, 1, k//2 + 1): the centre row of a k x k mask, up to the centre; both gate halves alike."""
    r = kernel_size // 2
    half = conv_mask(mask_type=mask_type, in_channels=in_channels, out_channels=channels,
                     kernel_size=kernel_size, groups=groups)[:, :, r:r + 1, : r + 1]
    return torch.cat([half, half], dim=0)


class GatedLayer(nn.Module):
    """One layer of both stacks: (v, h) -> (v', h', skip)."""

    def __init__(self, in_channels: int, channels: int, *, kernel_size: int, mask_type: str, groups: int,
                 norm: str, n_classes: int) -> None:
        super().__init__()
        r, p = kernel_size // 2, channels
        self.kernel_size = kernel_size
        self.residual = mask_type == "B"
        self.vertical = nn.Conv2d(in_channels, 2 * p, (r + 1, kernel_size))
        self.horizontal = nn.Conv2d(in_channels, 2 * p, (1, r + 1))
        self.register_buffer("h_mask", horizontal_mask(in_channels=in_channels, channels=p, kernel_size=kernel_size,
                                                       mask_type=mask_type, groups=groups), persistent=False)
        self.v_to_h = nn.Conv2d(2 * p, 2 * p, 1)
        self.h_out = MaskedConv2d(p, p, kernel_size=1, mask_type="B", groups=groups)
        self.norm = make_norm(norm, p)
        self.skip = MaskedConv2d(p, p, kernel_size=1, mask_type="B", groups=groups)
        self.embed = nn.Embedding(n_classes, 4 * p) if n_classes else None

    def forward(self, v: torch.Tensor, h: torch.Tensor, labels: torch.Tensor | None = None):
        r = self.kernel_size // 2
        v_pre = self.vertical(F.pad(v, (r, r, r, 0)))  # (B, 2p, H, W), row i sees rows i - r .. i
        h_pre = F.conv2d(F.pad(h, (r, 0, 0, 0)), self.horizontal.weight * self.h_mask, self.horizontal.bias)
        h_pre = h_pre + self.v_to_h(shift_down(v_pre))  # the vertical stack, rows < i only
        cond_v = cond_h = None
        if self.embed is not None:
            cond_v, cond_h = self.embed(labels)[:, :, None, None].to(v_pre.dtype).chunk(2, dim=1)
        h, skip = self.step(h, h_pre, cond_h, h_out=lambda x: self.norm(self.h_out(x)), skip=self.skip)
        return gate(v_pre if cond_v is None else v_pre + cond_v), h, skip

    def step(self, h: torch.Tensor, h_pre: torch.Tensor, cond: torch.Tensor | None, *, h_out: Conv, skip: Conv):
        """The horizontal stack after its conv: (h', skip) from the layer's input h and h_pre, its conv plus v_to_h
        of the vertical stack above.  The 1x1 convs are functions: the forward pass gives its modules, the
        incremental sampler (sampling/gated.py) functions of one position."""
        gated = gate(h_pre if cond is None else h_pre + cond)
        new = h_out(gated)
        return (h + new if self.residual else new), skip(gated)


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN: 1 + blocks gated layers, skip connections summed into a 1x1 head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.distribution = config.distribution()
        c, p, g = config.image_channels, config.channels, self.distribution.groups
        n_classes = config.n_classes if config.conditional else 0
        self.layers = nn.ModuleList(
            [GatedLayer(c, p, kernel_size=config.first_kernel, mask_type="A", groups=g, norm=config.norm,
                        n_classes=n_classes)]
            + [GatedLayer(p, p, kernel_size=config.kernel, mask_type="B", groups=g, norm=config.norm,
                          n_classes=n_classes) for _ in range(config.blocks)]
        )
        self.head = MaskedHead(p, self.distribution.out_channels, groups=g)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) integer levels, labels (B,) when conditional -> the distribution's parameters."""
        v = h = scale_input(x, self.config.levels)
        skip = 0
        for layer in self.layers:
            v, h, s = layer(v, h, labels)
            skip = skip + s
        return self.distribution.arrange(in_float32(self.head, skip))
