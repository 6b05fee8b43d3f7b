"""Bits/dim: uniform logits give log2(levels); a small case computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pixelnet.model.distributions import Softmax
from pixelnet.model.likelihood import bits_per_dim, mean_nll_nats, nats_to_bits_per_dim, nll_nats
from tests.conftest import model_config


def softmax_of(logits: torch.Tensor) -> Softmax:
    """The Softmax distribution that logits (B, levels, C, H, W) parameterize."""
    return Softmax(levels=logits.shape[1], image_channels=logits.shape[2])


@pytest.mark.parametrize("levels", [2, 4, 256])
def test_uniform_logits_give_log2_levels(levels):
    x = torch.randint(0, levels, (3, 2, 4, 5))
    logits = torch.zeros(3, levels, 2, 4, 5)
    total = float(nll_nats(softmax_of(logits), logits, x))
    assert bits_per_dim(total, 3, 2 * 4 * 5) == pytest.approx(math.log2(levels), abs=1e-6)
    assert nats_to_bits_per_dim(float(mean_nll_nats(softmax_of(logits), logits, x))) == pytest.approx(math.log2(levels), abs=1e-6)


def test_known_small_case_by_hand():
    # Two images of one 1x2 grayscale row, 2 levels. p(level 1) = sigmoid(l1 - l0).
    logits = torch.tensor([[[[[0.0, 0.0]]], [[[math.log(3), 0.0]]]],   # image 0: p1 = 3/4, 1/2
                           [[[[0.0, 0.0]]], [[[0.0, math.log(1 / 3)]]]]])  # image 1: p1 = 1/2, 1/4
    assert logits.shape == (2, 2, 1, 1, 2)
    x = torch.tensor([[[[1, 0]]], [[[0, 0]]]])
    # image 0: -ln(3/4) - ln(1/2); image 1: -ln(1/2) - ln(3/4)
    expected_nats = 2 * (-math.log(3 / 4) - math.log(1 / 2))
    assert float(nll_nats(softmax_of(logits), logits, x)) == pytest.approx(expected_nats, rel=1e-6)
    expected_bpd = expected_nats / (2 * 2 * math.log(2))
    assert bits_per_dim(float(nll_nats(softmax_of(logits), logits, x)), 2, 2) == pytest.approx(expected_bpd, rel=1e-6)


def tiny_conditional(n_classes: int = 3):
    from pixelnet.model.build import build_model

    cfg = model_config(channels=8, blocks=1, first_kernel=3, kernel=3, levels=2, height=2, width=2,
                      conditional=True, n_classes=n_classes)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # make the classes differ a lot, so that the marginal is not any one of them
        model.embed.weight.normal_(0, 3.0)
    return model


def every_image(levels: int, height: int, width: int) -> torch.Tensor:
    """All levels ** (H * W) grayscale images, (N, 1, H, W)."""
    grid = torch.cartesian_prod(*[torch.arange(levels)] * (height * width))
    return grid.view(-1, 1, height, width)


@pytest.mark.parametrize("prior", [[1 / 3, 1 / 3, 1 / 3], [0.7, 0.3, 0.0]])
def test_marginal_of_a_conditional_model_is_a_distribution_over_images(prior):
    from pixelnet.model.likelihood import marginal_nll_nats

    model = tiny_conditional()
    images = every_image(2, 2, 2)  # all 16 binary 2x2 images
    nll = marginal_nll_nats(model, images, prior=torch.tensor(prior), batch_size=5, device=torch.device("cpu"))
    assert nll.shape == (16,)
    assert float(torch.exp(-nll).sum()) == pytest.approx(1.0, abs=1e-6)  # sum_x p(x) = 1


def test_marginal_with_all_mass_on_one_class_is_that_class_nll_and_heldout_nll_reports_both():
    from pixelnet.evaluation.nll import heldout_nll
    from pixelnet.model.likelihood import class_prior, marginal_nll_nats, total_nll_nats

    model, cpu = tiny_conditional(), torch.device("cpu")
    images = every_image(2, 2, 2)
    labels = torch.full((16,), 1)
    nll = marginal_nll_nats(model, images, prior=torch.tensor([0.0, 1.0, 0.0]), batch_size=16, device=cpu)
    given = total_nll_nats(model, images, batch_size=16, device=cpu, labels=labels)
    assert float(nll.sum()) == pytest.approx(given, rel=1e-5)

    labels = torch.arange(16) % 3
    prior = class_prior(labels, 3)
    assert prior.tolist() == pytest.approx([6 / 16, 5 / 16, 5 / 16])
    out = heldout_nll(model, images, batch_size=4, device=cpu, labels=labels, prior=prior)
    dims = 4
    marginal = float(marginal_nll_nats(model, images, prior=prior, batch_size=16, device=cpu).sum())
    assert out["test_bits_per_dim"] == pytest.approx(marginal / (16 * dims * math.log(2)), rel=1e-6)
    assert out["test_bits_per_dim_given_label"] == pytest.approx(
        total_nll_nats(model, images, batch_size=16, device=cpu, labels=labels) / (16 * dims * math.log(2)), rel=1e-6)
    # p(x) >= p(y) p(x | y) for the true y: the marginal is at most -log p(y) above the conditional.
    per_given = [total_nll_nats(model, images[k:k + 1], batch_size=1, device=cpu, labels=labels[k:k + 1]) for k in range(16)]
    per_marginal = marginal_nll_nats(model, images, prior=prior, batch_size=16, device=cpu)
    for k in range(16):
        assert per_marginal[k] <= per_given[k] - math.log(prior[labels[k]]) + 1e-6
    from pixelnet.model.build import build_model

    unconditional = build_model(model.config.replace(conditional=False, n_classes=0)).eval()
    out = heldout_nll(unconditional, images, batch_size=4, device=cpu, labels=labels, prior=prior)
    assert set(out) == {"test_bits_per_dim", "test_nats_per_image"}


def test_registered_model_scores_a_conditional_model_with_and_without_labels(tmp_path):
    from pixelnet.checkpoint import save_checkpoint
    from pixelnet.model.likelihood import marginal_nll_nats, total_nll_nats
    from pixelnet.tracking.pyfunc import PixelNetPyfunc

    model, cpu = tiny_conditional(), torch.device("cpu")
    images, prior = every_image(2, 2, 2), torch.tensor([0.5, 0.25, 0.25])
    save_checkpoint(model, model.config, tmp_path / "m.pt", meta={"class_prior": prior.tolist()})
    pyfunc = PixelNetPyfunc(str(tmp_path / "m.pt"))
    marginal = marginal_nll_nats(model, images, prior=prior, batch_size=16, device=cpu) / (4 * math.log(2))
    assert pyfunc.predict(images.numpy()) == pytest.approx(marginal.numpy(), rel=1e-5)
    labels = [2] * 16
    given = total_nll_nats(model, images[:1], batch_size=1, device=cpu, labels=torch.tensor([2])) / (4 * math.log(2))
    assert pyfunc.predict(images.numpy(), params={"labels": labels})[0] == pytest.approx(given, rel=1e-5)
    save_checkpoint(model, model.config, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="no saved class prior"):
        PixelNetPyfunc(str(tmp_path / "old.pt")).predict(images.numpy())


def test_the_summed_nll_is_the_python_float_sum_of_its_batches_exactly():
    """total_nll_nats sums on the device in float64 (no sync a batch): the same bits as adding each batch's
    float32 sum as a Python float, which is what the reports held before."""
    from pixelnet.model.likelihood import forward, nll_nats, total_nll_nats
    from tests.conftest import random_model

    model = random_model(levels=4, conditional=True, n_classes=3)
    images = torch.randint(0, 4, (23, 1, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels = torch.arange(23) % 3
    by_hand = 0.0
    with torch.no_grad():
        for start in range(0, 23, 5):
            x, y = images[start:start + 5], labels[start:start + 5]
            by_hand += float(nll_nats(model.distribution, forward(model, x, y), x, reduction="sum"))
    total = total_nll_nats(model, images, batch_size=5, device=torch.device("cpu"), labels=labels)
    assert total == by_hand and total > 0
