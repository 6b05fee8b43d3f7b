"""The incremental form of `PixelCNN`: one position at a time, through the model's own block and head `step`s.

Each k x k masked conv keeps its input in a cache; `begin_row` computes its taps in the rows above for the whole
row in one conv, and a step adds the centre-row taps with one matmul (docs/sampling.md).  The step for mask group g
computes only group g's outputs of every conv, into a buffer of all groups: groups < g there are final, groups > g
stale, and the masks give those zero weight, so a colour pixel costs what a gray one does.  BatchNorm (eval) and a
conditional model's class biases are folded into the conv before them.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from pixelnet.model.layers import MaskedConv2d, scale_input
from pixelnet.model.masks import channel_group
from pixelnet.model.pixelcnn import PixelCNN
from pixelnet.sampling.fold import fold_norm


class _Conv:
    """A MaskedConv2d with the norm after it folded in, computing one mask group's outputs at one position.

    With `size` (H, W) it caches its input, channels last and padded by p = k // 2 on the top, left and right:
    (N, H + p, W + 2p, Cin), input (i, j) at (i + p, j + p), so the centre-row window of (i, j), columns j - p .. j,
    is (p + 1) * Cin contiguous floats an image.
    """

    def __init__(self, conv: MaskedConv2d, norm: nn.Module | None = None, *, groups: int, n: int,
                 size: tuple[int, int] | None = None, class_bias: torch.Tensor | None = None) -> None:
        w, b = fold_norm(conv.masked_weight(), conv.bias, norm)
        dtype, (c_out, c_in, k, _) = conv.weight.dtype, w.shape
        self.p = p = k // 2
        self.weight, self.bias, self.class_bias = w.to(dtype), b.to(dtype), class_bias  # class_bias: (N, Cout)
        owner = [channel_group(o, c_out, groups) for o in range(c_out)]
        self.slices = [slice(owner.index(g), len(owner) - owner[::-1].index(g)) for g in range(groups)]
        centre = w[:, :, p, :p + 1].permute(2, 1, 0).reshape((p + 1) * c_in, c_out)  # rows ordered (column, Cin)
        self.centre = [centre[:, s].to(dtype).contiguous() for s in self.slices]
        bias = self.bias if class_bias is None else self.bias + class_bias
        self.group_bias = [bias[..., s] for s in self.slices]
        self.out = self.weight.new_zeros(n, c_out)  # the output at the current position, all groups
        self.outs = [self.out[:, s] for s in self.slices]
        self.cache = None if size is None else self.weight.new_zeros(n, size[0] + p, size[1] + 2 * p, c_in)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The conv of the given top rows x (N, Cin, R, W), whole (prefill), which the cache keeps."""
        if self.cache is not None:
            self.cache[:, self.p:self.p + x.shape[2], self.p:self.p + x.shape[3]] = x.permute(0, 2, 3, 1)
        y = F.conv2d(x, self.weight, self.bias, padding=self.p)  # the zeros below row R: the mask never reads them
        return y if self.class_bias is None else y + self.class_bias[:, :, None, None]

    def begin_row(self, i: int) -> None:
        """Rows < i are final: the taps in the p rows above row i, for every column, and views of row i."""
        n, hc, wc, c_in = self.cache.shape
        p, w = self.p, wc - 2 * self.p
        if p:
            rows = self.cache[:, i:i + p].permute(0, 3, 1, 2)  # (N, Cin, p, W + 2p): rows i - p .. i - 1
            above = F.conv2d(rows, self.weight[:, :, :p], self.bias)[:, :, 0].permute(2, 0, 1)  # (W, N, Cout)
        else:
            above = self.bias.expand(w, n, -1)
        above = (above if self.class_bias is None else above + self.class_bias).contiguous()
        self.above = [above[:, :, s] for s in self.slices]
        self.windows = self.cache.as_strided((w, n, (p + 1) * c_in), (c_in, hc * wc * c_in, 1),
                                             self.cache.storage_offset() + (i + p) * wc * c_in)
        self.slot = self.cache[:, i + p, p:p + w].transpose(0, 1)  # (W, N, Cin): where input (i, j) goes

    def __call__(self, x: torch.Tensor | None, *, j: int, g: int) -> torch.Tensor:
        """Group g's outputs at (i, j) of row i (begin_row), from x (N, Cin), the input there (None: already in the
        cache).  Returns the buffer of all groups (N, Cout)."""
        if self.cache is None:
            torch.addmm(self.group_bias[g], x, self.centre[g], out=self.outs[g])
            return self.out
        if x is not None:
            self.slot[j] = x
        torch.addmm(self.above[g][j], self.windows[j], self.centre[g], out=self.outs[g])
        return self.out


class _Block(NamedTuple):
    """A ResidualBlock's convs, norms folded in."""

    conv_in: _Conv
    conv_mid: _Conv  # the k x k one, with a cache
    conv_out: _Conv


class PixelCNNIncremental:
    """Per-layer caches and a one-position step for a `PixelCNN` in eval mode, batch size n."""

    def __init__(self, model: PixelCNN, n: int, labels: torch.Tensor | None = None) -> None:
        cfg = model.config
        self.model, self.levels = model, cfg.levels
        conv = functools.partial(_Conv, groups=model.distribution.groups, n=n)
        size = (cfg.height, cfg.width)
        # Per-class biases (N, h), after the input conv and after each block (model.forward).
        biases = [None] * (len(model.blocks) + 1)
        if model.embed is not None:
            biases = model.embed(labels.to(model.embed.weight.device)).chunk(len(biases), dim=1)
        self.input_conv = conv(model.input_conv, size=size, class_bias=biases[0])
        self.blocks = [_Block(conv(b.conv_in, b.norm_in), conv(b.conv_mid, b.norm_mid, size=size),
                              conv(b.conv_out, b.norm_out, class_bias=bias))
                       for b, bias in zip(model.blocks, biases[1:])]
        self.hidden, self.out = conv(model.head.hidden), conv(model.head.out)

    def prefill(self, x: torch.Tensor) -> None:
        """Fill the caches from given top rows x (N, C, R, W) of levels, R >= 0, with whole convs."""
        if x.shape[2] == 0:
            return
        x = self.input_conv.rows(scale_input(x, self.levels))
        for block, convs in zip(self.model.blocks, self.blocks):
            x = block.step(x, conv_in=convs.conv_in.rows, conv_mid=convs.conv_mid.rows, conv_out=convs.conv_out.rows)

    def begin_row(self, i: int) -> None:
        for conv in [self.input_conv] + [convs.conv_mid for convs in self.blocks]:
            conv.begin_row(i)

    def output(self, i: int, j: int, g: int) -> torch.Tensor:
        """The head's group-g outputs (N, P / groups) at (i, j); needs begin_row(i) and every earlier write."""
        def at(conv: _Conv) -> functools.partial:
            return functools.partial(conv, j=j, g=g)

        x = self.input_conv(None, j=j, g=g)
        for block, convs in zip(self.model.blocks, self.blocks):
            x = block.step(x, conv_in=at(convs.conv_in), conv_mid=at(convs.conv_mid), conv_out=at(convs.conv_out))
        return self.model.head.step(x, hidden=at(self.hidden), out=at(self.out))[:, self.out.slices[g]]

    def write(self, i: int, j: int, g: int, value: torch.Tensor) -> None:
        """Sub-pixel (i, j, g) is now `value` (N,) levels."""
        p = self.input_conv.p
        self.input_conv.cache[:, i + p, j + p, g] = scale_input(value, self.levels)
