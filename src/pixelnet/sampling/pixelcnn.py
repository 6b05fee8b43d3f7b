"""Exact one-position-at-a-time evaluation of `PixelCNN`, for the fast sampler.

Every layer of the PixelCNN is either position-wise (1x1 convs, ReLU,
BatchNorm in eval mode, residual adds) or a masked k x k conv whose mask
excludes later positions.  So the logits of sub-pixel (i, j, c) need, from
each k x k layer, only its input at rows i - p .. i (p = k // 2), and those
inputs at earlier positions never change once computed (Ramachandran et al.
2017).  `PixelCNNIncremental` keeps each k x k layer's input in a cache and
computes only position (i, j) through the network at each step:

- the masked taps in the p rows above are the same for the whole row, so
  `begin_row` computes them for every column of row i in one conv per layer;
- per step, each k x k layer adds the centre-row taps (columns j - p .. j,
  a view of its cache) with one matmul, and 1x1 layers are one matmul each.

Colour, softmax head: within a pixel R, G, B are drawn in turn, and the masks let feature
group g see image channels < g (first layer) or feature groups <= g (later
layers) at the centre.  Step g therefore computes only group g's features
of every layer; groups < g at (i, j) were final after step g - 1, and
groups > g hold stale values that the masks multiply by zero.  A colour
pixel costs what a grayscale one does.  A logistic mixture has one group
(model/distributions.py), computed once per pixel before its R is drawn.

BatchNorm (eval) is folded into the conv before it, in float64 (fold.py); the logits
then agree with the model's forward pass to float32 rounding.  A conditional
model's per-class biases are added to the input conv's row taps and to each
block's last bias, per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pixelnet.model.layers import MaskedConv2d, scale_input
from pixelnet.model.masks import channel_group
from pixelnet.model.pixelcnn import PixelCNN
from pixelnet.sampling.fold import fold_norm


@dataclass(frozen=True)
class PreparedConv:
    """A masked conv with the BatchNorm after it folded in, laid out for one-position use.

    Caches are channels-last and padded by p on the top, left and right:
    (N, H + p, W + 2 p, Cin), so original (i, j) sits at cache (i + p, j + p)
    and the centre-row window, columns j - p .. j, is cache[:, i + p, j:j + p + 1].
    """

    weight: torch.Tensor  # (Cout, Cin, k, k), masked and folded: for prefill and `above`
    bias: torch.Tensor  # (Cout,)
    centre: tuple[torch.Tensor, ...]  # per group: ((p + 1) * Cin, Cout_g), rows ordered (column, Cin)
    centre_bias: tuple[torch.Tensor, ...]  # per group: (Cout_g,)
    slices: tuple[slice, ...]  # per group: its output channels

    @property
    def p(self) -> int:
        return self.weight.shape[-1] // 2

    def above(self, cache: torch.Tensor, i: int) -> torch.Tensor:
        """Bias plus the taps in the p rows above row i, for every column, column first: (W, N, Cout)."""
        if self.p == 0:  # a 1x1 conv has no rows above
            return self.bias.expand(cache.shape[2], cache.shape[0], -1).contiguous()
        rows = cache[:, i:i + self.p].permute(0, 3, 1, 2)  # (N, Cin, p, W + 2p), original rows i-p .. i-1
        out = F.conv2d(rows, self.weight[:, :, :self.p], self.bias)  # (N, Cout, 1, W)
        return out[:, :, 0].permute(2, 0, 1).contiguous()  # (W, N, Cout)


def prepare(conv: MaskedConv2d, norm: nn.Module | None, *, groups: int, dtype: torch.dtype) -> PreparedConv:
    """Fold `norm` into `conv` and cut out the centre-row matrices, one per colour group of its outputs."""
    w, b = fold_norm(conv.masked_weight(), conv.bias, norm)
    c_out, c_in, k, _ = w.shape
    p = k // 2
    # Centre row, columns 0 .. p of the kernel: (Cout, Cin, p + 1) -> ((p + 1) * Cin, Cout), rows (column, Cin).
    centre = w[:, :, p, :p + 1].permute(2, 1, 0).reshape((p + 1) * c_in, c_out)
    owner = [channel_group(o, c_out, groups) for o in range(c_out)]
    slices = tuple(slice(owner.index(g), len(owner) - owner[::-1].index(g)) for g in range(groups))
    return PreparedConv(
        weight=w.to(dtype),
        bias=b.to(dtype),
        centre=tuple(centre[:, s].to(dtype).contiguous() for s in slices),
        centre_bias=tuple(b[s].to(dtype) for s in slices),
        slices=slices,
    )


class PixelCNNIncremental:
    """Per-layer caches and a one-position step for a `PixelCNN` in eval mode, batch size n.

    Per-step overhead is what limits small batches, so each step only
    indexes views made once (per run or per row) and writes matmul results
    straight into the caches and buffers (`out=`).
    """

    def __init__(self, model: PixelCNN, n: int, labels: torch.Tensor | None = None) -> None:
        cfg = model.config
        self.levels, self.groups = cfg.levels, model.distribution.groups
        self.n, self.height, self.width = n, cfg.height, cfg.width
        weight = model.input_conv.weight
        device, dtype = weight.device, weight.dtype

        def prep(conv: MaskedConv2d, norm: nn.Module | None = None) -> PreparedConv:
            return prepare(conv, norm, groups=self.groups, dtype=dtype)

        self.input_conv = prep(model.input_conv)
        self.blocks = [(prep(b.conv_in, b.norm_in), prep(b.conv_mid, b.norm_mid), prep(b.conv_out, b.norm_out))
                       for b in model.blocks]
        self.head = (prep(model.head.hidden), prep(model.head.out))
        # Per-class biases, (N, h) each, after the input conv and after each block (model.forward); 0 if unconditional.
        n_stages = len(self.blocks) + 1
        self.class_bias = [torch.zeros(1, cfg.channels, device=device, dtype=dtype)] * n_stages
        if model.embed is not None:
            self.class_bias = list(model.embed(labels.to(device)).to(dtype).chunk(n_stages, dim=1))

        def cache(conv: PreparedConv) -> torch.Tensor:
            c_in = conv.weight.shape[1]
            return torch.zeros(n, self.height + conv.p, self.width + 2 * conv.p, c_in, device=device, dtype=dtype)

        self.image_cache = cache(self.input_conv)  # scaled input levels
        self.caches = [cache(mid) for _, mid, _ in self.blocks]  # input of each block's k x k conv
        # Activations at the current pixel, all groups: the residual stream entering each block
        # and the head, each block's k x k output, the head's hidden layer.
        h = cfg.channels
        self.stream = [torch.zeros(n, h, device=device, dtype=dtype) for _ in range(n_stages)]
        self.mid_out = [torch.zeros(n, h // 2, device=device, dtype=dtype) for _ in self.blocks]
        self.hidden = torch.zeros(n, h, device=device, dtype=dtype)
        self.row: list[list[tuple[torch.Tensor, ...]]] = []  # per group, per k x k layer: views for row i (begin_row)
        self.plan = [self._plan(g) for g in range(self.groups)]

    def _plan(self, g: int) -> list[tuple]:
        """Group g's weights, biases and group-g output views: input conv, each block, head (unpacked in `output`)."""
        def out(buf: torch.Tensor, conv: PreparedConv) -> torch.Tensor:
            return buf[:, conv.slices[g]]

        plan = [(self.input_conv.centre[g], out(self.stream[0], self.input_conv))]
        for b, (first, mid, last) in enumerate(self.blocks):
            block_bias = last.centre_bias[g] + self.class_bias[b + 1][:, last.slices[g]]  # (N or 1, Cout_g)
            plan.append((self.stream[b], first.centre[g], first.centre_bias[g], mid.centre[g],
                         out(self.mid_out[b], mid), self.mid_out[b], out(self.stream[b], last), last.centre[g],
                         block_bias, out(self.stream[b + 1], last)))
        first, last = self.head
        plan.append((self.stream[-1], first.centre[g], first.centre_bias[g], out(self.hidden, first),
                     self.hidden, last.centre[g], last.centre_bias[g]))
        return plan

    def prefill(self, x: torch.Tensor) -> None:
        """Fill the caches from given top rows x (N, C, R, W) of levels, R >= 0, with full convs.

        Activations in rows < R depend only on rows < R (the masks), so the
        zero padding below row R - 1 changes none of them.
        """
        if x.shape[2] == 0:
            return
        xs = scale_input(x, self.levels)  # (N, C, R, W)
        self._put_rows(self.image_cache, self.input_conv.p, xs)
        stream = self._conv(self.input_conv, xs) + self.class_bias[0][:, :, None, None]
        for (first, mid, last), cache, cb in zip(self.blocks, self.caches, self.class_bias[1:]):
            a = self._conv(first, F.relu(stream)).relu_()
            self._put_rows(cache, mid.p, a)
            stream = stream + self._conv(last, self._conv(mid, a).relu_()) + cb[:, :, None, None]

    @staticmethod
    def _conv(conv: PreparedConv, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, conv.weight, conv.bias, padding=conv.p)

    @staticmethod
    def _put_rows(cache: torch.Tensor, p: int, x: torch.Tensor) -> None:
        # x (N, C, R, W) -> cache rows p .. p + R - 1, columns p .. p + W - 1, channels-last.
        cache[:, p:p + x.shape[2], p:p + x.shape[3]] = x.permute(0, 2, 3, 1)

    def _row_views(self, conv: PreparedConv, cache: torch.Tensor, i: int, above: torch.Tensor):
        """Views of row i indexed by column first, (W, N, ...), so that a step takes view[j]."""
        n, hc, wc, c_in = cache.shape
        p, w = conv.p, self.width
        # The centre-row window of column j is cache[:, i + p, j:j + p + 1]: (p + 1) * Cin contiguous floats.
        windows = cache.as_strided((w, n, (p + 1) * c_in), (c_in, hc * wc * c_in, 1),
                                   cache.storage_offset() + (i + p) * wc * c_in)
        slot = cache[:, i + p, p:p + w].transpose(0, 1)  # (W, N, Cin): where position (i, j) is written
        return [(above[:, :, s], windows, slot[:, :, s]) for s in conv.slices]

    def begin_row(self, i: int) -> None:
        """Rows < i are final: compute every k x k layer's taps from the rows above, for all of row i."""
        convs = [self.input_conv] + [mid for _, mid, _ in self.blocks]
        caches = [self.image_cache] + self.caches
        above = [conv.above(cache, i) for conv, cache in zip(convs, caches)]  # each (W, N, Cout)
        above[0] += self.class_bias[0]
        # self.row[g][l]: (above, windows, ...) of k x k layer l for group g.
        per_layer = [self._row_views(conv, cache, i, a) for conv, cache, a in zip(convs, caches, above)]
        self.row = [[views[g] for views in per_layer] for g in range(self.groups)]

    def output(self, i: int, j: int, g: int) -> torch.Tensor:
        """The head's group-g outputs (N, P / groups) at (i, j); needs begin_row(i) and every earlier write.

        Computes group g's features of every layer at (i, j).  `out=` views
        write into the buffers' group-g columns, or into the k x k layer's cache.
        """
        addmm, relu = torch.addmm, F.relu
        row, plan = self.row[g], self.plan[g]
        centre, stream_out = plan[0]
        above, windows, _ = row[0]
        addmm(above[j], windows[j], centre, out=stream_out)
        for (above, windows, slot), step in zip(row[1:], plan[1:-1]):
            stream, w1, b1, w2, mid_out, mid_all, stream_in, w3, b3, stream_next = step
            a = slot[j]  # this block's k x k input at (i, j), in its cache
            addmm(b1, relu(stream), w1, out=a).relu_()
            addmm(above[j], windows[j], w2, out=mid_out).relu_()
            addmm(stream_in, mid_all, w3, out=stream_next).add_(b3)
        stream, w1, b1, hidden_out, hidden, w2, b2 = plan[-1]
        addmm(b1, relu(stream), w1, out=hidden_out).relu_()
        return addmm(b2, hidden, w2)  # (N, P / groups): a softmax's channel-g logits, or a whole pixel's mixture

    def write(self, i: int, j: int, g: int, value: torch.Tensor) -> None:
        """Sub-pixel (i, j, g) is now `value` (N,) levels."""
        p = self.input_conv.p
        self.image_cache[:, i + p, j + p, g] = scale_input(value, self.levels)
