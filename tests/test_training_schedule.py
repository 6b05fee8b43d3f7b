"""Time to quality: the learning-rate schedule, the optimizers, augmentation, EMA weights, the wall-clock budget, and their config checks."""

from __future__ import annotations

import math

import pytest
import torch

from pixelnet.config import TrainConfig, defaults
from pixelnet.data.processed import Split
from pixelnet.errors import ConfigError
from pixelnet.model.build import build_model
from pixelnet.training.loop import EMA, TrainStep, fit, lr_factor, shifted
from tests.conftest import model_config

CFG = model_config(channels=8, blocks=1, first_kernel=3, kernel=3, levels=4, height=6, width=6)
TRAIN = defaults().train  # params.yaml's


def split(n: int, seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 4, (n, 1, 6, 6), generator=gen, dtype=torch.uint8)
    x[:, :, :3, :3] = 3
    return Split(x, torch.arange(n) % 2)


def run(cfg: TrainConfig, *, conditional: bool = False):
    torch.manual_seed(1)
    model = build_model(CFG if not conditional else CFG.replace(conditional=True, n_classes=2))
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


def test_warmup_then_linear_to_zero():
    f = [lr_factor(s, 100, schedule="linear", warmup_steps=10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == 1.0
    assert f[55] == pytest.approx(0.5) and f[99] == pytest.approx(1 / 90)
    assert all(a - b == pytest.approx(1 / 90) for a, b in zip(f[10:], f[11:]))  # a straight line down


def test_exponential_decays_every_step_after_the_warmup():
    f = [lr_factor(s, 100, schedule="exponential", warmup_steps=2, decay=0.9) for s in range(6)]
    assert f == pytest.approx([0.5, 1.0, 1.0, 0.9, 0.81, 0.729])
    _, history = run(TRAIN.replace(epochs=2, batch_size=8, lr=0.01, warmup_fraction=0.0, lr_schedule="exponential",
                                   lr_decay=0.5))  # 8 steps; the lr recorded is step 3's and step 7's
    assert [r.lr for r in history] == pytest.approx([0.01 * 0.5 ** 3, 0.01 * 0.5 ** 7])


def test_fit_follows_the_schedule():
    _, history = run(TRAIN.replace(epochs=4, batch_size=8, lr=0.01, warmup_fraction=0.25))  # 16 steps, warmup 4
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
    cfg = TRAIN.replace(epochs=2, batch_size=8, lr=0.01, ema_decay=0.9)
    a, ha = run(cfg)
    b, hb = run(cfg)
    raw, _ = run(TRAIN.replace(epochs=2, batch_size=8, lr=0.01, ema_decay=0.0))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert [r.val_bpd for r in ha] == [r.val_bpd for r in hb]
    assert not torch.equal(a.input_conv.weight, raw.input_conv.weight)  # the averaged weights, not the last ones
    assert ha[-1].val_bpd < 2.0  # better than uniform over 4 levels


def test_a_budget_that_binds_stops_between_epochs_and_one_that_does_not_changes_nothing():
    base = TRAIN.replace(epochs=3, batch_size=8, lr=0.01)
    _, stopped = run(base.replace(max_minutes=1e-6))
    assert len(stopped) == 1  # checked after epoch 1: the next would end past the budget
    free, h_free = run(base.replace(max_minutes=60.0))
    none, h_none = run(base)
    assert len(h_free) == 3
    assert all(torch.equal(x, y) for x, y in zip(free.state_dict().values(), none.state_dict().values()))


def test_conditional_models_get_their_labels():
    model, history = run(TRAIN.replace(epochs=3, batch_size=8, lr=0.05), conditional=True)  # Muon: a toy's lr (test_core_training)
    torch.manual_seed(1)
    untrained = build_model(model.config)
    assert not torch.equal(model.embed.weight, untrained.embed.weight)  # the class embedding was trained
    assert history[-1].val_bpd < 2.0


@pytest.mark.parametrize("mapping, match", [
    ({"ema_decay": 1.0}, "train.ema_decay must be in"),
    ({"max_minutes": 0}, "train.max_minutes must be > 0"),
    ({"warmup_fraction": 1.5}, "train.warmup_fraction must be in"),
    ({"lr_schedule": "step"}, "train.lr_schedule must be one of"),
    ({"compile": "yes"}, "train.compile must be true or false"),
    ({"optimizer": "sgd"}, "train.optimizer must be one of 'adam', 'muon'"),
    ({"beta1": 1.0}, "train.beta1 must be in"),
    ({"beta2": -0.1}, "train.beta2 must be in"),
    ({"weight_decay": -0.01}, "train.weight_decay must be in"),
    ({"shift": 9}, "train.shift must be between 0 and 8"),
])
def test_bad_train_params_are_rejected(mapping, match):
    with pytest.raises(ConfigError, match=match):
        TRAIN.replace(**mapping)


@pytest.mark.parametrize("arch", ["pixelcnn", "gated", "pixelcnnpp"])
def test_muon_takes_the_conv_filters_and_adam_the_rest(arch):
    """Muon gets every filter (weight-normalized directions included) and moves each one that has a gradient;
    gains, biases and class embeddings stay with Adam."""
    cfg = model_config(arch=arch, norm="weight" if arch == "pixelcnnpp" else "batch", conditional=True, n_classes=2,
                       head="logistic_mixture" if arch == "pixelcnnpp" else "softmax")
    model = build_model(cfg)
    step = TrainStep(model, TRAIN.replace(optimizer="muon", lr=0.01), total_steps=4)
    adam, muon = step.opts
    filters = muon.param_groups[0]["params"]
    names = {n for n, p in model.named_parameters() if any(p is f for f in filters)}
    assert all("bias" not in n and "embed" not in n and not n.endswith("original0") for n in names)
    assert names == {n for n, p in model.named_parameters()
                     if p.dim() >= 2 and "embed" not in n and not n.endswith("original0")}
    assert {id(p) for g in adam.param_groups for p in g["params"]}.isdisjoint({id(f) for f in filters})
    before = [p.detach().clone() for p in filters]
    x = torch.randint(0, cfg.levels, (4, 1, cfg.height, cfg.width))
    step(x, torch.arange(4) % 2)
    moved = [not torch.equal(b, p) for b, p in zip(before, filters)]
    assert moved == [p.grad is not None and bool(p.grad.any()) for p in filters] and sum(moved) > len(moved) / 2


def test_muon_is_torchs_muon_batched_and_in_float32():
    """The same update as torch.optim.Muon (match_rms_adamw) up to torch's bfloat16 rounding, for filters of
    several shapes at once, conv filters through their (Cout, Cin * kh * kw) matrices."""
    from pixelnet.training.optim import Muon, orthogonalize

    gen = torch.Generator().manual_seed(0)
    shapes = [(8, 3, 2, 3), (8, 3, 2, 3), (4, 16, 1, 1), (24, 2, 1, 1)]  # two of one shape; a tall one
    ours = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().reshape(p.shape[0], -1).clone()) for p in ours]
    mine, ref = Muon(ours, lr=0.02, weight_decay=0.1), torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1,
                                                                          adjust_lr_fn="match_rms_adamw")
    for _ in range(3):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.reshape(q.shape).clone()
        mine.step()
        ref.step()
    for p, q in zip(ours, theirs):
        assert torch.allclose(p.detach().reshape(q.shape), q.detach(), atol=2e-3)
    x = torch.randn(3, 5, 9, generator=gen)
    singular = torch.linalg.svdvals(orthogonalize(x))
    assert singular.min() > 0.5 and singular.max() < 1.5  # approximately orthogonal rows, as Muon's iteration gives


def test_weight_decay_shrinks_filters_only():
    model = build_model(model_config())
    (opt,) = TrainStep(model, TRAIN.replace(optimizer="adam", weight_decay=0.1), total_steps=4).opts
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert decays[id(p)] == (0.1 if p.dim() >= 2 else 0.0), name


def test_shifted_moves_each_image_within_its_frame_and_fills_zeros():
    x = torch.arange(1, 1 + 2 * 5 * 5, dtype=torch.uint8).view(2, 1, 5, 5).repeat(16, 1, 1, 1)
    torch.manual_seed(0)
    out = shifted(x, 2)
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = set()
    for img, src in zip(out, x):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(img, _moved(src, dy, dx))]
        assert found, "every output is its image moved by some offset in [-2, 2]^2"
        seen.add(found[0])
    assert len(seen) > 5  # the offsets vary from image to image


def _moved(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """img (C, H, W) moved dy rows down and dx columns right, zeros where nothing moved in."""
    out = torch.zeros_like(img)
    h, w = img.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = img[:, max(-dy, 0):h - max(dy, 0),
                                                                        max(-dx, 0):w - max(dx, 0)]
    return out
