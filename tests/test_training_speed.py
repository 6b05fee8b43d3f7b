"""The throughput changes compute what the plain versions compute: cropped masked kernels, channels-last, the loss on rows."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from pixelnet.model.build import build_model
from pixelnet.model.layers import MaskedConv2d
from pixelnet.model.likelihood import mean_nll_nats, nll_nats
from tests.conftest import model_config


@pytest.mark.parametrize("kernel, mask_type, groups", [(3, "B", 1), (5, "A", 1), (7, "A", 3), (3, "B", 3), (1, "B", 3)])
def test_cropped_masked_conv_equals_the_full_masked_conv(kernel, mask_type, groups):
    torch.manual_seed(0)
    conv = MaskedConv2d(6, 9, kernel_size=kernel, mask_type=mask_type, groups=groups)
    x = torch.randn(2, 6, 7, 5)
    full = F.conv2d(x, conv.masked_weight(), conv.bias, padding=kernel // 2)
    assert torch.allclose(conv(x), full, atol=1e-5)
    x.requires_grad_(True)
    conv(x).square().sum().backward()
    g_crop, w_crop = x.grad.clone(), conv.weight.grad.clone()
    x.grad, conv.weight.grad = None, None
    F.conv2d(x, conv.masked_weight(), conv.bias, padding=kernel // 2).square().sum().backward()
    assert torch.allclose(g_crop, x.grad, atol=1e-4) and torch.allclose(w_crop, conv.weight.grad, atol=1e-4)
    assert conv.weight.grad[conv.mask == 0].abs().max() == 0  # masked taps never learn


@pytest.mark.parametrize("image_channels", [1, 3])
def test_activations_are_channels_last_and_the_layout_does_not_change_the_logits(image_channels):
    torch.manual_seed(0)
    model = build_model(model_config(channels=12, blocks=2, levels=5, image_channels=image_channels,
                                    height=6, width=6)).eval()
    x = torch.randint(0, 5, (3, image_channels, 6, 6))
    seen = []
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.is_contiguous(memory_format=torch.channels_last)))
    logits = model(x)
    model.memory_format = torch.contiguous_format
    assert seen == [True] and torch.allclose(model(x), logits, atol=1e-5)


@pytest.mark.parametrize("image_channels", [1, 3])
def test_pixelcnnpp_memory_format_sets_its_activations_layout_and_does_not_change_its_output(image_channels):
    torch.manual_seed(0)
    model = build_model(model_config(arch="pixelcnnpp", norm="weight", head="logistic_mixture", channels=8, levels=5,
                                     image_channels=image_channels, height=6, width=7)).eval()
    x = torch.randint(0, 5, (3, image_channels, 6, 7))
    seen = []
    model.up[0][0][0].register_forward_hook(lambda m, i, o: seen.append(o.is_contiguous(memory_format=torch.channels_last)))
    out = model(x)  # NCHW, the measured faster layout for this architecture
    model.memory_format = torch.channels_last
    assert torch.allclose(model(x), out, atol=1e-5)
    assert seen == [False, True]


@pytest.mark.parametrize("channels_last", [True, False])
def test_loss_on_rows_equals_cross_entropy_on_the_logits_as_shaped(channels_last):
    torch.manual_seed(0)
    model = build_model(model_config(channels=12, blocks=1, levels=7, image_channels=3, height=5, width=4))
    if not channels_last:
        model.memory_format = torch.contiguous_format
    x = torch.randint(0, 7, (2, 3, 5, 4))
    logits = model(x)
    assert torch.allclose(mean_nll_nats(model.distribution, logits, x), F.cross_entropy(logits, x), atol=1e-6)
    assert torch.allclose(nll_nats(model.distribution, logits, x), F.cross_entropy(logits, x, reduction="sum"), rtol=1e-6)
