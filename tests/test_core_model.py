"""The model's autoregressive property (causality), shapes, and config checking."""

from __future__ import annotations

import json

import pytest
import torch

from pixelnet.errors import ConfigError
from pixelnet.model import ModelConfig
from pixelnet.model.masks import conv_mask
from tests.conftest import model_config, random_model


@pytest.mark.parametrize("image_channels", [1, 3])
def test_causality_every_subpixel(image_channels):
    """Changing sub-pixel (i, j, c) never changes an earlier logit, and changes some later one."""
    model = random_model(image_channels=image_channels)
    levels, c_n, h, w = 4, image_channels, 5, 5
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, levels, (1, c_n, h, w), generator=gen)
    with torch.no_grad():
        base = model(x)[0]  # (levels, C, H, W)
        for i in range(h):
            for j in range(w):
                for c in range(c_n):
                    y = x.clone()
                    y[0, c, i, j] = (x[0, c, i, j] + 1) % levels
                    diff = (model(y)[0] - base).abs().amax(dim=0)  # (C, H, W)
                    order = torch.arange(h * w * c_n).view(h, w, c_n).permute(2, 0, 1)  # raster index
                    me = (i * w + j) * c_n + c
                    assert diff[order <= me].max() == 0, f"sub-pixel ({i},{j},{c}) leaks into an earlier logit"
                    if me < h * w * c_n - 1:
                        assert diff[order > me].max() > 0, f"sub-pixel ({i},{j},{c}) influences nothing later"


def test_output_shape_and_dtype():
    model = random_model(image_channels=3, levels=7)
    x = torch.randint(0, 7, (2, 3, 5, 5))
    assert model(x).shape == (2, 7, 3, 5, 5)


def test_mask_centre_taps():
    a = conv_mask(mask_type="A", in_channels=3, out_channels=3, kernel_size=3, groups=3)
    b = conv_mask(mask_type="B", in_channels=3, out_channels=3, kernel_size=3, groups=3)
    assert a[:, :, 1, 1].tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0]]
    assert b[:, :, 1, 1].tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert a[:, :, 2].sum() == 0 and a[:, :, 1, 2].sum() == 0  # nothing below or to the right


@pytest.mark.parametrize(
    "mapping, match",
    [
        ({"chanels": 8}, "unknown parameter model.chanels"),
        ({"kernel": 4}, "model.kernel must be an odd integer"),
        ({"first_kernel": 2}, "model.first_kernel must be an odd integer"),
        ({"channels": "64"}, "model.channels must be an integer"),
        ({"blocks": -1}, "model.blocks must be >= 0"),
        ({"norm": "layer"}, "model.norm must be one of"),
        ({"levels": 1}, "model.levels must be between 2 and 256"),
    ],
)
def test_model_config_rejects_bad_values(mapping, match):
    with pytest.raises(ConfigError, match=match):
        model_config().replace(**mapping)


@pytest.mark.parametrize("overrides", [
    {},
    {"arch": "gated", "norm": "none", "conditional": True, "n_classes": 3, "image_channels": 3, "levels": 256},
    {"arch": "pixelcnnpp", "head": "logistic_mixture", "mixtures": 5, "norm": "weight", "dropout": 0.5,
     "resnet_layers": 2, "resolutions": 2, "channels": 16, "image_channels": 3, "levels": 256},
])
def test_model_config_reads_back_equal_from_its_json_form(overrides):
    """A checkpoint stores its config as plain data: what it reads back must be the same config, every field."""
    cfg = model_config(**overrides)
    assert ModelConfig.from_mapping(json.loads(json.dumps(cfg.model_dump()))) == cfg
