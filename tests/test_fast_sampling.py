"""The cached sampler is exact: same images as the naive sampler, same logits as a full forward pass."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pixelnet.checkpoint import save_checkpoint
from pixelnet.sampling import sample_naive, sampling_noise
from pixelnet.sampling.fast import incremental, sample_fast
from tests.conftest import random_model as conftest_random_model
from tests.conftest import write_params

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def random_model(**overrides) -> torch.nn.Module:
    return conftest_random_model(sharpen=8.0, **{"width": 6, **overrides})


CASES = {
    "gray-l2-k3-b1-n1": dict(levels=2, first_kernel=3, kernel=3, blocks=1, n=1),
    "gray-l256-k5-b3-n4": dict(levels=256, first_kernel=5, kernel=5, blocks=3, n=4),
    "gray-l4-k7x1-b2-n3-nonorm": dict(levels=4, first_kernel=7, kernel=1, blocks=2, norm="none", n=3),
    "rgb-l2-k3-b1-n1": dict(image_channels=3, levels=2, first_kernel=3, kernel=3, blocks=1, n=1),
    "rgb-l256-k5x3-b2-n3": dict(image_channels=3, levels=256, first_kernel=5, kernel=3, blocks=2, n=3),
    "rgb-l4-k3x5-b0-n2-nonorm": dict(image_channels=3, levels=4, first_kernel=3, kernel=5, blocks=0, norm="none", n=2),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_fast_equals_naive_image_for_image(case):
    case = dict(case)
    n = case.pop("n")
    model = random_model(**case)
    cfg = model.config
    noise = sampling_noise(n, cfg.image_channels, cfg.height, cfg.width, seed=7)
    naive = sample_naive(model, noise, temperature=0.9)
    fast = sample_fast(model, noise, temperature=0.9)
    assert fast.dtype == torch.uint8 and fast.shape == (n, cfg.image_channels, cfg.height, cfg.width)
    assert torch.equal(fast, naive)
    assert len(torch.unique(fast)) > 1  # not a degenerate constant image that any sampler would match


@pytest.mark.parametrize("case", ["gray-l256-k5-b3-n4", "rgb-l256-k5x3-b2-n3"])
@pytest.mark.parametrize("start_row", [0, 2])
def test_sampling_logits_match_full_forward(monkeypatch, case, start_row):
    """Every logit the fast sampler draws from equals the full forward pass on the final images, to 1e-4."""
    case = dict(CASES[case])
    n = case.pop("n")
    model = random_model(**case)
    cfg = model.config
    seen = []
    real_level_logits = model.distribution.level_logits

    def recording_level_logits(params, pixel, ch, temperature):
        seen.append(params.clone())  # what the draw of this sub-pixel reads: its (N, levels) logits
        return real_level_logits(params, pixel, ch, temperature)

    monkeypatch.setattr(model.distribution, "level_logits", recording_level_logits)
    given = torch.randint(0, cfg.levels, (n, cfg.image_channels, cfg.height, cfg.width), generator=torch.Generator().manual_seed(3))
    images = sample_fast(model, sampling_noise(n, cfg.image_channels, cfg.height, cfg.width, seed=1),
                         given=given, start_row=start_row)
    with torch.no_grad():
        full = model(images.long())  # (N, levels, C, H, W)
    # The draws come in raster order, channel by channel, from row start_row on.
    expected = full[:, :, :, start_row:].permute(3, 4, 2, 0, 1).reshape(-1, n, cfg.levels)  # (H' * W * C, N, levels)
    got = torch.stack(seen)
    assert got.shape == expected.shape
    assert full.abs().max() > 1.0  # logits of a useful size, so that 1e-4 is a real bound
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def teacher_forced_logits(model, x, labels=None):
    """Drive the incremental form with the given images x (N, C, H, W); its logits (N, levels, C, H, W)."""
    n, c, h, w = x.shape
    form = incremental(model, n, labels)
    got = torch.empty(n, model.config.levels, c, h, w)
    with torch.no_grad():
        form.prefill(x[:, :, :0])
        for i in range(h):
            form.begin_row(i)
            for j in range(w):
                for ch in range(c):
                    got[:, :, ch, i, j] = form.output(i, j, ch)
                    form.write(i, j, ch, x[:, ch, i, j])
    return got


def test_teacher_forced_logits_match_on_random_images():
    """Driving the incremental form with arbitrary images (every level present) gives the full forward's logits."""
    model = random_model(image_channels=3, levels=16, first_kernel=3, kernel=3, blocks=2)
    x = torch.randint(0, 16, (5, 3, 5, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(teacher_forced_logits(model, x), model(x), rtol=0, atol=1e-4)


def test_conditional_logits_match_full_forward_per_label():
    model = random_model(image_channels=3, levels=8, blocks=2, conditional=True, n_classes=3)
    with torch.no_grad():
        model.embed.weight.normal_(0, 1.0)  # class biases that matter
        x = torch.randint(0, 8, (4, 3, 5, 6), generator=torch.Generator().manual_seed(0))
        labels = torch.tensor([0, 2, 1, 2])
        full = model(x, labels)
        assert (full - model(x, torch.tensor([1, 0, 2, 0]))).abs().max() > 0.1
        torch.testing.assert_close(teacher_forced_logits(model, x, labels), full, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="needs labels"):
        sample_fast(model, sampling_noise(1, 3, 5, 6, seed=0))


def test_models_without_a_fast_form_or_in_train_mode_are_refused():
    model = random_model()
    with pytest.raises(ValueError, match="eval mode"):
        sample_fast(model.train(), sampling_noise(1, 1, 5, 6, seed=0))

    class Other(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    with pytest.raises(ValueError, match="no fast sampler for Other"):
        sample_fast(Other(), sampling_noise(1, 1, 5, 6, seed=0))


def test_every_architecture_has_an_incremental_form():
    """The sample and complete stages have no fallback for a model without one: a new architecture needs one."""
    from pixelnet.model.build import ARCHITECTURES
    from pixelnet.sampling.fast import IMPLEMENTATIONS

    assert [arch for arch, cls in ARCHITECTURES.items() if cls not in IMPLEMENTATIONS] == []


def tiny_checkpoint(tmp_path):
    model = random_model(levels=4, first_kernel=3, kernel=3, blocks=1)
    save_checkpoint(model, model.config, tmp_path / "model.pt")
    params = tmp_path / "params.yaml"
    write_params(params, "sample: {n: 3, temperature: 1.0, seed: 5}\n")
    return model, params


def test_cli_sample_uses_the_fast_method_by_default(tmp_path, run_cli):
    model, params = tiny_checkpoint(tmp_path)
    result = run_cli("sample", "--model", tmp_path / "model.pt", "--out", tmp_path / "fast", "--params", params)
    assert result.code == 0, result.err
    info = json.loads((tmp_path / "fast" / "sample.json").read_text())
    assert info["method"] == "fast"
    expected = sample_naive(model, sampling_noise(3, 1, 5, 6, seed=5))
    assert np.array_equal(np.load(tmp_path / "fast" / "samples.npy"), expected.numpy())


def test_cli_sample_naive_method_gives_the_same_images(tmp_path, run_cli):
    _, params = tiny_checkpoint(tmp_path)
    for method, flag in (("naive", ["--method", "naive"]), ("fast", ["-S", "sample.method=fast"])):
        result = run_cli("sample", "--model", tmp_path / "model.pt", "--out", tmp_path / method, "--params", params, *flag)
        assert result.code == 0, result.err
        assert json.loads((tmp_path / method / "sample.json").read_text())["method"] == method
    assert np.array_equal(np.load(tmp_path / "naive" / "samples.npy"), np.load(tmp_path / "fast" / "samples.npy"))
