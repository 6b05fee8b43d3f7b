"""Exact incremental evaluation of `PixelCNNPP`, for the fast sampler (after Ramachandran, Paine et al. 2017,
PrajitR/fast-pixel-cnn `fast_pixel_cnn_pp/`).

Every conv keeps its input in a padded buffer, written as the values it
reads become final, and is evaluated only where a new output is due:

- the u stream at row r of a level depends only on rows above it, so it is
  computed a whole row at a time: when full-resolution row i begins, every
  level k with i divisible by 2^k computes its row i / 2^k, up the network
  (finest level first: a stride-2 conv's row needs the two rows above it of
  the level below) and then down it (coarsest first: a transposed conv's
  output row needs its input row of the level below);
- the ul stream at (r, c) depends on the rows above and the row left of c,
  so it is computed a position at a time: at full-resolution pixel (i, j),
  before it is drawn, every level k with i and j divisible by 2^k computes
  its position (i / 2^k, j / 2^k), up then down as above.  A level at 1/s
  resolution thus updates every s-th row and column;
- a transposed conv computes its outputs once, when its input is computed,
  into a buffer that the level above reads at later rows and positions
  (2 rows of the u stream, 2 x 2 positions of the ul stream).

The head then gives the pixel's outputs.  A logistic mixture has one group,
asked for once per pixel.  A softmax over RGB asks for group g after
channels < g are written: the streams are computed at g = 0 and each group
reruns only the head's 1x1 layers with the pixel's channels written so far.

Values are the full forward pass's up to float rounding: the same weights
(weight normalization evaluated once), the same zero padding and shifts.
The structure is the model's own: each gated ResNet layer runs its `GatedResnet.step`
with convs that compute a row or a position from buffers, transposed convs crop with
their module's `crop`, and the short-cut maps follow `model.shortcuts`, as forward does.
"""

from __future__ import annotations

import functools

import torch
from torch.nn import functional as F

from pixelnet.model.layers import scale_input
from pixelnet.model.pixelcnnpp import GatedResnet, PixelCNNPP, ShiftedConv2d, ShiftedDeconv2d, concat_elu


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
        self.weight, self.bias = conv.weight.detach(), conv.bias.detach()
        c_out, c_in, self.kh, self.kw = self.weight.shape
        self.stride = conv.stride[0]
        self.left, right, self.top, _ = module.pad
        self.matrix = self.weight.permute(2, 3, 1, 0).reshape(-1, c_out).contiguous()  # rows (kh, kw, Cin)
        h, w = size
        self.buf = self.weight.new_zeros(n, h + self.top, w + self.left + right, c_in)
        self.at: tuple[int, int | None] = (0, None)  # where `here` puts and computes

    def put(self, r: int, j: int | None, value: torch.Tensor) -> None:
        """Input row r (value (N, Cin, W)) or input position (r, j) (value (N, Cin)) is final."""
        if j is None:
            self.buf[:, r + self.top, self.left:self.left + value.shape[-1]] = value.transpose(1, 2)
        else:
            self.buf[:, r + self.top, j + self.left] = value

    def here(self, value: torch.Tensor) -> torch.Tensor:
        """Put the input at `self.at` (row (r, None) or position (r, j)) and return the output there."""
        r, j = self.at
        self.put(r, j, value)
        return self(r, j)

    def __call__(self, r: int, j: int | None) -> torch.Tensor:
        s = self.stride
        rows = self.buf[:, s * r:s * r + self.kh]
        if j is None:
            return F.conv2d(rows.permute(0, 3, 1, 2), self.weight, self.bias, stride=s)[:, :, 0]
        window = rows[:, :, s * j:s * j + self.kw].reshape(rows.shape[0], -1)
        return torch.addmm(self.bias, window, self.matrix)


def _nin(weight: torch.Tensor, bias: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv (weight (Cout, Cin, 1, 1)) of a row (N, Cin, W) or a position (N, Cin)."""
    if v.dim() == 3:
        return F.conv1d(v, weight[:, :, :, 0], bias)
    return torch.addmm(bias, v, weight[:, :, 0, 0].t())


class _Resnet:
    """A GatedResnet at one level, run through its own `step`; its class embedding (N, 2F), if any."""

    def __init__(self, layer: GatedResnet, n: int, size: tuple[int, int], labels: torch.Tensor | None) -> None:
        self.layer = layer
        self.conv_in, self.conv_out = _Conv(layer.conv_in, n, size), _Conv(layer.conv_out, n, size)
        skip = layer.nin_skip
        self.nin = None if skip is None else functools.partial(_nin, skip.weight.detach(), skip.bias.detach())
        self.cond = layer.embed(labels).detach() if layer.embed is not None else None

    def __call__(self, r: int, j: int | None, x: torch.Tensor, a: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's output at row r (x (N, F, W)) or at (r, j) (x (N, F)); inputs there are final."""
        cond = self.cond if self.cond is None or j is not None else self.cond[:, :, None]
        self.conv_in.at = self.conv_out.at = (r, j)
        return self.layer.step(x, a, cond, conv_in=self.conv_in.here, conv_out=self.conv_out.here, nin=self.nin,
                               elu=_concat_elu if self.layer.elu is concat_elu else self.layer.elu)


class _Deconv:
    """A ShiftedDeconv2d writing its outputs for one input row or position into the level above's buffer."""

    def __init__(self, module: ShiftedDeconv2d, n: int, size: tuple[int, int]) -> None:
        self.module = module
        conv = module.conv
        self.weight, self.bias = conv.weight.detach(), conv.bias.detach()  # (Cin, Cout, 2, kw)
        self.out = self.weight.new_zeros(n, self.weight.shape[1], *size)  # the level above's input, (N, F, H, W)

    def __call__(self, r: int, j: int | None, v: torch.Tensor) -> None:
        size = self.out.shape[2:]
        if j is None:  # input row r -> output rows 2r, 2r + 1, cropped by the module
            rows = F.conv_transpose2d(v[:, :, None], self.weight, self.bias, stride=2)
            self.out[:, :, 2 * r:2 * r + 2] = self.module.crop(rows, size, (2 * r, 0))
        else:  # input (r, j) -> the 2 x 2 outputs from (2r, 2j) (the ul stream's 2 x 2 kernel)
            block = torch.einsum("nc,cokl->nokl", v, self.weight) + self.bias[:, None, None]
            self.out[:, :, 2 * r:2 * r + 2, 2 * j:2 * j + 2] = self.module.crop(block, size, (2 * r, 2 * j))


class PixelCNNPPIncremental:
    """Per-conv buffers and a one-position step for a `PixelCNNPP` in eval mode, batch size n."""

    def __init__(self, model: PixelCNNPP, n: int, labels: torch.Tensor | None = None) -> None:
        cfg = model.config
        self.n, self.c, self.levels, self.width = n, cfg.image_channels, cfg.levels, cfg.width
        self.mixture = cfg.head == "logistic_mixture"
        weight = model.u_init.conv.weight
        labels = labels.to(weight.device) if labels is not None else None
        sizes = model.sizes()
        self.depth = len(sizes)
        f = cfg.channels

        self.u_init = _Conv(model.u_init, n, sizes[0])
        self.ul_above = _Conv(model.ul_init_above, n, sizes[0])
        self.ul_left = _Conv(model.ul_init_left, n, sizes[0])
        self.up = [[(_Resnet(u, n, sizes[k], labels), _Resnet(ul, n, sizes[k], labels)) for u, ul in block]
                   for k, block in enumerate(model.up)]
        self.down = [[(_Resnet(u, n, sizes[self.depth - 1 - d], labels),
                       _Resnet(ul, n, sizes[self.depth - 1 - d], labels)) for u, ul in block]
                     for d, block in enumerate(model.down)]
        self.downsize = [(_Conv(u, n, sizes[k]), _Conv(ul, n, sizes[k])) for k, (u, ul) in enumerate(model.downsize)]
        # upsize[d] enters down block d + 1: its outputs are at level depth - 2 - d.
        self.upsize = [(_Deconv(u, n, sizes[self.depth - 2 - d]), _Deconv(ul, n, sizes[self.depth - 2 - d]))
                       for d, (u, ul) in enumerate(model.upsize)]

        self.attention = model.attention
        # The pass up's u and ul maps (model.shortcuts), at their levels' sizes.
        self.shortcuts = model.shortcuts
        self.us = [weight.new_zeros(n, f, *sizes[k]) for k in self.shortcuts.level]
        self.uls = [weight.new_zeros(n, f, *sizes[k]) for k in self.shortcuts.level]
        # The u stream down the network, after each layer, per level: the ul layer beside it reads it.
        self.u_down = [[weight.new_zeros(n, f, *sizes[self.depth - 1 - d]) for _ in block] for d, block in
                       enumerate(model.down)]
        self.ul_above_row = weight.new_zeros(n, f, cfg.width)

        if self.mixture:
            self.head_out = (model.head_out.weight.detach(), model.head_out.bias.detach())
        else:
            self.head_hidden = (model.head_hidden.weight.detach(), model.head_hidden.bias.detach())
            self.head_pixel = (None if model.head_pixel is None else
                               (model.head_pixel.masked_weight().detach(), model.head_pixel.bias.detach()))
            self.head_out = (model.head_out.masked_weight().detach(), model.head_out.bias.detach())
        self.features = weight.new_zeros(n, f)  # the head's hidden layer from the streams at the current pixel
        self.pixel = weight.new_zeros(n, self.c)  # the current pixel's scaled channels written so far
        self.next_row = 0

    def _due(self, i: int, j: int | None = None) -> list[int]:
        """The levels with a row (j None) or a position at full-resolution row i (and column j)."""
        return [k for k in range(self.depth) if i % (1 << k) == 0 and (j is None or j % (1 << k) == 0)]

    def _rows(self, i: int) -> None:
        """Full-resolution row i begins (rows < i final): the u stream's due rows, up and then down."""
        due = self._due(i)
        for k in due:
            r = i >> k
            first = self.shortcuts.up[k][0]
            if k == 0:
                u = self.u_init(r - 1, None) if r > 0 else self.us[0][:, :, 0]  # shifted down: zeros in row 0
            else:
                u = self.downsize[k - 1][0](r, None)
            self.us[first][:, :, r] = u
            for (layer, _), e in zip(self.up[k], self.shortcuts.up[k][1:]):
                u = layer(r, None, u)
                self.us[e][:, :, r] = u
            if k + 1 < self.depth:
                self.downsize[k][0].put(r, None, u)
        for k in reversed(due):
            r, d = i >> k, self.depth - 1 - k
            u = self.us[self.shortcuts.start][:, :, r] if d == 0 else self.upsize[d - 1][0].out[:, :, r]
            for l, ((layer, _), e) in enumerate(zip(self.down[d], self.shortcuts.down[d])):
                u = layer(r, None, u, self.us[e][:, :, r])
                self.u_down[d][l][:, :, r] = u
            if k > 0:
                self.upsize[d][0](r, None, u)
        above = self.ul_above(i - 1, None) if i > 0 else None  # the (1, 3) conv of row i - 1, shifted down
        self.ul_above_row = above if above is not None else torch.zeros_like(self.ul_above_row)

    def _position(self, i: int, j: int) -> None:
        """Pixel (i, j) is next (everything before it written): the ul stream's due positions, and the head's
        features."""
        due = self._due(i, j)
        for k in due:
            r, c = i >> k, j >> k
            first = self.shortcuts.up[k][0]
            if k == 0:
                ul = self.ul_above_row[:, :, j]
                if j > 0:  # the (2, 1) conv of column j - 1, shifted right
                    ul = ul + self.ul_left(i, j - 1)
            else:
                ul = self.downsize[k - 1][1](r, c)
            self.uls[first][:, :, r, c] = ul
            for (_, layer), e in zip(self.up[k], self.shortcuts.up[k][1:]):
                ul = layer(r, c, ul, self.us[e][:, :, r, c])
                self.uls[e][:, :, r, c] = ul
            if k + 1 < self.depth:
                self.downsize[k][1].put(r, c, ul)
        for k in reversed(due):
            r, c, d = i >> k, j >> k, self.depth - 1 - k
            if d > 0:
                ul = self.upsize[d - 1][1].out[:, :, r, c]
            elif self.attention is not None:
                ul = self.attention.at(self.uls[self.shortcuts.start], r, c)
            else:
                ul = self.uls[self.shortcuts.start][:, :, r, c]
            for l, ((_, layer), e) in enumerate(zip(self.down[d], self.shortcuts.down[d])):
                ul = layer(r, c, ul, torch.cat([self.u_down[d][l][:, :, r, c], self.uls[e][:, :, r, c]], dim=1))
            if k > 0:
                self.upsize[d][1](r, c, ul)
        if self.mixture:
            self.features = F.elu(ul)
        else:
            self.features = _nin(*self.head_hidden, F.elu(ul))
        self.pixel.zero_()

    def _head(self) -> torch.Tensor:
        if self.mixture:
            return _nin(*self.head_out, self.features)
        hidden = self.features
        if self.head_pixel is not None:
            hidden = hidden + _nin(*self.head_pixel, self.pixel)
        return _nin(*self.head_out, F.elu(hidden))

    def prefill(self, x: torch.Tensor) -> None:
        """Take given top rows x (N, C, R, W) of levels, R >= 0: run the streams over them as if drawn."""
        xs = scale_input(x, self.levels)
        for i in range(x.shape[2]):
            self.begin_row(i)
            for j in range(self.width):
                self._position(i, j)
                self._put_pixel(i, j, xs[:, :, i, j])

    def begin_row(self, i: int) -> None:
        while self.next_row <= i:
            self._rows(self.next_row)
            self.next_row += 1

    def output(self, i: int, j: int, g: int) -> torch.Tensor:
        """The head's group-g outputs (N, P / groups) at (i, j): a pixel's mixture, or channel g's logits."""
        if g == 0:
            self._position(i, j)
        out = self._head()
        per_group = out.shape[1] // (1 if self.mixture else self.c)
        return out[:, g * per_group:(g + 1) * per_group]

    def write(self, i: int, j: int, ch: int, value: torch.Tensor) -> None:
        """Record the level (N,) chosen for sub-pixel (i, j, ch)."""
        self.pixel[:, ch] = scale_input(value, self.levels)
        if ch == self.c - 1:
            self._put_pixel(i, j, self.pixel)

    def _put_pixel(self, i: int, j: int, pixel: torch.Tensor) -> None:
        padded = torch.cat([pixel, torch.ones_like(pixel[:, :1])], dim=1)  # the input's channel of ones
        for conv in (self.u_init, self.ul_above, self.ul_left):
            conv.put(i, j, padded)
