"""The incremental form of `PixelCNNPP` (after Ramachandran, Paine et al. 2017, fast_pixel_cnn_pp; docs/sampling.md).

Every conv keeps its input in a padded buffer, written as the values it reads become final, and computes only where a
new output is due.  The u stream reads only the rows above, so it runs a row at a time, the ul stream a position at a
time; both walk the model's `resolution_levels` as forward does (`_walk`): a level at 1/2^k resolution runs at the
full-resolution rows (and columns) divisible by 2^k, up the network finest first, then down it coarsest first, a
transposed conv writing its outputs into the finer level's buffer when its input is computed.  Gated ResNet layers
run their own `GatedResnet.step`, transposed convs crop with their module's `crop`, the head is `head_step`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from pixelnet.model.layers import Conv, MaskedConv2d, scale_input
from pixelnet.model.pixelcnnpp import GatedResnet, PixelCNNPP, ShiftedConv2d, ShiftedDeconv2d, Stream, concat_elu


def _concat_elu(x: torch.Tensor) -> torch.Tensor:
    """model.pixelcnnpp.concat_elu, as max(y, exp(min(y, 0)) - 1): equal to float rounding, and on a CPU some
    times faster than F.elu's expm1 at one position's size."""
    y = torch.cat([x, -x], dim=1)
    e = torch.exp(y.clamp(max=0)).sub_(1)
    return torch.maximum(e, y, out=e)


class _Conv:
    """A ShiftedConv2d over a padded channels-last (N, H + top, W + left + right, Cin) buffer of its input, a
    row or a position at a time (`j` None: all of output row r, (N, Cout, W_out); else output (r, j), (N, Cout)).

    Channels last, a position's window is kh runs of kw * Cin contiguous floats an image.
    """

    def __init__(self, module: ShiftedConv2d, n: int, size: tuple[int, int]) -> None:
        conv = module.conv
        self.weight, self.bias = conv.weight, conv.bias
        c_out, c_in, self.kh, self.kw = self.weight.shape
        self.stride = conv.stride[0]
        self.left, right, self.top, _ = module.pad
        self.matrix = self.weight.permute(2, 3, 1, 0).reshape(-1, c_out).contiguous()  # rows (kh, kw, Cin)
        h, w = size
        self.buf = self.weight.new_zeros(n, h + self.top, w + self.left + right, c_in)

    def put(self, r: int, j: int | None, value: torch.Tensor) -> None:
        """Input row r (value (N, Cin, W)) or input position (r, j) (value (N, Cin)) is final."""
        if j is None:
            self.buf[:, r + self.top, self.left:self.left + value.shape[-1]] = value.transpose(1, 2)
        else:
            self.buf[:, r + self.top, j + self.left] = value

    def here(self, r: int, j: int | None, value: torch.Tensor) -> torch.Tensor:
        """Put the input at row r (j None) or position (r, j) and return the output there."""
        self.put(r, j, value)
        return self(r, j)

    def __call__(self, r: int, j: int | None) -> torch.Tensor:
        s = self.stride
        rows = self.buf[:, s * r:s * r + self.kh]
        if j is None:
            return F.conv2d(rows.permute(0, 3, 1, 2), self.weight, self.bias, stride=s)[:, :, 0]
        window = rows[:, :, s * j:s * j + self.kw].reshape(rows.shape[0], -1)
        return torch.addmm(self.bias, window, self.matrix)


def _nin(conv: nn.Conv2d) -> Conv:
    """A 1x1 conv (its weight normalized or masked once) as a function of a row (N, Cin, W) or a position (N, Cin)."""
    weight, bias = (conv.masked_weight() if isinstance(conv, MaskedConv2d) else conv.weight), conv.bias

    def apply(v: torch.Tensor) -> torch.Tensor:
        if v.dim() == 3:
            return F.conv1d(v, weight[:, :, :, 0], bias)
        return torch.addmm(bias, v, weight[:, :, 0, 0].t())
    return apply


class _Resnet:
    """A GatedResnet at one level, run through its own `step`; its class embedding (N, 2F), if any."""

    def __init__(self, layer: GatedResnet, n: int, size: tuple[int, int], labels: torch.Tensor | None) -> None:
        self.layer = layer
        self.conv_in, self.conv_out = _Conv(layer.conv_in, n, size), _Conv(layer.conv_out, n, size)
        self.nin = None if layer.nin_skip is None else _nin(layer.nin_skip)
        self.cond = layer.embed(labels) if layer.embed is not None else None
        self.elu = _concat_elu if layer.elu is concat_elu else layer.elu

    def __call__(self, r: int, j: int | None, x: torch.Tensor, a: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's output at row r (x (N, F, W)) or at (r, j) (x (N, F)); inputs there are final."""
        cond = self.cond if self.cond is None or j is not None else self.cond[:, :, None]
        return self.layer.step(x, a, cond, conv_in=functools.partial(self.conv_in.here, r, j),
                               conv_out=functools.partial(self.conv_out.here, r, j), nin=self.nin, elu=self.elu)


class _Deconv:
    """A ShiftedDeconv2d writing its outputs for one input row or position into the finer level's buffer `out`."""

    def __init__(self, module: ShiftedDeconv2d, n: int, size: tuple[int, int]) -> None:
        self.module = module
        self.weight, self.bias = module.conv.weight, module.conv.bias  # (Cin, Cout, 2, kw)
        self.out = self.weight.new_zeros(n, self.weight.shape[1], *size)  # (N, F, H, W) of the finer level

    def __call__(self, r: int, j: int | None, v: torch.Tensor) -> None:
        size = self.out.shape[2:]
        if j is None:  # input row r -> output rows 2r, 2r + 1, cropped by the module
            rows = F.conv_transpose2d(v[:, :, None], self.weight, self.bias, stride=2)
            self.out[:, :, 2 * r:2 * r + 2] = self.module.crop(rows, size, (2 * r, 0))
        else:  # input (r, j) -> the 2 x 2 outputs from (2r, 2j) (the ul stream's 2 x 2 kernel)
            block = torch.einsum("nc,cokl->nokl", v, self.weight) + self.bias[:, None, None]
            self.out[:, :, 2 * r:2 * r + 2, 2 * j:2 * j + 2] = self.module.crop(block, size, (2 * r, 2 * j))


def _index(r: int, c: int | None) -> tuple:
    """The index of row r (c None: (N, F, W)) or position (r, c) ((N, F)) of a map (N, F, H, W)."""
    return (..., r, slice(None) if c is None else c)


class _Stream(NamedTuple):
    """One stream's parts at one level (model.pixelcnnpp.Stream), with buffers of their inputs."""

    up: list[_Resnet]
    down: list[_Resnet]
    downsize: _Conv | None
    upsize: _Deconv | None

    @classmethod
    def of(cls, stream: Stream, n: int, size: tuple[int, int], labels: torch.Tensor | None) -> _Stream:
        return cls([_Resnet(layer, n, size, labels) for layer in stream.up],
                   [_Resnet(layer, n, size, labels) for layer in stream.down],
                   None if stream.downsize is None else _Conv(stream.downsize, n, size),
                   None if stream.upsize is None else _Deconv(stream.upsize, n, size))


class PixelCNNPPIncremental:
    """Per-conv buffers and a one-position step for a `PixelCNNPP` in eval mode, batch size n."""

    def __init__(self, model: PixelCNNPP, n: int, labels: torch.Tensor | None = None) -> None:
        cfg = model.config
        self.model, self.levels, self.width = model, cfg.levels, cfg.width
        weight = model.u_init.conv.weight
        labels = labels.to(weight.device) if labels is not None else None
        self.resolution = model.resolution_levels()
        first = self.resolution[0].size
        self.u_init, self.ul_above = _Conv(model.u_init, n, first), _Conv(model.ul_init_above, n, first)
        self.ul_left = _Conv(model.ul_init_left, n, first)
        # Per stream (0: u, 1: ul): its parts at each level, and the maps of the pass up (numbered as in Level).
        self.streams = [[_Stream.of(level.ul if s else level.u, n, level.size, labels) for level in self.resolution]
                        for s in (0, 1)]
        zeros = functools.partial(weight.new_zeros, n, cfg.channels)
        self.maps = [{e: zeros(*level.size) for level in self.resolution for e in level.makes} for _ in (0, 1)]
        self.u_down = [[zeros(*level.size) for _ in level.reads] for level in self.resolution]  # u after each layer
        self.ul_above_row = zeros(cfg.width)  # the ul stream's (1, 3) conv of the row above
        self.hidden, pixel = (None if m is None else _nin(m) for m in (model.head_hidden, model.head_pixel))
        self.head = functools.partial(model.head_step, pixel=pixel, out=_nin(model.head_out))
        self.features: torch.Tensor | None = None  # elu(ul) at the current pixel
        self.hidden_out: torch.Tensor | None = None  # the head's hidden layer of it (None: the head has none)
        self.pixel = weight.new_zeros(n, cfg.image_channels)  # the current pixel's scaled channels written so far
        self.next_row = 0

    def _walk(self, s: int, i: int, j: int | None = None) -> torch.Tensor:
        """Stream s at full-resolution row i, whole rows (s = 0, u; j None), or at pixel (i, j) (s = 1, ul): every
        level due there, up the network and then down it, in forward's order.  Returns its output at level 0."""
        streams, maps, u_maps = self.streams[s], self.maps[s], self.maps[0]
        due = []  # (k, r, c): the levels with a row r (c None) or a position (r, c) at full-resolution (i, j)
        for k in range(len(streams)):
            if i % (1 << k) or (j is not None and j % (1 << k)):
                break
            due.append((k, i >> k, None if j is None else j >> k))
        for k, r, c in due:
            level, parts, at = self.resolution[k], streams[k], _index(r, c)
            x = self._first(i, j) if k == 0 else streams[k - 1].downsize(r, c)
            maps[level.makes[0]][at] = x
            for layer, e in zip(parts.up, level.makes[1:]):
                x = layer(r, c, x, u_maps[e][at] if s else None)
                maps[e][at] = x
            if parts.downsize is not None:
                parts.downsize.put(r, c, x)
        for k, r, c in reversed(due):
            level, parts, at = self.resolution[k], streams[k], _index(r, c)
            if parts.upsize is not None:
                x = parts.upsize.out[at]
            else:  # the coarsest level: the pass down starts from the last map of the pass up
                start, attention = maps[level.makes[-1]], self.model.attention
                x = attention.at(start, r, c) if s and attention is not None else start[at]
            for layer, e, u_down in zip(parts.down, level.reads, self.u_down[k]):
                x = layer(r, c, x, torch.cat([u_down[at], maps[e][at]], dim=1) if s else u_maps[e][at])
                if not s:
                    u_down[at] = x
            if k > 0:
                streams[k - 1].upsize(r, c, x)
        return x

    def _first(self, i: int, j: int | None) -> torch.Tensor:
        """Level 0's input: the u stream's row i (j None) or the ul stream's (i, j), from the first convs shifted."""
        if j is None:
            return self.u_init(i - 1, None) if i > 0 else torch.zeros_like(self.ul_above_row)
        ul = self.ul_above_row[:, :, j]
        return ul + self.ul_left(i, j - 1) if j > 0 else ul  # the (2, 1) conv of column j - 1, shifted right

    def prefill(self, x: torch.Tensor) -> None:
        """Take given top rows x (N, C, R, W) of levels, R >= 0: run the streams over them as if drawn."""
        xs = scale_input(x, self.levels)
        for i in range(x.shape[2]):
            self.begin_row(i)
            for j in range(self.width):
                self._walk(1, i, j)
                self._put_pixel(i, j, xs[:, :, i, j])

    def begin_row(self, i: int) -> None:
        while self.next_row <= i:
            r = self.next_row
            self._walk(0, r)
            self.ul_above_row = self.ul_above(r - 1, None) if r > 0 else torch.zeros_like(self.ul_above_row)
            self.next_row += 1

    def output(self, i: int, j: int, g: int) -> torch.Tensor:
        """The head's group-g outputs (N, P / groups) at (i, j): a pixel's mixture, or channel g's logits."""
        if g == 0:
            self.features = F.elu(self._walk(1, i, j))
            self.hidden_out = None if self.hidden is None else self.hidden(self.features)
            self.pixel.zero_()
        out = self.head(self.features, self.hidden_out, self.pixel)
        per_group = out.shape[1] // self.model.distribution.groups
        return out[:, g * per_group:(g + 1) * per_group]

    def write(self, i: int, j: int, ch: int, value: torch.Tensor) -> None:
        """Record the level (N,) chosen for sub-pixel (i, j, ch)."""
        self.pixel[:, ch] = scale_input(value, self.levels)
        if ch == self.pixel.shape[1] - 1:
            self._put_pixel(i, j, self.pixel)

    def _put_pixel(self, i: int, j: int, pixel: torch.Tensor) -> None:
        padded = torch.cat([pixel, torch.ones_like(pixel[:, :1])], dim=1)  # the input's channel of ones
        for conv in (self.u_init, self.ul_above, self.ul_left):
            conv.put(i, j, padded)
