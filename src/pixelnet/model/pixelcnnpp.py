"""PixelCNN++ (Salimans et al. 2017; openai/pixel-cnn `pixel_cnn_pp/model.py`), any image size (docs/architectures.md).

Two streams of shifted convs replace masks: u sees the rows above, ul the rows above and the current row left of the
pixel.  Neither sees the current pixel, so the head gives the whole pixel's distribution (a softmax over RGB adds the
pixel's earlier channels through a type-A masked 1x1 conv).  Gated ResNet layers run in blocks, one a resolution level
up the network (each level after the first entered by a stride-2 conv: H x W has ceil(H / 2) x ceil(W / 2) below it)
and one a level down it (entered by a stride-2 transposed conv, cropped to the level's size), each layer down reading
the matching layer up as a short-cut.  `resolution_levels` is the one description of the order blocks run: forward
and the incremental form (sampling/pixelcnnpp.py) both walk it.  The input gets a channel of ones (openai's), so the
zero padding differs from a black pixel.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from pixelnet.model.config import ModelConfig
from pixelnet.model.layers import Conv, MaskedConv2d, in_float32, scale_input, shift_down, shift_right


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    """[elu(x), elu(-x)] over channels: twice the channels, no information lost."""
    return F.elu(torch.cat([x, -x], dim=1))


ATTENTION_HEADS = 4
RESIDUAL_OUTPUTS = ("conv_out.conv", "attention.out")  # the convs that end a residual branch: data_init starts them small
ACTIVATIONS: dict[str, tuple[Conv, int]] = {"concat_elu": (concat_elu, 2), "elu": (F.elu, 1)}  # fn, channels out a in


def normed(module: nn.Module, weight_norm: bool) -> nn.Module:
    """Weight normalization (model.norm weight), which every conv but the softmax head's masked ones gets."""
    if not weight_norm:
        return module
    dim = 1 if isinstance(module, nn.ConvTranspose2d) else 0  # per output feature
    return nn.utils.parametrizations.weight_norm(module, dim=dim)


def _standardize(conv: nn.Module, inputs, y: torch.Tensor, *, scale: float) -> torch.Tensor:
    """Forward hook of `data_init`: rescale the conv's gain and bias so that y's channels get mean 0, std `scale`."""
    mean, std = y.mean(dim=(0, 2, 3)), y.std(dim=(0, 2, 3)) + 1e-8
    k = scale / std
    gain = conv.parametrizations.weight.original0  # (Cout, 1, 1, 1), or (1, Cout, 1, 1) for a transposed conv
    gain.mul_(k.view_as(gain))
    conv.bias.sub_(mean).mul_(k)
    return (y - mean[:, None, None]) * k[:, None, None]


class ShiftedConv2d(nn.Module):
    """A (kh, kw) conv whose output at (i, j) reads rows i - kh + 1 .. i of its input and columns
    j - (kw - 1) / 2 .. j + (kw - 1) / 2 ("down", kw odd) or j - kw + 1 .. j ("down_right").

    With stride 2 the output at (i, j) starts reading at input (2i, 2j) likewise: ceil(H / 2) rows out.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int], *, shift: str,
                 stride: int = 1, weight_norm: bool = True) -> None:
        super().__init__()
        kh, kw = kernel
        self.pad = ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0) if shift == "down" else (kw - 1, 0, kh - 1, 0)
        self.conv = normed(nn.Conv2d(in_channels, out_channels, kernel, stride=stride), weight_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))


class ShiftedDeconv2d(nn.Module):
    """The stride-2 transposed conv up a level: input (i, j) writes outputs (2i .. 2i + 1) x (2j + offsets),
    cropped to `size` on the bottom and right (and by one column on the left for "down", openai's crop)."""

    def __init__(self, channels: int, *, shift: str, weight_norm: bool = True) -> None:
        super().__init__()
        self.left = 1 if shift == "down" else 0
        kernel = (2, 3) if shift == "down" else (2, 2)
        self.conv = normed(nn.ConvTranspose2d(channels, channels, kernel, stride=2), weight_norm)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.crop(self.conv(x), size)

    def crop(self, y: torch.Tensor, size: tuple[int, int], origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """The part of the conv's raw output y inside the level of `size`, y's first row and column being output
        (origin) before the crop: (2r, 0) for input row r alone, (2r, 2j) for input position (r, j)."""
        (h, w), (r, c) = size, origin
        return y[:, :, :h - r, self.left:self.left + w - c]


class GatedResnet(nn.Module):
    """x + A * sigmoid(B), (A, B) = conv_out(dropout(elu2(conv_in(elu2(x)) [+ nin_skip(elu2(a))]))) [+ class embedding].

    elu2 is the activation: the concatenated ELU [elu(x), elu(-x)] (the paper's) or elu; dropout is elementwise (the
    paper's; pclucas14's port uses Dropout2d).  a is `shortcuts` (0, 1 or 2) feature maps of short-cut input.
    """

    def __init__(self, channels: int, *, shift: str, shortcuts: int, dropout: float, n_classes: int,
                 weight_norm: bool, activation: str = "concat_elu") -> None:
        super().__init__()
        kernel = (2, 3) if shift == "down" else (2, 2)
        self.elu, widen = ACTIVATIONS[activation]
        self.conv_in = ShiftedConv2d(widen * channels, channels, kernel, shift=shift, weight_norm=weight_norm)
        self.nin_skip = (normed(nn.Conv2d(widen * shortcuts * channels, channels, 1), weight_norm)
                         if shortcuts else None)
        self.dropout = nn.Dropout(dropout)
        self.conv_out = ShiftedConv2d(widen * channels, 2 * channels, kernel, shift=shift, weight_norm=weight_norm)
        self.embed = nn.Embedding(n_classes, 2 * channels) if n_classes else None

    def forward(self, x: torch.Tensor, a: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        cond = None if self.embed is None else self.embed(labels)[:, :, None, None]
        return self.step(x, a, cond, conv_in=self.conv_in, conv_out=self.conv_out, nin=self.nin_skip,
                         dropout=self.dropout, elu=self.elu)

    def step(self, x: torch.Tensor, a: torch.Tensor | None, cond: torch.Tensor | None, *, conv_in: Conv,
             conv_out: Conv, nin: Conv | None, dropout: Conv | None = None, elu: Conv = concat_elu) -> torch.Tensor:
        """The layer's math with its convs given as functions: the forward pass passes its modules, the
        incremental sampler (sampling/pixelcnnpp.py) functions that compute one row or position from its caches.

        cond is the class embedding, shaped to add to the convs' output; dropout None is eval mode's identity.
        """
        c = conv_in(elu(x))
        if a is not None:
            c = c + nin(elu(a))
        c = elu(c)
        c = conv_out(dropout(c) if dropout is not None else c)
        if cond is not None:
            c = c + (cond if cond.dtype == c.dtype else cond.to(c.dtype))  # under bf16 autocast the stream stays bf16
        gate, value_gate = c.chunk(2, dim=1)
        return x + gate * torch.sigmoid(value_gate)


class CausalAttention(nn.Module):
    """Causal self-attention over the positions of a (N, F, H, W) map in raster order, each position attending
    to itself and every one before it (PixelSNAIL's, here at the lowest resolution level of the ul stream).

    Causal because a ul map at level k and position (r, c) depends only on full-resolution pixels before
    (2^k r, 2^k c): so does every position before it.  Learned position embeddings tell the keys and queries
    where each position is; the output's 1x1 conv starts small (0.1 under the data-dependent init), as the
    gated layers' residual branches do.
    """

    def __init__(self, channels: int, size: tuple[int, int], *, heads: int, weight_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = normed(nn.Conv2d(channels, 3 * channels, 1), weight_norm)
        self.position = nn.Parameter(torch.zeros(channels, *size))
        self.out = normed(nn.Conv2d(channels, channels, 1), weight_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, f, h, w = x.shape
        q, k, v = self._qkv(x).unflatten(1, (3, self.heads, f // self.heads)).flatten(4).unbind(1)  # (N, h, d, HW)
        y = F.scaled_dot_product_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3), is_causal=True)
        return x + self.out(y.transpose(2, 3).reshape(n, f, h, w))

    def at(self, x: torch.Tensor, r: int, c: int) -> torch.Tensor:
        """The output (N, F) at position (r, c) of x (N, F, H, W), whose positions up to (r, c) are final."""
        n, f, h, w = x.shape
        p = r * w + c
        q, k, v = self._qkv(x).flatten(2)[:, :, :p + 1].unflatten(1, (3, self.heads, f // self.heads)).unbind(1)
        y = F.scaled_dot_product_attention(q[..., -1:].transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))
        out = self.out(y.transpose(2, 3).reshape(n, f, 1, 1))[:, :, 0, 0]
        return x[:, :, r, c] + out

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        return self.qkv(F.elu(x + self.position.to(x.dtype)))


class Stream(NamedTuple):
    """One stream's modules at one resolution level."""

    up: list[GatedResnet]  # the layers of the pass up
    down: list[GatedResnet]  # the layers of the pass down
    downsize: ShiftedConv2d | None  # the stride-2 conv from this level to the next coarser one, None at the coarsest
    upsize: ShiftedDeconv2d | None  # the transposed conv from the next coarser level to this one, None at the coarsest


class Level(NamedTuple):
    """One resolution level of `PixelCNNPP`: its size, the short-cut maps made and read there, each stream's modules.

    The maps of the pass up are numbered in the order it makes them: at each level the level's input (the streams'
    first maps at level 0, the stride-2 convs' output after), then each layer's output.  The pass down starts from
    the last one, and each of its layers reads the map made at the mirror position up (U-Net: last made, first read).
    """

    size: tuple[int, int]
    makes: tuple[int, ...]  # the maps the pass up makes here, the level's input first
    reads: tuple[int, ...]  # the map each layer of the pass down reads
    u: Stream
    ul: Stream


class PixelCNNPP(nn.Module):
    """PixelCNN++: u and ul streams, `resolutions` levels up and down with U-Net short-cuts."""

    # Activation layout.  NCHW: channels-last trained 0.86x as fast in fp32 and within noise of it in bf16 on a
    # 2-core AVX-512 CPU (benchmarks/bench_training.py --model params, row cl; docs/training.md).
    memory_format: torch.memory_format = torch.contiguous_format

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.distribution = config.distribution()
        c, f, n, levels = config.image_channels, config.channels, config.resnet_layers, config.resolutions
        wn = config.norm == "weight"
        n_classes = config.n_classes if config.conditional else 0

        def resnet(shift: str, shortcuts: int) -> GatedResnet:
            return GatedResnet(f, shift=shift, shortcuts=shortcuts, dropout=config.dropout, n_classes=n_classes,
                               weight_norm=wn, activation=config.activation)

        self.u_init = ShiftedConv2d(c + 1, f, (2, 3), shift="down", weight_norm=wn)
        self.ul_init_above = ShiftedConv2d(c + 1, f, (1, 3), shift="down", weight_norm=wn)
        self.ul_init_left = ShiftedConv2d(c + 1, f, (2, 1), shift="down_right", weight_norm=wn)
        # up[k][l] = (u layer, ul layer) of level k; down[d] for level levels - 1 - d, coarsest first.
        self.up = nn.ModuleList(nn.ModuleList(nn.ModuleList([resnet("down", 0), resnet("down_right", 1)])
                                              for _ in range(n)) for _ in range(levels))
        self.down = nn.ModuleList(nn.ModuleList(nn.ModuleList([resnet("down", 1), resnet("down_right", 2)])
                                                for _ in range(n + (d > 0))) for d in range(levels))
        self.downsize = nn.ModuleList(nn.ModuleList([
            ShiftedConv2d(f, f, (2, 3), shift="down", stride=2, weight_norm=wn),
            ShiftedConv2d(f, f, (2, 2), shift="down_right", stride=2, weight_norm=wn)]) for _ in range(levels - 1))
        self.upsize = nn.ModuleList(nn.ModuleList([
            ShiftedDeconv2d(f, shift="down", weight_norm=wn),
            ShiftedDeconv2d(f, shift="down_right", weight_norm=wn)]) for _ in range(levels - 1))
        # model.attention: causal self-attention over the ul stream at the lowest level, where the pass down starts.
        self.attention = CausalAttention(f, self.sizes()[-1], heads=ATTENTION_HEADS if f % ATTENTION_HEADS == 0
                                         else 1, weight_norm=wn) if config.attention else None
        out, g = self.distribution.out_channels, self.distribution.groups
        if config.head == "logistic_mixture":  # openai's: one 1x1 conv of elu(ul)
            self.head_hidden = self.head_pixel = None
            self.head_out = normed(nn.Conv2d(f, out, 1), wn)
        else:  # a hidden layer, which a softmax over RGB needs to bring in the pixel's earlier channels
            self.head_hidden = normed(nn.Conv2d(f, f, 1), wn)
            self.head_pixel = MaskedConv2d(c, f, kernel_size=1, mask_type="A", groups=g) if g > 1 else None
            self.head_out = MaskedConv2d(f, out, kernel_size=1, mask_type="B", groups=g)

    def sizes(self) -> list[tuple[int, int]]:
        """The (height, width) of every resolution level, finest first."""
        h, w = self.config.height, self.config.width
        out = [(h, w)]
        for _ in range(self.config.resolutions - 1):
            h, w = (h + 1) // 2, (w + 1) // 2
            out.append((h, w))
        return out

    def resolution_levels(self) -> list[Level]:
        """The network by resolution level, finest first: the order of the pass up, and reversed of the pass down."""
        last, made, levels = len(self.up) - 1, 0, []

        def stream(s: int, k: int) -> Stream:  # every pair of modules is (u, ul), so s = 0 picks u and 1 ul
            return Stream([pair[s] for pair in self.up[k]], [pair[s] for pair in self.down[last - k]],
                          self.downsize[k][s] if k < last else None, self.upsize[last - 1 - k][s] if k < last else None)

        for k, size in enumerate(self.sizes()):
            makes = tuple(range(made, made + 1 + len(self.up[k])))
            made += len(makes)
            reads = makes[-2::-1] if k == last else makes[::-1]  # the pass down starts from the coarsest level's last
            levels.append(Level(size, makes, reads, stream(0, k), stream(1, k)))
        return levels

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) integer levels, labels (B,) when conditional -> the distribution's parameters."""
        xs = scale_input(x, self.config.levels)
        x_pad = torch.cat([xs, torch.ones_like(xs[:, :1])], dim=1).contiguous(memory_format=self.memory_format)
        u = shift_down(self.u_init(x_pad))
        ul = shift_down(self.ul_init_above(x_pad)) + shift_right(self.ul_init_left(x_pad))
        levels = self.resolution_levels()
        us, uls = {}, {}  # the maps of the pass up, numbered as in Level
        for level in levels:
            us[level.makes[0]], uls[level.makes[0]] = u, ul
            for u_layer, ul_layer, e in zip(level.u.up, level.ul.up, level.makes[1:]):
                u = u_layer(u, None, labels)
                ul = ul_layer(ul, u, labels)
                us[e], uls[e] = u, ul
            if level.u.downsize is not None:
                u, ul = level.u.downsize(u), level.ul.downsize(ul)
        u, ul = us.pop(levels[-1].makes[-1]), uls.pop(levels[-1].makes[-1])
        if self.attention is not None:
            ul = self.attention(ul)
        for level in reversed(levels):
            if level.u.upsize is not None:
                u, ul = level.u.upsize(u, level.size), level.ul.upsize(ul, level.size)
            for u_layer, ul_layer, e in zip(level.u.down, level.ul.down, level.reads):
                u = u_layer(u, us.pop(e), labels)
                ul = ul_layer(ul, torch.cat([u, uls.pop(e)], dim=1), labels)
        return self.distribution.arrange(in_float32(self.head, F.elu(ul), xs))

    @torch.no_grad()
    def data_init(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """openai's data-dependent init: one forward pass of x that sets each weight-normalized conv's gain and
        bias, in order, so that its outputs on x have mean 0 and standard deviation 1 (0.1 for the last conv
        of each residual branch, which then starts small)."""
        hooks = [m.register_forward_hook(functools.partial(_standardize, scale=0.1 if name.endswith(RESIDUAL_OUTPUTS)
                                                           else 1.0))
                 for name, m in self.named_modules() if parametrize.is_parametrized(m, "weight")
                 and isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        try:
            self(x, labels)
        finally:
            for hook in hooks:
                hook.remove()

    def head(self, features: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """The head's output from elu(ul) and the scaled image (whose current pixel only a softmax over RGB reads)."""
        h = None if self.head_hidden is None else self.head_hidden(features)
        return self.head_step(features, h, xs, pixel=self.head_pixel, out=self.head_out)

    @staticmethod
    def head_step(features: torch.Tensor, h: torch.Tensor | None, xs: torch.Tensor, *, pixel: Conv | None,
                  out: Conv) -> torch.Tensor:
        """The head's math after its hidden layer (h = hidden(features), None where the head has none), its convs
        given as functions: the sampler computes h once a pixel, the rest once a colour group."""
        if h is None:
            return out(features)
        if pixel is not None:
            h = h + pixel(xs)
        return out(F.elu(h))
