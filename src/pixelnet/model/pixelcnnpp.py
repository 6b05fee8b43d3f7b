"""PixelCNN++ (Salimans et al. 2017; openai/pixel-cnn `pixel_cnn_pp/model.py`), for any image size.

Two streams of shifted convolutions replace masks, so there is no blind spot:

- the u stream sees every pixel in the rows above.  Its (2, 3) "down-shifted"
  convs read rows i - 1 .. i and columns j - 1 .. j + 1 of the layer below;
  its first layer's output is shifted down a row, so u at row i sees rows < i;
- the ul stream sees the rows above and the current row left of the pixel.
  Its (2, 2) "down-right-shifted" convs read rows i - 1 .. i, columns
  j - 1 .. j; its first layer is a (1, 3) conv shifted down plus a (2, 1) conv
  shifted right, so ul at (i, j) sees rows < i and row i left of j.

Neither ever sees the current pixel, so the head gives the whole pixel's
distribution: the discretized logistic mixture (its RGB coefficients make G
depend on R, B on R and G), the paper's, or a softmax.  For a softmax over RGB
the head adds the current pixel's earlier channels through a masked 1x1 conv
(type A), so channel g's logits see channels < g, as with the masked models.

Blocks: `resnet_layers` gated ResNet layers a block.  Up the network, one
block per resolution level (`resolutions`, 3 in the paper: 32 -> 16 -> 8 for
32x32), each level after the first entered by a stride-2 conv; down it, one
block per level again (one more layer in each block after the first),
entered by a stride-2 transposed conv.  Every layer down the network takes
the matching layer up it as a short-cut input (U-Net: block 1 to 6, 2 to 5,
3 to 4 in the paper); `Shortcuts` numbers those maps, for this forward pass
and the incremental sampler alike.  A gated ResNet layer is

    c = conv(elu2(x)) [+ nin(elu2(a)), the short-cut];  c = dropout(elu2(c))
    x + A * sigmoid(B),  (A, B) = conv(c) [+ class embedding]

with elu2 the concatenated ELU [elu(x), elu(-x)], and dropout elementwise
(torch Dropout, the paper's; pclucas14's port uses Dropout2d).

Odd sizes: a level of size H x W has the level below it at ceil(H / 2) x
ceil(W / 2) (the stride-2 convs pad on the top and sides only), and a
transposed conv's output is cropped on the bottom and right to the size of
the level above.  Any size works, and 28x28 goes 28 -> 14 -> 7.

The input gets a channel of ones (openai's), so the zero padding at the
borders differs from a black pixel.  Weight normalization (`norm: weight`,
the default for this architecture) reparameterizes every conv except the
softmax head's masked ones; openai's data-dependent init is not done.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from pixelnet.model.config import ModelConfig
from pixelnet.model.layers import MaskedConv2d, in_float32, scale_input, shift_down, shift_right

Conv = Callable[[torch.Tensor], torch.Tensor]


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    """[elu(x), elu(-x)] over channels: twice the channels, no information lost."""
    return F.elu(torch.cat([x, -x], dim=1))


ATTENTION_HEADS = 4
RESIDUAL_OUTPUTS = ("conv_out.conv", "attention.out")  # the convs that end a residual branch: data_init starts them small
ACTIVATIONS: dict[str, tuple[Conv, int]] = {"concat_elu": (concat_elu, 2), "elu": (F.elu, 1)}  # fn, channels out a in


def normed(module: nn.Module, weight_norm: bool) -> nn.Module:
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
        self.shift = shift
        self.pad = ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0) if shift == "down" else (kw - 1, 0, kh - 1, 0)
        self.conv = normed(nn.Conv2d(in_channels, out_channels, kernel, stride=stride), weight_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))


class ShiftedDeconv2d(nn.Module):
    """The stride-2 transposed conv up a level: input (i, j) writes outputs (2i .. 2i + 1) x (2j + offsets),
    cropped to `size` on the bottom and right (and by one column on the left for "down", openai's crop)."""

    def __init__(self, channels: int, *, shift: str, weight_norm: bool = True) -> None:
        super().__init__()
        self.kernel = (2, 3) if shift == "down" else (2, 2)
        self.left = 1 if shift == "down" else 0
        self.conv = normed(nn.ConvTranspose2d(channels, channels, self.kernel, stride=2), weight_norm)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.crop(self.conv(x), size)

    def crop(self, y: torch.Tensor, size: tuple[int, int], origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """The part of the conv's raw output y inside the level of `size`, y's first row and column being output
        (origin) before the crop: (2r, 0) for input row r alone, (2r, 2j) for input position (r, j)."""
        (h, w), (r, c) = size, origin
        return y[:, :, :h - r, self.left:self.left + w - c]


class GatedResnet(nn.Module):
    """x + A * sigmoid(B) of the module docstring; `shortcuts` feature maps of short-cut input (0, 1 or 2)."""

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


@dataclass(frozen=True)
class Shortcuts:
    """The U-Net's wiring: where the pass up the network keeps its u and ul maps, and which one each layer down it
    reads as its short-cut input.  `PixelCNNPP.forward` and the incremental form both walk it.

    The maps are numbered in the order the pass up makes them: at each level, the level's input (the streams'
    first maps at level 0, the stride-2 convs' output after), then each layer's output.  The pass down starts
    from the last one and reads the others last made, first read (a stack).
    """

    level: tuple[int, ...]  # map e's resolution level
    up: tuple[tuple[int, ...], ...]  # per level: the maps its up block makes, the level's input first
    start: int  # the map the pass down starts from
    down: tuple[tuple[int, ...], ...]  # per down block: the map each of its layers reads

    @classmethod
    def of(cls, up_layers: list[int], down_layers: list[int]) -> Shortcuts:
        """The wiring of up blocks with up_layers[k] layers at level k and down blocks with down_layers[d]."""
        level: list[int] = []
        up = []
        for k, layers in enumerate(up_layers):
            up.append(tuple(range(len(level), len(level) + 1 + layers)))
            level += [k] * (1 + layers)
        stack = list(range(len(level)))
        start = stack.pop()
        down = tuple(tuple(stack.pop() for _ in range(layers)) for layers in down_layers)
        if stack:
            raise ValueError(f"{len(stack)} maps of the pass up are never read down the network")
        return cls(tuple(level), tuple(up), start, down)


class PixelCNNPP(nn.Module):
    """PixelCNN++: u and ul streams, `resolutions` levels up and down with U-Net short-cuts."""

    # Activation layout.  NCHW: channels-last trained 0.86x as fast in fp32 and within noise of it in bf16 on a
    # 2-core AVX-512 CPU (benchmarks/bench_training_pp.py, row cl; docs/training.md).
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
        self.shortcuts = Shortcuts.of([len(block) for block in self.up], [len(block) for block in self.down])
        # model.attention: causal self-attention over the ul stream at the lowest level, where the pass down starts.
        self.attention = CausalAttention(f, self.sizes()[-1], heads=ATTENTION_HEADS if f % ATTENTION_HEADS == 0
                                         else 1, weight_norm=wn) if config.attention else None
        out, g = self.distribution.out_channels, self.distribution.groups
        if config.head == "logistic_mixture":  # openai's: one 1x1 conv of elu(ul)
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

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) integer levels, labels (B,) when conditional -> the distribution's parameters."""
        xs = scale_input(x, self.config.levels)
        x_pad = torch.cat([xs, torch.ones_like(xs[:, :1])], dim=1).contiguous(memory_format=self.memory_format)
        u = shift_down(self.u_init(x_pad))
        ul = shift_down(self.ul_init_above(x_pad)) + shift_right(self.ul_init_left(x_pad))
        us, uls = {}, {}  # the maps of the pass up, numbered as in self.shortcuts
        for k, (block, maps) in enumerate(zip(self.up, self.shortcuts.up)):
            if k > 0:
                u, ul = self.downsize[k - 1][0](u), self.downsize[k - 1][1](ul)
            us[maps[0]], uls[maps[0]] = u, ul
            for (u_layer, ul_layer), e in zip(block, maps[1:]):
                u = u_layer(u, None, labels)
                ul = ul_layer(ul, u, labels)
                us[e], uls[e] = u, ul
        u, ul = us.pop(self.shortcuts.start), uls.pop(self.shortcuts.start)
        if self.attention is not None:
            ul = self.attention(ul)
        sizes = self.sizes()
        for d, (block, reads) in enumerate(zip(self.down, self.shortcuts.down)):
            if d > 0:
                size = sizes[len(sizes) - 1 - d]
                u, ul = self.upsize[d - 1][0](u, size), self.upsize[d - 1][1](ul, size)
            for (u_layer, ul_layer), e in zip(block, reads):
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
        if self.config.head == "logistic_mixture":
            return self.head_out(features)
        hidden = self.head_hidden(features)
        if self.head_pixel is not None:
            hidden = hidden + self.head_pixel(xs)
        return self.head_out(F.elu(hidden))
