"""Gated PixelCNN: receptive fields from gradients (no blind spot), causality, conditioning."""

from __future__ import annotations

import pytest
import torch

from pixelnet.model import ModelConfig, build_model


def make(arch: str, **overrides) -> torch.nn.Module:
    cfg = ModelConfig(**{"arch": arch, "channels": 12, "blocks": 6, "first_kernel": 7, "kernel": 3, "levels": 4,
                         "image_channels": 1, "height": 8, "width": 8, **overrides})
    torch.manual_seed(0)
    model = build_model(cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def input_gradient(model, i: int, j: int, *, channels: int = 1) -> torch.Tensor:
    """|d sum(logits at (i, j)) / d input|, summed over channels: (H, W)."""
    x = torch.randint(0, 4, (1, channels, 8, 8)).float().requires_grad_(True)
    model(x)[0, :, :, i, j].sum().backward()
    return x.grad[0].abs().sum(dim=0)


def earlier(i: int, j: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    return (rows < i) | ((rows == i) & (cols < j))


@pytest.mark.parametrize("i, j", [(4, 4), (7, 0), (3, 7), (7, 7), (0, 5)])
def test_gated_sees_every_earlier_pixel_and_no_later_one(i, j):
    grad = input_gradient(make("gated"), i, j)
    before = earlier(i, j)
    assert (grad[before] > 0).all(), f"blind pixels at {before.logical_and(grad == 0).nonzero().tolist()}"
    assert (grad[~before] == 0).all()


def test_pixelcnn_has_the_blind_spot():
    """Documented, not fixed: the plain stack misses a wedge above and to the right."""
    model = make("pixelcnn", first_kernel=3)
    i, j = 5, 3
    grad = input_gradient(model, i, j)
    before = earlier(i, j)
    assert (grad[~before] == 0).all()
    blind = before & (grad == 0)
    assert blind.any()
    assert all(r < i and c > j for r, c in blind.nonzero().tolist())  # only up and to the right
    assert bool(blind[i - 1, 7])  # e.g. the end of the row above


@pytest.mark.parametrize("arch", ["pixelcnn", "gated"])
@pytest.mark.parametrize("image_channels", [1, 3])
def test_subpixel_causality(arch, image_channels):
    model = make(arch, image_channels=image_channels, blocks=2, height=4, width=4, channels=24)
    c_n, h, w = image_channels, 4, 4
    x = torch.randint(0, 4, (1, c_n, h, w), generator=torch.Generator().manual_seed(2))
    order = torch.arange(h * w * c_n).view(h, w, c_n).permute(2, 0, 1)  # raster index of each sub-pixel
    with torch.no_grad():
        base = model(x)[0]
        for idx in range(h * w * c_n):
            i, j, c = idx // (w * c_n), (idx // c_n) % w, idx % c_n
            y = x.clone()
            y[0, c, i, j] = (x[0, c, i, j] + 2) % 4
            diff = (model(y)[0] - base).abs().amax(dim=0)
            assert diff[order <= idx].max() == 0, (arch, i, j, c)
            if idx < h * w * c_n - 1:
                assert diff[order == idx + 1].max() > 0, (arch, i, j, c)


@pytest.mark.parametrize("arch", ["pixelcnn", "gated"])
def test_label_changes_logits_only_when_conditional(arch):
    x = torch.randint(0, 4, (2, 1, 8, 8))
    cond = make(arch, conditional=True, n_classes=10)
    with torch.no_grad():
        assert not torch.allclose(cond(x, torch.tensor([3, 3])), cond(x, torch.tensor([5, 5])))
        plain = make(arch)
        assert torch.equal(plain(x, torch.tensor([3, 3])), plain(x))


def test_conditional_needs_classes():
    from pixelnet.errors import ConfigError

    with pytest.raises(ConfigError, match="model.conditional"):
        ModelConfig(conditional=True, n_classes=1)
