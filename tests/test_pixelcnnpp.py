"""PixelCNN++: the odd-size rule, causality over sub-pixels, no blind spot, dropout, conditioning."""

from __future__ import annotations


import pytest
import torch

from pixelnet.errors import ConfigError
from pixelnet.config import defaults
from pixelnet.model import ModelConfig
from pixelnet.model.build import build_model
from tests.conftest import model_config


def make(*, head: str = "logistic_mixture", sharpen: float = 1.0, **overrides) -> torch.nn.Module:
    """A seeded random PixelCNN++ in eval mode: 8 filters, 1 layer a block, 3 levels, unless overridden."""
    base = {"arch": "pixelcnnpp", "channels": 8, "resnet_layers": 1, "resolutions": 3, "norm": "weight",
            "head": head, "mixtures": 3, "levels": 16, "height": 6, "width": 6}
    torch.manual_seed(0)
    model = build_model(model_config(**(base | overrides)))
    with torch.no_grad():  # sharper random outputs, so that every one of them matters to a sampler comparison
        out = model.head_out
        weight = out.parametrizations.weight.original0 if hasattr(out, "parametrizations") else out.weight
        weight.mul_(sharpen)
    return model.eval()


def raster_order(c: int, h: int, w: int) -> torch.Tensor:
    """The generation index of each sub-pixel, (C, H, W): rows, then columns, then channels."""
    return torch.arange(h * w * c).view(h, w, c).permute(2, 0, 1)


def test_levels_halve_rounding_up_and_any_size_runs():
    assert make(height=28, width=28).sizes() == [(28, 28), (14, 14), (7, 7)]
    model = make(height=7, width=9, resolutions=4)
    assert model.sizes() == [(7, 9), (4, 5), (2, 3), (1, 2)]
    x = torch.randint(0, 16, (2, 1, 7, 9))
    assert model(x).shape == (2, 3 * 3, 7, 9)  # 3 components of (logit, mean, log-scale) a pixel
    assert make(resolutions=1, height=5, width=3)(torch.zeros(1, 1, 5, 3, dtype=torch.long)).shape == (1, 9, 5, 3)


@pytest.mark.parametrize("variant", [{}, {"activation": "elu"}, {"attention": True}], ids=["concat_elu", "elu",
                                                                                     "attention"])
@pytest.mark.parametrize("head", ["logistic_mixture", "softmax"])
@pytest.mark.parametrize("image_channels, size", [(1, (5, 6)), (3, (4, 5))])
def test_causal_over_sub_pixels(head, image_channels, size, variant):
    """Changing a sub-pixel changes no output for it or any earlier sub-pixel: a mixture's at its pixel
    or earlier ones, a softmax's logits at its sub-pixel or earlier ones.  It does change the next one's."""
    h, w = size
    c = image_channels
    model = make(head=head, image_channels=c, height=h, width=w, channels=12, **variant)
    if variant.get("attention"):
        with torch.no_grad():  # the attention's position embeddings start at zero: make them matter
            model.attention.position.normal_()
    x = torch.randint(0, 16, (1, c, h, w), generator=torch.Generator().manual_seed(1))
    order = raster_order(c, h, w)
    with torch.no_grad():
        base = model(x)[0]
        for idx in range(c * h * w):
            ch, i, j = (order == idx).nonzero()[0].tolist()
            y = x.clone()
            y[0, ch, i, j] = (x[0, ch, i, j] + 5) % 16
            diff = (model(y)[0] - base).abs().amax(dim=0)  # softmax: (C, H, W); mixture: (H, W)
            if head == "softmax":
                assert diff[order <= idx].max() == 0, (i, j, ch)
                if idx + 1 < c * h * w:
                    assert diff[order == idx + 1].max() > 0, (i, j, ch)
            else:  # a pixel's mixture sees none of the pixel: only later pixels may change
                pixel_order = order[0] // c
                assert diff[pixel_order <= pixel_order[i, j]].max() == 0, (i, j, ch)
                if j + 1 < w:
                    assert diff[i, j + 1] > 0, (i, j, ch)


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("image_channels", [1, 3])
@pytest.mark.parametrize("i, j", [(7, 7), (4, 3), (7, 0), (0, 7), (5, 6)])
def test_no_blind_spot_every_earlier_pixel_reaches_the_output(image_channels, i, j, attention):
    """Input gradients of a pixel's outputs are non-zero at every earlier pixel and zero at it and after."""
    model = make(image_channels=image_channels, height=8, width=8, resnet_layers=2, attention=attention)
    x = torch.randint(0, 16, (1, image_channels, 8, 8), generator=torch.Generator().manual_seed(3)).float()
    x.requires_grad_(True)
    model(x)[0, :, i, j].sum().backward()
    grad = x.grad[0].abs().sum(dim=0)
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    before = (rows < i) | ((rows == i) & (cols < j))
    assert (grad[before] > 0).all(), f"blind pixels at {(before & (grad == 0)).nonzero().tolist()}"
    assert (grad[~before] == 0).all()


def test_dropout_is_on_in_training_and_off_in_eval():
    model = make(dropout=0.5, height=6, width=6)
    x = torch.randint(0, 16, (2, 1, 6, 6))
    without = build_model(model.config.replace(dropout=0.0))
    without.load_state_dict(model.state_dict())
    with torch.no_grad():
        model.eval(), without.eval()
        assert torch.equal(model(x), model(x))
        assert torch.allclose(model(x), without(x), atol=0, rtol=0)
        model.train()
        torch.manual_seed(1)
        first = model(x)
        assert not torch.allclose(first, model(x))  # two draws of the dropout mask
        assert not torch.allclose(first, without.eval()(x))


def test_label_changes_the_outputs_only_when_conditional():
    x = torch.randint(0, 16, (2, 1, 6, 6))
    cond = make(conditional=True, n_classes=3)
    with torch.no_grad():
        assert not torch.allclose(cond(x, torch.tensor([0, 0])), cond(x, torch.tensor([1, 2])))
        plain = make()
        assert torch.equal(plain(x), plain(x, torch.tensor([1, 2])))


def test_head_and_norm_follow_the_architecture():
    data = {"levels": 256, "image_channels": 1, "height": 28, "width": 28, "n_classes": 10}
    pp = ModelConfig.for_data(defaults().model.replace(arch="pixelcnnpp", head="auto"), **data)
    assert (pp.head, pp.norm) == ("logistic_mixture", "weight")
    plain = ModelConfig.for_data(defaults().model.replace(arch="gated"), **data)
    assert (plain.head, plain.norm) == ("softmax", "batch")
    pp_softmax = defaults().model.replace(arch="pixelcnnpp", head="softmax", norm="none")
    assert ModelConfig.for_data(pp_softmax, **data).head == "softmax"


@pytest.mark.parametrize("params, message", [
    ({"arch": "pixelcnnpp", "norm": "batch"}, "model.norm"),
    ({"arch": "pixelcnn", "norm": "weight"}, "model.norm"),
    ({"arch": "pixelcnnpp", "dropout": 1.0}, "model.dropout"),
    ({"arch": "pixelcnnpp", "resolutions": 0}, "model.resolutions"),
    ({"arch": "pixelcnnpp", "resnet_layers": 0}, "model.resnet_layers"),
    ({"arch": "pixelcnnpp", "init": "data", "norm": "none"}, "model.init"),
    ({"arch": "pixelcnn", "init": "data"}, "model.init is for arch pixelcnnpp"),
    ({"arch": "gated", "activation": "elu"}, "model.activation is for arch pixelcnnpp"),
])
def test_bad_pixelcnnpp_params_are_config_errors(params, message):
    with pytest.raises(ConfigError, match=message):
        defaults().model.replace(**params)


def test_levels_wire_each_layer_down_to_its_mirror_up():
    """The paper's U-Net at 1 layer a block and 3 levels: each down layer reads the map made at the mirror
    position up the network, last made first read, every map but the last (where the pass down starts) once."""
    model = make()
    levels = model.resolution_levels()
    assert [level.size for level in levels] == [(6, 6), (3, 3), (2, 2)]
    assert [level.makes for level in levels] == [(0, 1), (2, 3), (4, 5)]
    assert [level.reads for level in levels] == [(1, 0), (3, 2), (4,)]
    assert [len(level.u.down) for level in levels] == [2, 2, 1]  # one layer a read
    coarsest = levels[2]  # the pass down's first block, entered by no transposed conv, left by the first
    assert coarsest.ul.down == [model.down[0][0][1]] and coarsest.u.downsize is coarsest.u.upsize is None
    assert levels[1].u.upsize is model.upsize[0][0] and levels[1].ul.downsize is model.downsize[1][1]


def test_elu_halves_the_gated_layers_conv_inputs():
    """model.activation: elu feeds the convs F channels where concat_elu feeds them 2F."""
    for activation, widen in (("concat_elu", 2), ("elu", 1)):
        layer = make(activation=activation).resolution_levels()[0].ul.up[0]  # level 0's first ul layer (one short-cut)
        assert layer.conv_in.conv.in_channels == widen * 8 and layer.conv_out.conv.in_channels == widen * 8
        assert layer.nin_skip.in_channels == widen * 8


@pytest.mark.parametrize("conditional", [False, True])
def test_data_init_standardizes_every_weight_normalized_conv_on_its_batch(conditional):
    """openai's data-dependent init: after it, each conv's outputs on the init batch have mean 0 and std 1
    (0.1 for the gated layers' second conv), and the network computes a function of the same form."""
    model = make(height=8, width=8, resnet_layers=2, conditional=conditional, n_classes=3 if conditional else 0,
                 attention=True).train()
    x = torch.randint(0, 16, (32, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(32) % 3 if conditional else None
    model.data_init(x, labels)
    outputs = {}
    hooks = [m.register_forward_hook(lambda m, i, y, name=name: outputs.__setitem__(name, y))
             for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.no_grad():
        model(x, labels)
    for hook in hooks:
        hook.remove()
    assert len(outputs) > 20
    for name, y in outputs.items():
        target = 0.1 if name.endswith(("conv_out.conv", "attention.out")) else 1.0
        assert y.mean(dim=(0, 2, 3)).abs().max() < 1e-4 * max(1, target), name
        assert torch.allclose(y.std(dim=(0, 2, 3)), torch.full((y.shape[1],), target), rtol=1e-3), name
