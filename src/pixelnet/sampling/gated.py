"""Exact one-position-at-a-time evaluation of `GatedPixelCNN`, for the fast sampler.

The two stacks split the work by rows (see model/gated.py):

- the vertical stack at row i reads rows i - r .. i of the layer below and
  is read by the horizontal stack only at row i + 1.  So once row i - 1 is
  final, `begin_row(i)` runs the whole vertical stack for row i - 1 with one
  row-conv per layer, and keeps v_to_h of it for every column of row i;
- the horizontal stack reads only the current row, up to the current pixel,
  so each step computes position (i, j) through every layer with matmuls
  over a one-row cache per layer (columns j - r .. j), plus the skips and
  the head.

Colour, softmax head: each step recomputes every feature at (i, j).  Features of groups
later than the channel being drawn then hold values computed before that
channel was written, but the masks give them zero weight in its logits,
and they are recomputed at the step of their own channel.  A logistic mixture
has one mask group: its step runs once per pixel, before R is drawn.

BatchNorm (eval) after the residual 1x1 is folded into it, in float64 (fold.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pixelnet.model.gated import GatedLayer, GatedPixelCNN, gate
from pixelnet.model.layers import MaskedConv2d, scale_input
from pixelnet.sampling.fold import fold_norm


def _matrix(weight: torch.Tensor, bias: torch.Tensor | None, norm: nn.Module | None = None):
    """A 1x1 conv (Cout, Cin, 1, 1), then optional eval BatchNorm -> (Cin, Cout) matrix and (Cout,) bias."""
    w, b = fold_norm(weight[:, :, 0, 0], bias, norm)
    return w.t().contiguous().to(weight.dtype), b.to(weight.dtype)


def _masked(conv: MaskedConv2d, norm: nn.Module | None = None):
    return _matrix(conv.masked_weight(), conv.bias, norm)


class _Layer:
    """One GatedLayer's weights laid out for row convs (vertical) and one-position matmuls (horizontal)."""

    def __init__(self, layer: GatedLayer, cond: torch.Tensor | None) -> None:
        self.r = layer.kernel_size // 2
        self.p = layer.h_out.weight.shape[0]
        self.residual = layer.residual
        self.vertical = layer.vertical
        hw = (layer.horizontal.weight * layer.h_mask)[:, :, 0, :]  # (2p, Cin, r + 1)
        self.h_weight = hw.permute(2, 1, 0).reshape(-1, hw.shape[0]).contiguous()  # ((r + 1) * Cin, 2p), rows (column, Cin)
        self.h_bias = layer.horizontal.bias
        self.v_to_h = _matrix(layer.v_to_h.weight, layer.v_to_h.bias)
        self.out = _masked(layer.h_out, layer.norm)
        self.skip = _masked(layer.skip)
        self.cond_v, self.cond_h = (cond.chunk(2, dim=1) if cond is not None else (None, None))  # (N, 2p) each


class GatedIncremental:
    """Row caches and a one-position step for a `GatedPixelCNN` in eval mode, batch size n."""

    def __init__(self, model: GatedPixelCNN, n: int, labels: torch.Tensor | None = None) -> None:
        cfg = model.config
        self.n, self.levels, self.c, self.height, self.width = n, cfg.levels, cfg.image_channels, cfg.height, cfg.width
        self.per_group = model.distribution.out_channels // model.distribution.groups
        device, dtype = model.head.out.weight.device, model.head.out.weight.dtype
        self.layers = [
            _Layer(layer, layer.embed(labels.to(device)) if layer.embed is not None else None)
            for layer in model.layers
        ]
        self.head = (_masked(model.head.hidden), _masked(model.head.out))
        w, r0 = self.width, self.layers[0].r
        # Vertical inputs, channels first, padded r on top, left and right: row i at i + r, column j at j + r.
        self.v_cache = [torch.zeros(n, L.vertical.in_channels, self.height + L.r, w + 2 * L.r, device=device, dtype=dtype)
                        for L in self.layers]
        # Horizontal inputs of the current row, channels last, padded r on the left: column j at j + r.
        self.h_row = [torch.zeros(n, w + L.r, L.vertical.in_channels, device=device, dtype=dtype) for L in self.layers]
        self.image = torch.zeros(n, self.c, self.height, w, device=device, dtype=dtype)  # scaled levels
        self.vh: list[torch.Tensor] = []  # per layer: v_to_h of the row above, (N, W, 2p)
        self.done_rows = 0  # rows whose vertical stack is computed
        self.r0 = r0

    def _vertical_row(self, i: int) -> None:
        """Run the vertical stack on final row i of every layer; keep v_to_h(row i) for row i + 1."""
        self.vh = []
        for k, L in enumerate(self.layers):
            rows = self.v_cache[k][:, :, i:i + L.r + 1]  # original rows i - r .. i
            v_pre = F.conv2d(rows, L.vertical.weight, L.vertical.bias)[:, :, 0]  # (N, 2p, W)
            wt, b = L.v_to_h
            self.vh.append(torch.addmm(b, v_pre.transpose(1, 2).reshape(-1, v_pre.shape[1]), wt).view(self.n, self.width, -1))
            if k + 1 < len(self.layers):
                if L.cond_v is not None:
                    v_pre = v_pre + L.cond_v[:, :, None]
                nxt = self.layers[k + 1]
                self.v_cache[k + 1][:, :, i + nxt.r, nxt.r:nxt.r + self.width] = gate(v_pre)

    def prefill(self, x: torch.Tensor) -> None:
        """Take given top rows x (N, C, R, W) of levels, R >= 0: write them and run their vertical stack."""
        xs = scale_input(x, self.levels)
        for i in range(x.shape[2]):
            self.image[:, :, i] = xs[:, :, i]
            self.v_cache[0][:, :, i + self.r0, self.r0:self.r0 + self.width] = xs[:, :, i]
            self._vertical_row(i)
        self.done_rows = x.shape[2]

    def begin_row(self, i: int) -> None:
        while self.done_rows < i:
            self._vertical_row(self.done_rows)
            self.done_rows += 1
        if i == 0:  # shift_down feeds zeros into v_to_h above the first row
            self.vh = [L.v_to_h[1].expand(self.n, self.width, -1) for L in self.layers]
        self.h_row[0][:, self.r0:] = self.image[:, :, i].transpose(1, 2)

    def output(self, i: int, j: int, g: int) -> torch.Tensor:
        """The head's group-g outputs (N, P / groups) at (i, j): a softmax's channel-g logits, or a pixel's mixture."""
        skip = None
        for k, L in enumerate(self.layers):
            row = self.h_row[k]
            window = row[:, j:j + L.r + 1].reshape(self.n, -1)  # columns j - r .. j: ((r + 1) * Cin)
            pre = torch.addmm(L.h_bias + self.vh[k][:, j], window, L.h_weight)  # (N, 2p); bias broadcast per image
            if L.cond_h is not None:
                pre = pre + L.cond_h
            gated = gate(pre)  # (N, p)
            s = torch.addmm(L.skip[1], gated, L.skip[0])
            skip = s if skip is None else skip + s
            new = torch.addmm(L.out[1], gated, L.out[0])
            h = row[:, j + L.r] + new if L.residual else new  # the layer's input at (i, j) is its residual
            if k + 1 < len(self.layers):
                nxt = self.layers[k + 1]
                self.h_row[k + 1][:, j + nxt.r] = h
        (w1, b1), (w2, b2) = self.head
        hidden = torch.addmm(b1, F.relu(skip), w1).relu_()
        out = torch.addmm(b2, hidden, w2)  # (N, P), grouped by mask group
        return out[:, g * self.per_group:(g + 1) * self.per_group]

    def write(self, i: int, j: int, ch: int, value: torch.Tensor) -> None:
        v = scale_input(value, self.levels)
        self.image[:, ch, i, j] = v
        self.h_row[0][:, j + self.r0, ch] = v
        self.v_cache[0][:, ch, i + self.r0, j + self.r0] = v
