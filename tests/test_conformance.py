"""Every incremental form against its model: the conformance suite of the fast sampler (sampling/fast.py).

The cases come from the registries: every architecture in `build.ARCHITECTURES`, every head of
`ModelConfig.head`, gray and RGB, unconditional and conditional, plus variants that reach the
corners of each architecture (one or four resolution levels, a kernel of 1, no blocks, no norm,
2 or 256 levels).  Each case is checked twice:

- teacher forced: `sample_fast` runs on a fixed random image whose values replace the draws, and the
  distribution's parameters it reads at every sub-pixel must equal the forward pass on that image,
  to `ATOL`.  A small error that never flips a draw fails here;
- end to end: `sample_fast` and `sample_naive` draw the same images from the same noise.

The three lists of architectures (the config's Literal, build's registry, the fast sampler's) must agree,
so that no architecture can be configured, built or sampled without the suite reaching it; and every form
refuses a model in train mode and a conditional model without labels.
"""

from __future__ import annotations

import itertools
from typing import get_args, get_type_hints

import pytest
import torch

from pixelnet.model.build import ARCHITECTURES, build_model
from pixelnet.config import ModelParams
from pixelnet.model.config import ModelConfig
from pixelnet.sampling import sample_naive, sampling_noise
from pixelnet.sampling.fast import IMPLEMENTATIONS, incremental, sample_fast
from tests.conftest import model_config, random_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

HEADS = list(get_args(get_type_hints(ModelConfig)["head"]))
SHARPEN = 4.0  # scales the last layer: random init gives near-uniform outputs, and sharper ones make each one matter
# Twice the largest difference float32 rounding makes between an incremental form and the forward pass
# on this suite's cases (both compute in float32: layers.scale_input casts the input to float32, so a
# float64 model has no forward pass to compare with).  A form off by 1e-5 anywhere fails.
ATOL = 3e-6

# Per architecture: a small network over 5 x 6 images (5 x 7 for PixelCNN++, whose 3 levels are then
# 5 x 7, 3 x 4 and 2 x 2: each upsampling crops a row, and one of them a column).
BASE = {"channels": 12, "blocks": 2, "first_kernel": 5, "kernel": 3, "norm": "batch", "levels": 256, "mixtures": 3,
        "height": 5, "width": 6}
ARCH_BASE = {"pixelcnnpp": {"channels": 8, "norm": "weight", "resnet_layers": 1, "resolutions": 3, "width": 7}}


def matrix_cases() -> dict[str, dict]:
    """Architecture x head x gray/RGB x conditional, from the registries."""
    cases = {}
    for arch, head, channels, conditional in itertools.product(ARCHITECTURES, HEADS, (1, 3), (False, True)):
        name = f"{arch}-{head}-{'rgb' if channels == 3 else 'gray'}-{'cond' if conditional else 'uncond'}"
        cases[name] = {"arch": arch, "head": head, "image_channels": channels, "conditional": conditional}
    return cases


VARIANTS = {
    "pixelcnn-l2-k3-b1": {"arch": "pixelcnn", "levels": 2, "first_kernel": 3, "kernel": 3, "blocks": 1},
    "pixelcnn-rgb-l2-k3-b1": {"arch": "pixelcnn", "image_channels": 3, "levels": 2, "first_kernel": 3, "kernel": 3,
                              "blocks": 1},
    "pixelcnn-k5-b3": {"arch": "pixelcnn", "kernel": 5, "blocks": 3},
    "pixelcnn-l4-k7x1-nonorm": {"arch": "pixelcnn", "levels": 4, "first_kernel": 7, "kernel": 1, "norm": "none"},
    "pixelcnn-rgb-l4-k3x5-b0-nonorm": {"arch": "pixelcnn", "image_channels": 3, "levels": 4, "first_kernel": 3,
                                       "kernel": 5, "blocks": 0, "norm": "none"},
    "pixelcnn-mixture-rgb-l8-nonorm": {"arch": "pixelcnn", "head": "logistic_mixture", "image_channels": 3,
                                       "levels": 8, "norm": "none"},
    "gated-l16-k5x5-b1-nonorm": {"arch": "gated", "levels": 16, "kernel": 5, "blocks": 1, "norm": "none"},
    "gated-rgb-k7": {"arch": "gated", "image_channels": 3, "first_kernel": 7},
    "gated-l2-cond": {"arch": "gated", "levels": 2, "conditional": True},
    "gated-mixture-rgb-l8-nonorm": {"arch": "gated", "head": "logistic_mixture", "image_channels": 3, "levels": 8,
                                    "norm": "none"},
    "gated-mixture-l2": {"arch": "gated", "head": "logistic_mixture", "levels": 2},
    "pixelcnnpp-7x9-r4-layers2": {"arch": "pixelcnnpp", "head": "logistic_mixture", "height": 7, "width": 9,
                                  "resolutions": 4, "resnet_layers": 2},
    "pixelcnnpp-rgb-r1": {"arch": "pixelcnnpp", "head": "logistic_mixture", "image_channels": 3, "resolutions": 1},
    "pixelcnnpp-softmax-l16-cond-nonorm": {"arch": "pixelcnnpp", "levels": 16, "conditional": True, "norm": "none"},
    "pixelcnnpp-elu-cond": {"arch": "pixelcnnpp", "head": "logistic_mixture", "activation": "elu", "conditional": True},
    "pixelcnnpp-elu-softmax-rgb-r2": {"arch": "pixelcnnpp", "activation": "elu", "image_channels": 3,
                                      "resolutions": 2},
    "pixelcnnpp-attention-cond": {"arch": "pixelcnnpp", "head": "logistic_mixture", "attention": True,
                                  "conditional": True},
    "pixelcnnpp-attention-softmax-rgb-r1": {"arch": "pixelcnnpp", "attention": True, "image_channels": 3,
                                            "resolutions": 1},
}
CASES = matrix_cases() | VARIANTS


def build(case: dict) -> torch.nn.Module:
    """The case's seeded random model in eval mode, float32, with sharpened outputs and class embeddings of size."""
    cfg = BASE | ARCH_BASE.get(case["arch"], {}) | {"head": "softmax"} | case
    cfg["n_classes"] = 3 if cfg.get("conditional") else 0
    if cfg["arch"] == "pixelcnnpp":
        torch.manual_seed(0)
        model = build_model(model_config(**cfg)).eval()
        with torch.no_grad():
            last = model.head_out
            weight = last.parametrizations.weight.original0 if hasattr(last, "parametrizations") else last.weight
            weight.mul_(SHARPEN)
    else:
        model = random_model(sharpen=SHARPEN, **cfg)  # also gives BatchNorm trained-looking statistics
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Embedding):
                m.weight.normal_(0, 1.0)  # class biases that matter
    return model


def inputs(model: torch.nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n seeded random images (uniform levels), and their labels (None for an unconditional model)."""
    cfg = model.config
    x = torch.randint(0, cfg.levels, (n, cfg.image_channels, cfg.height, cfg.width),
                      generator=torch.Generator().manual_seed(1))
    return x, (torch.arange(n) % cfg.n_classes if cfg.conditional else None)


def teacher_forced(monkeypatch, model, x, labels, *, start_row: int) -> torch.Tensor:
    """The parameters `sample_fast` reads at every sub-pixel from row start_row on, drawing x's own values.

    The distribution's `draw` is replaced by one that records its parameters and returns x's level, so the
    fast sampler's own loop (prefill, begin_row, output, write) runs over x.  Returns (sub-pixels, N, P'),
    raster then channel order.
    """
    n, c, h, w = x.shape
    forced = iter(x[:, :, start_row:].permute(2, 3, 1, 0).reshape(-1, n))  # (H' * W * C, N), in drawing order
    seen = []

    def draw(params, pixel, ch, u, temperature):
        seen.append(params.clone())
        return next(forced)

    with monkeypatch.context() as patch:
        patch.setattr(model.distribution, "draw", draw)
        images = sample_fast(model, torch.zeros(n, c, h, w, dtype=torch.float64), given=x, start_row=start_row,
                             labels=labels)  # the noise is never read
    assert torch.equal(images, x.to(torch.uint8))
    return torch.stack(seen)


def forward(model, x, labels) -> torch.Tensor:
    with torch.no_grad():
        return model(x) if labels is None else model(x, labels)


def test_architecture_lists_agree():
    """The config's Literal, build's registry and the fast sampler's registry name the same architectures."""
    configurable = set(get_args(get_type_hints(ModelParams)["arch"]))
    assert configurable == set(ARCHITECTURES)
    assert set(ARCHITECTURES.values()) == set(IMPLEMENTATIONS)


def test_cases_reach_every_architecture_and_head():
    reached = {(case["arch"], case["head"], case["image_channels"], case["conditional"])
               for case in matrix_cases().values()}
    assert reached == set(itertools.product(ARCHITECTURES, HEADS, (1, 3), (False, True)))


@pytest.mark.parametrize("start_row", [0, 2])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_teacher_forced_parameters_equal_the_forward_pass(monkeypatch, case, start_row):
    """At every sub-pixel, the parameters the fast sampler draws from equal the forward pass's, to ATOL."""
    model = build(case)
    dist, cfg = model.distribution, model.config
    x, labels = inputs(model, 3)
    got = teacher_forced(monkeypatch, model, x, labels, start_row=start_row)
    full = forward(model, x, labels)
    expected = torch.stack([dist.at(full, i, j, ch) for i in range(start_row, cfg.height) for j in range(cfg.width)
                            for ch in range(cfg.image_channels)])  # (H' * W * C, N, P'), the order of the draws
    assert full.abs().max() > 0.5  # parameters of a useful size, so that ATOL is a real bound
    if labels is not None:  # the class embeddings move the parameters far beyond ATOL
        assert (forward(model, x, labels.roll(1)) - full).abs().max() > 1e3 * ATOL
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


SAMPLINGS = {"n1": {"n": 1, "temperature": 1.0, "start_row": 0},
             "complete-n3-t0.7": {"n": 3, "temperature": 0.7, "start_row": 2}}


@pytest.mark.parametrize("sampling", SAMPLINGS.values(), ids=SAMPLINGS.keys())
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_fast_sampler_draws_the_naive_samplers_images(case, sampling):
    model = build(case)
    cfg = model.config
    n, start_row = sampling["n"], sampling["start_row"]
    given, labels = inputs(model, n)
    noise = sampling_noise(n, cfg.image_channels, cfg.height, cfg.width, seed=5)
    kwargs = {"temperature": sampling["temperature"], "given": given, "start_row": start_row, "labels": labels}
    fast = sample_fast(model, noise, **kwargs)
    assert fast.dtype == torch.uint8 and fast.shape == (n, cfg.image_channels, cfg.height, cfg.width)
    assert torch.equal(fast, sample_naive(model, noise, **kwargs))
    assert torch.equal(fast[:, :, :start_row], given[:, :, :start_row].to(torch.uint8))
    assert len(fast[:, :, start_row:].unique()) >= min(3, cfg.levels)  # not a degenerate image any sampler would match


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forms_refuse_a_model_in_train_mode_and_missing_labels(arch):
    model = build({"arch": arch, "conditional": True})
    with pytest.raises(ValueError, match="eval mode"):
        incremental(model.train(), 1, torch.tensor([0]))
    with pytest.raises(ValueError, match="needs labels"):
        incremental(model.eval(), 1)
