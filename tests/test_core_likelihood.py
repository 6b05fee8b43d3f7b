"""Bits/dim: uniform logits give log2(levels); a small case computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pixelnet.likelihood import bits_per_dim, mean_nll_nats, nats_to_bits_per_dim, nll_nats


@pytest.mark.parametrize("levels", [2, 4, 256])
def test_uniform_logits_give_log2_levels(levels):
    x = torch.randint(0, levels, (3, 2, 4, 5))
    logits = torch.zeros(3, levels, 2, 4, 5)
    total = float(nll_nats(logits, x))
    assert bits_per_dim(total, 3, 2 * 4 * 5) == pytest.approx(math.log2(levels), abs=1e-6)
    assert nats_to_bits_per_dim(float(mean_nll_nats(logits, x))) == pytest.approx(math.log2(levels), abs=1e-6)


def test_known_small_case_by_hand():
    # Two images of one 1x2 grayscale row, 2 levels. p(level 1) = sigmoid(l1 - l0).
    logits = torch.tensor([[[[[0.0, 0.0]]], [[[math.log(3), 0.0]]]],   # image 0: p1 = 3/4, 1/2
                           [[[[0.0, 0.0]]], [[[0.0, math.log(1 / 3)]]]]])  # image 1: p1 = 1/2, 1/4
    assert logits.shape == (2, 2, 1, 1, 2)
    x = torch.tensor([[[[1, 0]]], [[[0, 0]]]])
    # image 0: -ln(3/4) - ln(1/2); image 1: -ln(1/2) - ln(3/4)
    expected_nats = 2 * (-math.log(3 / 4) - math.log(1 / 2))
    assert float(nll_nats(logits, x)) == pytest.approx(expected_nats, rel=1e-6)
    expected_bpd = expected_nats / (2 * 2 * math.log(2))
    assert bits_per_dim(float(nll_nats(logits, x)), 2, 2) == pytest.approx(expected_bpd, rel=1e-6)
