"""The incremental form of `GatedPixelCNN`: the vertical stack a row at a time, the horizontal one a position at a time.

The vertical stack at row i is read by the horizontal stack only at row i + 1, so `begin_row(i)` runs the model's
own vertical convs on row i - 1; each step runs every layer's horizontal conv at (i, j) as one matmul over a
one-row cache, then the layer's own `step` and the head's.  A step computes every feature at (i, j): those of colour
groups after the channel being drawn are stale, but the masks give them zero weight.  BatchNorm (eval) after the
residual 1x1 is folded into it (fold.py).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from pixelnet.model.gated import GatedLayer, GatedPixelCNN, gate
from pixelnet.model.layers import Conv, MaskedConv2d, scale_input
from pixelnet.sampling.fold import fold_norm


def _linear(conv: MaskedConv2d, norm: nn.Module | None = None) -> Conv:
    """A masked 1x1 conv, and the norm after it folded in, as a function of one position's inputs (N, Cin)."""
    w, b = fold_norm(conv.masked_weight()[:, :, 0, 0], conv.bias, norm)
    return functools.partial(F.linear, weight=w.to(conv.weight.dtype), bias=b.to(conv.weight.dtype))


class _Layer:
    """A GatedLayer's caches: its vertical input (N, Cin, H + r, W + 2r), padded r on the top, left and right, and the
    current row of its horizontal input (N, W + r, Cin), channels last and padded r on the left."""

    def __init__(self, layer: GatedLayer, n: int, size: tuple[int, int], labels: torch.Tensor | None) -> None:
        (h, w), r, c_in = size, layer.kernel_size // 2, layer.vertical.in_channels
        self.module, self.r, self.width = layer, r, w
        self.v_in = layer.vertical.weight.new_zeros(n, c_in, h + r, w + 2 * r)
        self.h_in = layer.vertical.weight.new_zeros(n, w + r, c_in)
        hw = (layer.horizontal.weight * layer.h_mask)[:, :, 0]  # (2p, Cin, r + 1)
        self.h_weight = hw.permute(2, 1, 0).reshape(-1, hw.shape[0]).contiguous()  # rows ordered (column, Cin)
        self.h_out, self.skip = _linear(layer.h_out, layer.norm), _linear(layer.skip)
        self.cond_v = self.cond_h = None  # (N, 2p, 1, 1) and (N, 2p)
        if layer.embed is not None:
            self.cond_v, self.cond_h = layer.embed(labels).chunk(2, dim=1)
            self.cond_v = self.cond_v[:, :, None, None]
        self.v_pre = layer.vertical.weight.new_zeros(n, 2 * layer.h_out.out_channels, 1, w)  # of the row above
        self.h_pre_above: torch.Tensor | None = None  # (W, N, 2p): horizontal bias + v_to_h of the row above

    def vertical(self, i: int) -> torch.Tensor:
        """The vertical stack's output at final row i, (N, 2p, W), given this layer's input there."""
        self.v_pre = self.module.vertical(self.v_in[:, :, i:i + self.r + 1])  # (N, 2p, 1, W): rows i - r .. i
        return gate(self.v_pre if self.cond_v is None else self.v_pre + self.cond_v)[:, :, 0]

    def put_row(self, i: int, v: torch.Tensor) -> None:
        self.v_in[:, :, i + self.r, self.r:self.r + self.width] = v


class GatedIncremental:
    """Row caches and a one-position step for a `GatedPixelCNN` in eval mode, batch size n."""

    def __init__(self, model: GatedPixelCNN, n: int, labels: torch.Tensor | None = None) -> None:
        cfg = model.config
        self.model, self.levels = model, cfg.levels
        labels = labels.to(model.head.out.weight.device) if labels is not None else None
        self.layers = [_Layer(layer, n, (cfg.height, cfg.width), labels) for layer in model.layers]
        self.hidden, self.out = _linear(model.head.hidden), _linear(model.head.out)
        self.per_group = model.distribution.out_channels // model.distribution.groups
        self.done_rows = 0  # rows whose vertical stack has run

    def _vertical(self, i: int) -> None:
        """Row i of the image is final: run the vertical stack on it."""
        for prev, layer in zip(self.layers, self.layers[1:]):
            layer.put_row(i, prev.vertical(i))
        self.layers[-1].vertical(i)

    def prefill(self, x: torch.Tensor) -> None:
        """Take given top rows x (N, C, R, W) of levels, R >= 0: write them and run their vertical stack."""
        for i in range(x.shape[2]):
            self.layers[0].put_row(i, scale_input(x[:, :, i], self.levels))
            self._vertical(i)
        self.done_rows = x.shape[2]

    def begin_row(self, i: int) -> None:
        while self.done_rows < i:
            self._vertical(self.done_rows)
            self.done_rows += 1
        for layer in self.layers:  # the vertical stack of row i - 1 (zeros above row 0: shift_down)
            pre = layer.module.v_to_h(layer.v_pre)[:, :, 0] + layer.module.horizontal.bias[:, None]  # (N, 2p, W)
            layer.h_pre_above = pre.permute(2, 0, 1).contiguous()

    def output(self, i: int, j: int, g: int) -> torch.Tensor:
        """The head's group-g outputs (N, P / groups) at (i, j): a softmax's channel-g logits, or a pixel's mixture."""
        skip = 0
        for layer, after in zip(self.layers, [*self.layers[1:], None]):
            window = layer.h_in[:, j:j + layer.r + 1].flatten(1)  # columns j - r .. j: (N, (r + 1) Cin)
            h_pre = torch.addmm(layer.h_pre_above[j], window, layer.h_weight)
            h_here = layer.h_in[:, j + layer.r]  # the layer's input at (i, j), its residual
            h, s = layer.module.step(h_here, h_pre, layer.cond_h, h_out=layer.h_out, skip=layer.skip)
            skip = skip + s
            if after is not None:
                after.h_in[:, j + after.r] = h
        out = self.model.head.step(skip, hidden=self.hidden, out=self.out)  # (N, P), grouped by mask group
        return out[:, g * self.per_group:(g + 1) * self.per_group]

    def write(self, i: int, j: int, ch: int, value: torch.Tensor) -> None:
        first, v = self.layers[0], scale_input(value, self.levels)
        first.v_in[:, ch, i + first.r, j + first.r] = v
        first.h_in[:, j + first.r, ch] = v
