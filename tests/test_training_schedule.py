"""Time to quality: the learning-rate schedule, EMA weights, the wall-clock budget, and their config checks."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from pixelnet.config import TrainConfig
from pixelnet.data.processed import Split
from pixelnet.errors import ConfigError
from pixelnet.model.build import build_model
from pixelnet.schema import from_mapping
from pixelnet.training.loop import EMA, fit, lr_factor
from tests.conftest import model_config

CFG = model_config(channels=8, blocks=1, first_kernel=3, kernel=3, levels=4, height=6, width=6)


def split(n: int, seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 4, (n, 1, 6, 6), generator=gen, dtype=torch.uint8)
    x[:, :, :3, :3] = 3
    return Split(x, torch.arange(n) % 2)


def run(cfg: TrainConfig, *, conditional: bool = False):
    torch.manual_seed(1)
    model = build_model(CFG if not conditional else replace(CFG, conditional=True, n_classes=2))
    history = fit(model, split(32, 0), split(8, 1), cfg, device=torch.device("cpu"))
    return model, history


def test_warmup_then_cosine_to_zero():
    f = [lr_factor(s, 100, schedule="cosine", warmup_steps=10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:10]))  # rising during the warmup
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # then falling
    assert f[55] == pytest.approx(0.5, abs=0.02) and f[99] < 0.001
    assert lr_factor(0, 100, schedule="cosine", warmup_steps=0) == 1.0
    assert [lr_factor(s, 100, schedule="constant", warmup_steps=4) for s in (0, 3, 50, 99)] == [0.25, 1.0, 1.0, 1.0]


def test_exponential_decays_every_step_after_the_warmup():
    f = [lr_factor(s, 100, schedule="exponential", warmup_steps=2, decay=0.9) for s in range(6)]
    assert f == pytest.approx([0.5, 1.0, 1.0, 0.9, 0.81, 0.729])
    _, history = run(TrainConfig(epochs=2, batch_size=8, lr=0.01, warmup_fraction=0.0, lr_schedule="exponential",
                                 lr_decay=0.5))  # 8 steps; the lr recorded is step 3's and step 7's
    assert [r.lr for r in history] == pytest.approx([0.01 * 0.5 ** 3, 0.01 * 0.5 ** 7])


def test_fit_follows_the_schedule():
    _, history = run(TrainConfig(epochs=4, batch_size=8, lr=0.01, warmup_fraction=0.25))  # 16 steps, warmup 4
    lrs = [r.lr for r in history]  # of steps 3, 7, 11, 15
    cosine = [0.01 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 12)) for s in (7, 11, 15)]
    assert lrs == pytest.approx([0.01] + cosine)


def test_ema_averages_every_float_and_copies_counters(monkeypatch):
    model = torch.nn.BatchNorm1d(2)
    ema = EMA(model, decay=0.5)
    monkeypatch.setattr(model, "state_dict", None)  # it reads the model's own tensors, not a state_dict a step
    with torch.no_grad():
        model.weight.fill_(3.0)
    model.train()(torch.randn(4, 2))  # running stats and num_batches_tracked move
    ema.update()  # first update: decay min(0.5, 2/11) = 2/11
    d = 2 / 11
    assert torch.allclose(ema.shadow["weight"], torch.full((2,), d * 1.0 + (1 - d) * 3.0))
    assert torch.allclose(ema.shadow["running_mean"], (1 - d) * model.running_mean)
    assert ema.shadow["num_batches_tracked"] == 1


def test_ema_weights_are_what_fit_returns_and_repeat_exactly():
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.01, ema_decay=0.9)
    a, ha = run(cfg)
    b, hb = run(cfg)
    raw, _ = run(TrainConfig(epochs=2, batch_size=8, lr=0.01, ema_decay=0.0))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert [r.val_bpd for r in ha] == [r.val_bpd for r in hb]
    assert not torch.equal(a.input_conv.weight, raw.input_conv.weight)  # the averaged weights, not the last ones
    assert ha[-1].val_bpd < 2.0  # better than uniform over 4 levels


def test_a_budget_that_binds_stops_between_epochs_and_one_that_does_not_changes_nothing():
    base = TrainConfig(epochs=3, batch_size=8, lr=0.01)
    _, stopped = run(TrainConfig(**{**base.__dict__, "max_minutes": 1e-6}))
    assert len(stopped) == 1  # checked after epoch 1: the next would end past the budget
    free, h_free = run(TrainConfig(**{**base.__dict__, "max_minutes": 60.0}))
    none, h_none = run(base)
    assert len(h_free) == 3
    assert all(torch.equal(x, y) for x, y in zip(free.state_dict().values(), none.state_dict().values()))


def test_conditional_models_get_their_labels():
    model, history = run(TrainConfig(epochs=3, batch_size=8, lr=0.01), conditional=True)
    torch.manual_seed(1)
    untrained = build_model(model.config)
    assert not torch.equal(model.embed.weight, untrained.embed.weight)  # the class embedding was trained
    assert history[-1].val_bpd < 2.0


@pytest.mark.parametrize("mapping, match", [
    ({"ema_decay": 1.0}, "train.ema_decay must be in"),
    ({"max_minutes": 0}, "train.max_minutes must be > 0"),
    ({"warmup_fraction": 1.5}, "train.warmup_fraction must be in"),
    ({"lr_schedule": "linear"}, "train.lr_schedule must be one of"),
    ({"compile": "yes"}, "train.compile must be true or false"),
])
def test_bad_train_params_are_rejected(mapping, match):
    with pytest.raises(ConfigError, match=match):
        from_mapping(TrainConfig, mapping, section="train")
