"""The output distributions over intensities, which a network's last conv parameterizes (model.head).

`Softmax`: a categorical over the `levels` of every sub-pixel, its logits in C mask groups (channel g's logits see
channels < g of the pixel).  `LogisticMixture`: PixelCNN++'s discretized mixture of logistics, whose parameters see
none of the pixel (one group).  Invariants: level l sits at 2l / (levels - 1) - 1 (layers.scale_input) and owns the
bin of half-width 1 / (levels - 1) around it, the edge bins open to -inf and +inf, so the levels' probabilities sum
to 1 exactly; each sub-pixel's distribution given the pixel's channels already drawn is exact, and a pixel's NLL is
the sum of its sub-pixels'; every sampler draws sub-pixel ch by inverse CDF at a given uniform (`draw`), so equal
parameters give equal images from the same noise.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

LOG_SCALE_MIN = -7.0  # log-scales are clamped here (as openai's code): a scale of 0.0009, well inside one bin at 256 levels


def log_sigmoid_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(b) - sigmoid(a)) for b > a, in closed form: stable in float32 for any bin, where openai's code
    switches to the density at the bin centre.

    sigmoid(b) - sigmoid(a) = sinh((b - a) / 2) / (2 cosh(a / 2) cosh(b / 2)); with y = (b - a) / 2,
    log sinh(y) = y + log(-expm1(-2y)) - log 2 and log cosh(z / 2) = |z| / 2 + softplus(-|z|) - log 2.
    """
    y = (b - a) / 2
    return y + torch.log(-torch.expm1(-2 * y)) - (a.abs() + b.abs()) / 2 - F.softplus(-a.abs()) - F.softplus(-b.abs())


def log_bin_probs(level: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, *, levels: int) -> torch.Tensor:
    """log P(level) under logistic(mean, exp(log_scale)) discretized to `levels` bins (broadcasting)."""
    half = 1.0 / (levels - 1)
    inv_scale = torch.exp(-log_scale)
    centre = level.to(mean.dtype) * (2 * half) - 1 - mean
    lower = (centre - half) * inv_scale  # the bin's edges, standardized
    upper = (centre + half) * inv_scale
    inner = log_sigmoid_diff(lower, upper)
    return torch.where(level == 0, F.logsigmoid(upper), torch.where(level == levels - 1, F.logsigmoid(-lower), inner))


def reduce(nats: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return nats.sum()
    if reduction == "mean":
        return nats.mean()
    if reduction == "none":
        return nats
    raise ValueError(f"unknown reduction {reduction!r}")


class Softmax:
    """A `levels`-way categorical per sub-pixel; the network's output is (B, levels, C, H, W) logits."""

    def __init__(self, *, levels: int, image_channels: int) -> None:
        self.levels, self.image_channels = levels, image_channels
        self.groups = image_channels  # mask groups: channel g's logits see channels < g of the pixel
        self.out_channels = image_channels * levels  # the last conv's outputs, grouped by image channel

    def arrange(self, out: torch.Tensor) -> torch.Tensor:
        """The last conv's (B, C * levels, H, W) -> logits (B, levels, C, H, W), what F.cross_entropy takes."""
        b, _, h, w = out.shape
        return out.view(b, self.image_channels, self.levels, h, w).transpose(1, 2)

    def nll(self, out: torch.Tensor, x: torch.Tensor, *, reduction: str = "sum") -> torch.Tensor:
        """-log p in nats of levels x (B, C, H, W), float32: summed, "mean" over sub-pixels, or "none".

        "none" gives (B * H * W * C) values, pixel-major.  A channels-last network stores the logits as
        (B, H, W, C, levels), so the permute below is a view and the softmax runs over contiguous rows;
        strided logits are copied once.
        """
        flat = out.permute(0, 3, 4, 2, 1).reshape(-1, self.levels)  # (B * H * W * C, levels)
        return F.cross_entropy(flat.float(), x.permute(0, 2, 3, 1).reshape(-1).long(), reduction=reduction)

    def at(self, out: torch.Tensor, i: int, j: int, ch: int) -> torch.Tensor:
        """What sub-pixel (i, j, ch) is drawn from: its logits (N, levels)."""
        return out[:, :, ch, i, j]

    def level_logits(self, params: torch.Tensor, pixel: torch.Tensor, ch: int, temperature: float) -> torch.Tensor:
        """Float64 logits (N, levels) of sub-pixel ch at `temperature`; params (N, levels) from `at`."""
        return params.double() / temperature

    def draw(self, params: torch.Tensor, pixel: torch.Tensor, ch: int, u: torch.Tensor, temperature: float
             ) -> torch.Tensor:
        """Inverse-CDF draw of sub-pixel ch: params (N, levels) from `at`, u (N,) uniforms -> (N,) int64 levels."""
        probs = torch.softmax(self.level_logits(params, pixel, ch, temperature), dim=-1)
        return inverse_cdf(probs.cumsum(dim=-1), u, levels=self.levels)


def inverse_cdf(cdf: torch.Tensor, u: torch.Tensor, *, levels: int) -> torch.Tensor:
    """The first level whose CDF reaches u: cdf (N, levels), or (N, levels - 1) without the last level's 1; u (N,)."""
    idx = torch.searchsorted(cdf, u.to(cdf.dtype).contiguous().unsqueeze(-1)).squeeze(-1)
    return idx.clamp_(max=levels - 1)


class LogisticMixture:
    """K discretized logistics per pixel, coupled across RGB (Salimans et al. 2017; openai/pixel-cnn
    `discretized_mix_logistic_loss`); the network's output is (B, P, H, W) parameters.

    Each component has a mean and a log-scale per channel and, for RGB, coefficients that move G's mean by R and B's
    by R and G (mean_G = mu_G + alpha R, mean_B = mu_B + beta R + gamma G, R and G in [-1, 1]), so that
    p(r, g, b) = sum_k pi_k p_k(r) p_k(g | r) p_k(b | r, g).  The distribution of G given R weights the components
    by their posterior given R (`_conditional`), and likewise for B.  Temperature T (sampling only) divides the
    component logits by T and multiplies every scale by T, leaving the means where they are.

    P = K (component logits) + C K (means) + C K (log-scales) + C (C - 1) / 2 K (coefficients, RGB):
    30 for gray and 100 for RGB at K = 10.  Along P: [logits | means (C, K) | log-scales (C, K) | coefficients].
    """

    def __init__(self, *, levels: int, image_channels: int, mixtures: int) -> None:
        self.levels, self.image_channels, self.mixtures = levels, image_channels, mixtures
        self.groups = 1  # the whole pixel's parameters come from features that see none of it
        c = image_channels
        self.n_coefficients = c * (c - 1) // 2
        self.out_channels = mixtures * (1 + 2 * c + self.n_coefficients)

    def arrange(self, out: torch.Tensor) -> torch.Tensor:
        return out  # (B, P, H, W)

    def unpack(self, params: torch.Tensor, temperature: float = 1.0):
        """params (..., P) -> component log-weights (..., K), means and log-scales (..., C, K), coefficients."""
        k, c = self.mixtures, self.image_channels
        log_pi = F.log_softmax(params[..., :k] / temperature, dim=-1)
        mu = params[..., k:k + c * k].unflatten(-1, (c, k))
        log_scale = params[..., k + c * k:k + 2 * c * k].unflatten(-1, (c, k)).clamp(min=LOG_SCALE_MIN)
        log_scale = log_scale + math.log(temperature)
        coeff = torch.tanh(params[..., k + 2 * c * k:].unflatten(-1, (self.n_coefficients, k)))
        return log_pi, mu, log_scale, coeff

    def mean(self, mu: torch.Tensor, coeff: torch.Tensor, values: torch.Tensor, ch: int) -> torch.Tensor:
        """Channel ch's component means (..., K), moved by the pixel's earlier channels, values (..., C) in [-1, 1]."""
        m = mu[..., ch, :]
        for src in range(ch):
            pair = ch * (ch - 1) // 2 + src  # (G from R), (B from R), (B from G): openai's order
            m = m + coeff[..., pair, :] * values[..., src, None]
        return m

    def _component_log_probs(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log pi_k + sum over channels <= c of log p_k(x_c | earlier): (..., C, K); params (..., P), x (..., C)."""
        log_pi, mu, log_scale, coeff = self.unpack(params)
        values = x.to(mu.dtype) * (2.0 / (self.levels - 1)) - 1.0
        per_channel = torch.stack([
            log_bin_probs(x[..., ch, None], self.mean(mu, coeff, values, ch), log_scale[..., ch, :], levels=self.levels)
            for ch in range(self.image_channels)], dim=-2)  # (..., C, K)
        return log_pi.unsqueeze(-2) + per_channel.cumsum(dim=-2)

    def nll(self, out: torch.Tensor, x: torch.Tensor, *, reduction: str = "sum") -> torch.Tensor:
        """-log p in nats of levels x (B, C, H, W), float32: summed, "mean" over sub-pixels, or "none".

        "none" gives (B * H * W * C) values, pixel-major: -log p(x_c | the pixel's channels < c).  Summed
        over a pixel's channels they are -log p(r, g, b), the whole pixel's mixture.
        """
        params = out.float().permute(0, 2, 3, 1)  # (B, H, W, P): a view for a channels-last network
        joint = torch.logsumexp(self._component_log_probs(params, x.permute(0, 2, 3, 1).long()), dim=-1)  # (B, H, W, C)
        per_sub_pixel = -torch.diff(joint, dim=-1, prepend=torch.zeros_like(joint[..., :1]))
        return reduce(per_sub_pixel.reshape(-1), reduction)

    def at(self, out: torch.Tensor, i: int, j: int, ch: int) -> torch.Tensor:
        """What sub-pixel (i, j, ch) is drawn from: the whole pixel's parameters (N, P)."""
        return out[:, :, i, j]

    def _conditional(self, params: torch.Tensor, pixel: torch.Tensor, ch: int, temperature: float):
        """Sub-pixel ch's components given the pixel's channels < ch: log-weights, means, log-scales (N, K) each.

        params (N, P) from `at`; pixel (N, C) levels, of which channels < ch are drawn.  The weights are the
        components' posterior given those channels (not normalized), so the mixture is p(x_ch | x_<ch) exactly.
        """
        params = params.double()
        log_pi, mu, log_scale, coeff = self.unpack(params, temperature)
        values = pixel.double() * (2.0 / (self.levels - 1)) - 1.0
        log_w = log_pi
        for src in range(ch):
            log_w = log_w + log_bin_probs(pixel[:, src, None], self.mean(mu, coeff, values, src), log_scale[:, src],
                                          levels=self.levels)
        return log_w, self.mean(mu, coeff, values, ch), log_scale[:, ch]

    def level_logits(self, params: torch.Tensor, pixel: torch.Tensor, ch: int, temperature: float) -> torch.Tensor:
        """Float64 log-probabilities (up to a constant) of each level of sub-pixel ch at `temperature`, (N, levels)."""
        log_w, mean, log_scale = self._conditional(params, pixel, ch, temperature)
        grid = torch.arange(self.levels, device=params.device)[None, :, None]  # (1, levels, 1)
        lp = log_bin_probs(grid, mean[:, None], log_scale[:, None], levels=self.levels)  # (N, levels, K)
        return torch.logsumexp(log_w[:, None] + lp, dim=-1)

    def cdf(self, params: torch.Tensor, pixel: torch.Tensor, ch: int, temperature: float) -> torch.Tensor:
        """P(x_ch <= l | x_<ch) for l = 0 .. levels - 2 (the last is 1), float64 (N, levels - 1): at each upper bin
        edge, sum_k w_k sigmoid((edge - mean_k) / s_k), cheaper than the log-probabilities of `level_logits`."""
        log_w, mean, log_scale = self._conditional(params, pixel, ch, temperature)
        half = 1.0 / (self.levels - 1)
        upper = torch.arange(self.levels - 1, device=params.device, dtype=torch.float64) * (2 * half) - 1 + half
        z = (upper[None, :, None] - mean[:, None]) * torch.exp(-log_scale)[:, None]  # (N, levels - 1, K)
        return torch.bmm(torch.sigmoid(z), torch.softmax(log_w, dim=-1)[:, :, None])[:, :, 0]

    def draw(self, params: torch.Tensor, pixel: torch.Tensor, ch: int, u: torch.Tensor, temperature: float
             ) -> torch.Tensor:
        """Inverse-CDF draw of sub-pixel ch given the pixel's channels < ch: u (N,) uniforms -> (N,) int64 levels."""
        return inverse_cdf(self.cdf(params, pixel, ch, temperature), u, levels=self.levels)


Distribution = Softmax | LogisticMixture


def make_distribution(*, head: str, levels: int, image_channels: int, mixtures: int) -> Distribution:
    """The output distribution model.head names."""
    if head == "softmax":
        return Softmax(levels=levels, image_channels=image_channels)
    if head == "logistic_mixture":
        return LogisticMixture(levels=levels, image_channels=image_channels, mixtures=mixtures)
    raise ValueError(f"unknown head {head!r}")
