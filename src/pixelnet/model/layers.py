"""Masked convolutions, the PixelCNN residual block and head, input scaling and the shifts (plain PyTorch).

`MaskedConv2d` multiplies its weight by its mask (a buffer) in `forward`, so masked taps stay zero whatever the
optimizer does and a loaded state dict needs no fixing up.  Its output at (i, j) is centred on input (i, j); every
row of a k x k mask below the centre is zero, so it convolves with the top k // 2 + 1 rows only (padding k // 2 above,
none below): the full masked conv's result for (k + 1) / 2k of its work.  A block's `step` is its math with the
convs given as functions: `forward` passes its modules, the incremental sampler (sampling/pixelcnn.py) functions
that compute one position from its caches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from pixelnet.model.masks import conv_mask

Conv = Callable[[torch.Tensor], torch.Tensor]


class MaskedConv2d(nn.Conv2d):
    """A k x k convolution that sees only earlier pixels (and earlier channels)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        mask_type: str,
        groups: int = 1,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.mask_type = mask_type
        mask = conv_mask(
            mask_type=mask_type,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=kernel_size,
            groups=groups,
        )
        self.register_buffer("mask", mask, persistent=False)

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.kernel_size[0] // 2
        if p == 0:
            return F.conv2d(x, self.masked_weight(), self.bias)
        # Padding (left, right, top, bottom) = (p, p, p, 0) with kernel rows 0 .. p: output row i reads rows i - p .. i.
        return F.conv2d(F.pad(x, (p, p, p, 0)), self.masked_weight()[:, :, : p + 1], self.bias)


def in_float32(fn: Callable[..., torch.Tensor], *xs: torch.Tensor) -> torch.Tensor:
    """fn(*xs) in float32 even inside a bf16 autocast region: for the output heads, whose last layer gives the
    distribution's parameters (in bf16 a mixture mean in [0.5, 1) moves in steps of half a 256-level bin)."""
    device_type = xs[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return fn(*xs)
    with torch.autocast(device_type, enabled=False):
        return fn(*(x.float() for x in xs))


def scale_input(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer levels in [0, levels - 1] -> floats in [-1, 1], the network's input scale (the one place)."""
    return x.float() * (2.0 / (levels - 1)) - 1.0


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """Row i of the result is row i - 1 of x (zeros in row 0)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def shift_right(x: torch.Tensor) -> torch.Tensor:
    """Column j of the result is column j - 1 of x (zeros in column 0)."""
    return F.pad(x, (1, 0))[:, :, :, :-1]


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalization that keeps the model causal at sampling time.

    BatchNorm in eval mode is a per-channel affine map, so it mixes neither
    positions nor channels.  Norms over space or over channels (GroupNorm,
    LayerNorm) would leak later pixels or sub-pixels, so they are not offered.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class ResidualBlock(nn.Module):
    """x + norm_out(conv_out(ReLU(norm_mid(conv_mid(ReLU(norm_in(conv_in(ReLU(x))))))))).

    conv_in is a 1x1 (h -> h/2), conv_mid the masked k x k type B (h/2 -> h/2), conv_out a 1x1 (h/2 -> h).
    """

    def __init__(self, channels: int, *, kernel_size: int, norm: str, groups: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv_in = MaskedConv2d(channels, half, kernel_size=1, mask_type="B", groups=groups)
        self.norm_in = make_norm(norm, half)
        self.conv_mid = MaskedConv2d(half, half, kernel_size=kernel_size, mask_type="B", groups=groups)
        self.norm_mid = make_norm(norm, half)
        self.conv_out = MaskedConv2d(half, channels, kernel_size=1, mask_type="B", groups=groups)
        self.norm_out = make_norm(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.step(x, conv_in=lambda a: self.norm_in(self.conv_in(a)),
                         conv_mid=lambda a: self.norm_mid(self.conv_mid(a)),
                         conv_out=lambda a: self.norm_out(self.conv_out(a)))

    @staticmethod
    def step(x: torch.Tensor, *, conv_in: Conv, conv_mid: Conv, conv_out: Conv) -> torch.Tensor:
        """The block's math, each conv (with the norm after it) given as a function."""
        a = conv_in(F.relu(x))
        a = conv_mid(F.relu(a))
        return x + conv_out(F.relu(a))


class MaskedHead(nn.Module):
    """The masked models' output layers: ReLU, a masked 1x1 `hidden` (h -> h), ReLU, a masked 1x1 `out` (h -> the
    distribution's parameters), type B, so that colour group g's outputs see feature groups <= g."""

    def __init__(self, channels: int, out_channels: int, *, groups: int) -> None:
        super().__init__()
        self.hidden = MaskedConv2d(channels, channels, kernel_size=1, mask_type="B", groups=groups)
        self.out = MaskedConv2d(channels, out_channels, kernel_size=1, mask_type="B", groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.step(x, hidden=self.hidden, out=self.out)

    @staticmethod
    def step(x: torch.Tensor, *, hidden: Conv, out: Conv) -> torch.Tensor:
        """The head's math, its convs given as functions."""
        return out(F.relu(hidden(F.relu(x))))
