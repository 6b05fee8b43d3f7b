"""The discretized logistic mixture head: a normalized, exact, causal distribution."""

from __future__ import annotations

import math

import pytest
import torch

from pixelnet.model.distributions import LogisticMixture, log_bin_probs, log_sigmoid_diff
from tests.conftest import random_model as conftest_random_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

MIX = {"head": "logistic_mixture", "mixtures": 3}


def mixture_model(**overrides) -> torch.nn.Module:
    return conftest_random_model(sharpen=4.0, **(MIX | {"width": 5, **overrides}))


def random_images(model: torch.nn.Module, n: int, seed: int = 0) -> torch.Tensor:
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.levels, (n, cfg.image_channels, cfg.height, cfg.width), generator=gen)


def brute_force_nll(dist: LogisticMixture, params: torch.Tensor, pixel: torch.Tensor) -> float:
    """-log p(pixel) for one pixel's params (P,) and levels (C,), by sigmoid differences in float64."""
    k, c, levels = dist.mixtures, dist.image_channels, dist.levels
    p = params.double()
    pi = torch.softmax(p[:k], dim=0)
    mu = p[k:k + c * k].view(c, k)
    s = torch.exp(p[k + c * k:k + 2 * c * k].view(c, k).clamp(min=-7.0))
    coeff = torch.tanh(p[k + 2 * c * k:].view(-1, k)) if c == 3 else None
    v = pixel.double() * 2 / (levels - 1) - 1
    means = [mu[0]] if c == 1 else [mu[0], mu[1] + coeff[0] * v[0], mu[2] + coeff[1] * v[0] + coeff[2] * v[1]]
    total = 0.0
    for comp in range(k):
        prob = float(pi[comp])
        for ch in range(c):
            lo = -math.inf if pixel[ch] == 0 else float(v[ch]) - 1 / (levels - 1)
            hi = math.inf if pixel[ch] == levels - 1 else float(v[ch]) + 1 / (levels - 1)
            m, sc = float(means[ch][comp]), float(s[ch, comp])
            cdf_hi = 1.0 if hi == math.inf else 1 / (1 + math.exp(-(hi - m) / sc))
            cdf_lo = 0.0 if lo == -math.inf else 1 / (1 + math.exp(-(lo - m) / sc))
            prob *= cdf_hi - cdf_lo
        total += prob
    return -math.log(total)


@pytest.mark.parametrize("channels", [1, 3])
def test_output_has_the_papers_width(channels):
    dist = LogisticMixture(levels=256, image_channels=channels, mixtures=10)
    assert dist.out_channels == {1: 30, 3: 100}[channels]
    model = mixture_model(image_channels=channels, mixtures=10)
    assert model(random_images(model, 2)).shape == (2, dist.out_channels, 5, 5)


def test_log_sigmoid_diff_is_exact_and_finite_in_the_tails():
    a = torch.tensor([-3.0, 0.0, 2.0, -0.01], dtype=torch.float64)
    b = torch.tensor([-2.5, 0.1, 9.0, 0.01], dtype=torch.float64)
    torch.testing.assert_close(log_sigmoid_diff(a, b), torch.log(torch.sigmoid(b) - torch.sigmoid(a)))
    # Far in either tail, sigmoid(b) - sigmoid(a) underflows float32 and the naive log is -inf.
    a32 = torch.tensor([-200.0, 200.0, 60.0])
    b32 = a32 + torch.tensor([0.1, 0.1, 1e-3])
    got = log_sigmoid_diff(a32, b32)
    assert torch.isfinite(got).all()
    # Left tail: ~ b + log(1 - exp(a - b)); right tail: ~ -a + log(1 - exp(a - b)).
    expected = torch.tensor([-199.9 + math.log(1 - math.exp(-0.1)), -200.0 + math.log(1 - math.exp(-0.1)),
                             -60.0 + math.log(1 - math.exp(-1e-3))])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("levels", [2, 5, 256])
def test_single_logistic_levels_sum_to_one_with_open_edges(levels):
    grid = torch.arange(levels)[:, None]
    mean = torch.tensor([[-1.3, -0.2, 0.0, 0.7, 1.5]], dtype=torch.float64)
    log_scale = torch.tensor([[-7.0, -3.0, -1.0, 0.0, 2.0]], dtype=torch.float64)
    total = log_bin_probs(grid, mean, log_scale, levels=levels).exp().sum(dim=0)
    torch.testing.assert_close(total, torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-9)


@pytest.mark.parametrize("arch", ["pixelcnn", "gated"])
@pytest.mark.parametrize("channels,levels", [(1, 256), (3, 256), (3, 4), (1, 2)])
def test_probabilities_of_all_levels_sum_to_one_at_every_sub_pixel(arch, channels, levels):
    """For random weights and images, sum over l of p(x_c = l | the pixel's x_<c, earlier pixels) is 1."""
    model = mixture_model(arch=arch, image_channels=channels, levels=levels, height=4, width=4)
    dist = model.distribution
    x = random_images(model, 3)
    with torch.no_grad():
        out = model(x)
    for ch in range(channels):
        mass = torch.zeros(3, 4, 4, dtype=torch.float64)
        for level in range(levels):
            xl = x.clone()
            xl[:, ch] = level  # the network output `out` is kept: only this pixel's channels < ch and ch matter
            nats = dist.nll(out, xl, reduction="none").view(3, 4, 4, channels)[..., ch]
            mass += torch.exp(-nats.double())
        torch.testing.assert_close(mass, torch.ones_like(mass), rtol=0, atol=2e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_nll_equals_a_brute_force_sum_over_components(channels):
    model = mixture_model(image_channels=channels, levels=8, height=3, width=3)
    dist = model.distribution
    x = random_images(model, 2, seed=4)
    x[0, :, 0, 0] = 0  # both open edge bins appear
    x[0, :, 0, 1] = 7
    with torch.no_grad():
        out = model(x)
    expected = sum(brute_force_nll(dist, out[b, :, i, j], x[b, :, i, j])
                   for b in range(2) for i in range(3) for j in range(3))
    assert float(dist.nll(out, x)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_sampling_distribution_is_the_trained_likelihood(channels):
    """level_logits (what the samplers draw from) normalizes to exp(-nll) of every level, given earlier channels."""
    model = mixture_model(image_channels=channels, levels=16, height=3, width=3)
    dist = model.distribution
    x = random_images(model, 2, seed=1)
    with torch.no_grad():
        out = model(x)
    for ch in range(channels):
        want = torch.stack([-dist.nll(out, torch.cat([x[:, :ch], torch.full_like(x[:, ch:ch + 1], level), x[:, ch + 1:]],
                                                     dim=1), reduction="none").view(2, 3, 3, channels)[..., ch]
                            for level in range(16)], dim=-1)  # (B, H, W, levels)
        got = torch.stack([torch.stack([torch.log_softmax(dist.level_logits(dist.at(out, i, j, ch), x[:, :, i, j], ch, 1.0),
                                                          dim=-1) for j in range(3)], dim=1) for i in range(3)], dim=1)
        torch.testing.assert_close(got, want.double(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch", ["pixelcnn", "gated"])
def test_rgb_causality_over_sub_pixels(arch):
    """Changing sub-pixel (i, j, c) changes no NLL term of an earlier sub-pixel, and does change its own."""
    model = mixture_model(arch=arch, image_channels=3, levels=16, height=4, width=4)
    x = random_images(model, 1, seed=2)
    with torch.no_grad():
        base = model.distribution.nll(model(x), x, reduction="none")  # pixel-major: ((i * W + j) * C + c)
        for i, j, c in [(0, 0, 0), (1, 2, 0), (1, 2, 1), (2, 1, 2), (3, 3, 1)]:
            y = x.clone()
            y[0, c, i, j] = (x[0, c, i, j] + 5) % 16
            changed = model.distribution.nll(model(y), y, reduction="none") != base
            at = (i * 4 + j) * 3 + c
            assert not changed[:at].any(), f"sub-pixel {(i, j, c)} changed an earlier term"
            assert changed[at], f"sub-pixel {(i, j, c)} did not change its own term"


@pytest.mark.parametrize("arch", ["pixelcnn", "gated"])
def test_a_pixels_parameters_see_none_of_it(arch):
    """The whole-pixel head's parameters at (i, j) depend on earlier pixels only, not on any channel of (i, j)."""
    model = mixture_model(arch=arch, image_channels=3, levels=16, height=4, width=4)
    x = random_images(model, 1, seed=3)
    with torch.no_grad():
        base = model(x)
        for ch in range(3):
            y = x.clone()
            y[0, ch, 2, 2] = (x[0, ch, 2, 2] + 7) % 16
            moved = (model(y) - base).abs().amax(dim=1)[0]  # (H, W)
            assert moved[2, 2] == 0 and moved[:2].max() == 0 and moved[2, :2].max() == 0
            assert moved[2, 3] > 0 and moved[3].max() > 0  # later pixels do see it


def tempered_brute_force(dist: LogisticMixture, params: torch.Tensor, temperature: float) -> torch.Tensor:
    """p(level) of a gray pixel with the documented tempering: component logits / T, scales x T."""
    k = dist.mixtures
    p = params.double().clone()
    p[:k] = p[:k] / temperature
    p[2 * k:3 * k] = p[2 * k:3 * k].clamp(min=-7.0) + math.log(temperature)
    return torch.tensor([math.exp(-brute_force_nll(dist, p, torch.tensor([level])))
                         for level in range(dist.levels)], dtype=torch.float64)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 1.5])
def test_temperature_divides_component_logits_and_multiplies_scales(temperature):
    dist = LogisticMixture(levels=32, image_channels=1, mixtures=3)
    params = torch.tensor([[0.5, -1.0, 1.2, -0.6, 0.1, 0.8, -2.0, -1.5, -3.0]])  # logits | means | log-scales
    got = torch.softmax(dist.level_logits(params, torch.zeros(1, 1, dtype=torch.long), 0, temperature), dim=-1)[0]
    torch.testing.assert_close(got, tempered_brute_force(dist, params[0], temperature), rtol=0, atol=1e-9)


def test_low_temperature_keeps_the_means_and_narrows_around_them():
    """Unlike a softmax's, a mixture's low temperature does not pull samples to the mode level (black):
    the likeliest component wins and its draws close in on its mean."""
    dist = LogisticMixture(levels=256, image_channels=1, mixtures=2)
    # Component 0 (weight 0.6): mean -1 (black); component 1 (weight 0.4): mean 0.5 (level ~191), wide.
    params = torch.tensor([[math.log(0.6), math.log(0.4), -1.0, 0.5, -4.0, -1.5]])
    pixel = torch.zeros(1, 1, dtype=torch.long)
    spread = []
    for t in (1.0, 0.5, 0.1):
        probs = torch.softmax(dist.level_logits(params, pixel, 0, t), dim=-1)[0]
        near_stroke = probs[150:231].sum()  # levels around the stroke component's mean
        spread.append(float(near_stroke))
    # The likelier (black) component takes over as T falls: weights 0.6 ** (1 / T) : 0.4 ** (1 / T).
    assert spread[0] > 0.2 and spread[2] == pytest.approx(0.4 ** 10 / (0.4 ** 10 + 0.6 ** 10), abs=2e-3)
    stroke_only = torch.tensor([[-1.0, 0.5, -1.5]])  # one component: T narrows it around level 191
    one = LogisticMixture(levels=256, image_channels=1, mixtures=1)
    widths = []
    for t in (1.0, 0.5, 0.1):
        probs = torch.softmax(one.level_logits(stroke_only, pixel, 0, t), dim=-1)[0]
        mean_level = float((probs * torch.arange(256)).sum())
        assert mean_level == pytest.approx(191.25, abs=3.0)  # the mean stays
        widths.append(float(probs[181:202].sum()))
    assert widths[0] < widths[1] < widths[2] and widths[2] > 0.9


@pytest.mark.parametrize("channels", [1, 3])
def test_draw_is_the_inverse_cdf_of_the_level_distribution(channels):
    """The mixture's draw (its CDF at the bin edges) picks the level the softmax of level_logits would."""
    dist = LogisticMixture(levels=256, image_channels=channels, mixtures=4)
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(500, dist.out_channels, generator=gen) * 2
    pixel = torch.randint(0, 256, (500, channels), generator=gen)
    u = torch.rand(500, generator=gen, dtype=torch.float64)
    for ch in range(channels):
        for t in (1.0, 0.6):
            cdf = torch.softmax(dist.level_logits(params, pixel, ch, t), dim=-1).cumsum(dim=-1)
            expected = torch.searchsorted(cdf, u[:, None]).squeeze(-1).clamp(max=255)
            got = dist.draw(params, pixel, ch, u, t)
            assert torch.equal(got, expected)
            assert len(got.unique()) > 50  # draws spread over the levels, not a constant


def test_the_registered_models_scores_use_the_mixture(tmp_path):
    """The pyfunc model (what MLflow serves) scores a mixture checkpoint in bits/dim under the mixture."""
    from pixelnet.checkpoint import save_checkpoint
    from pixelnet.tracking.pyfunc import PixelNetPyfunc

    model = mixture_model(image_channels=3, levels=16, height=3, width=3)
    save_checkpoint(model, model.config, tmp_path / "m.pt")
    x = random_images(model, 4, seed=5)
    with torch.no_grad():
        expected = model.distribution.nll(model(x), x, reduction="none").view(4, -1).sum(1) / (27 * math.log(2))
    got = PixelNetPyfunc(str(tmp_path / "m.pt")).predict(x.numpy())
    assert got == pytest.approx(expected.tolist(), rel=1e-5)
