"""The training loop waits for the device only when it reads the losses, and saving by time changes no output.

A wait for the device is any read of a tensor's value on the host (`item`, `tolist`, `float`, ...).  On the
CPU nothing waits, so the tests count where pixelnet's code reads values: between two reads of the losses
there must be none.  (torch's own Adam reads its step counter with `.item()`, but that counter lives on the
CPU on every device, so it never waits for a GPU; the count leaves torch's code out.)
"""

from __future__ import annotations

import io
import sys
from collections import defaultdict
from unittest import mock

import pytest
import torch

from pixelnet.config import defaults
from pixelnet.data.processed import Split
from pixelnet.model.build import build_model
from pixelnet.training import loop
from pixelnet.training.loop import fit
from tests.conftest import model_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CFG = model_config(channels=8, blocks=1, first_kernel=3, kernel=3, levels=4, height=6, width=6)
PP_CFG = model_config(arch="pixelcnnpp", channels=8, resnet_layers=1, resolutions=2, dropout=0.5, norm="weight",
                      head="logistic_mixture", levels=4, height=6, width=6, conditional=True, n_classes=2)
# 28 images: 7 steps an epoch
TRAIN = defaults().train.replace(epochs=2, batch_size=4, lr=0.01, ema_decay=0.9, checkpoint_every=0)
READS = [3, 6, 7, 9, 12, 14]  # with READ_EVERY 3: the multiples of 3 and each epoch's last step
HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")


def split(n: int, seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 4, (n, 1, 6, 6), generator=gen, dtype=torch.uint8)
    x[:, :, :3, :3] = 3
    return Split(x, torch.arange(n) % 2)


def run(config=CFG, *, read_every: int, checkpoint_seconds: float = loop.CHECKPOINT_SECONDS, **kwargs
        ) -> tuple[torch.nn.Module, list, list[tuple[int, int, float]], list[dict]]:
    """fit on a fixed tiny problem, reading the losses every `read_every` steps and saving by time after
    `checkpoint_seconds`: the model, its history, every on_step call and every saved state."""
    torch.manual_seed(1)
    model = build_model(config)
    steps, saves = [], []

    def on_save(state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        saves.append(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))

    with mock.patch.object(loop, "READ_EVERY", read_every), \
            mock.patch.object(loop, "CHECKPOINT_SECONDS", checkpoint_seconds):
        history = fit(model, split(28, 0), split(8, 1), TRAIN, device=torch.device("cpu"),
                      on_step=lambda *step: steps.append(step), on_save=on_save, **kwargs)
    return model, history, steps, saves


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("config", [CFG, PP_CFG], ids=["pixelcnn", "pixelcnnpp-mixture-conditional"])
def test_host_reads_happen_only_where_the_losses_are_read(monkeypatch, config):
    steps_run = 0
    reads: dict[int, list[str]] = defaultdict(list)  # after how many steps -> the pixelnet functions that read

    def counted(name: str):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = sys._getframe(1)
            if caller.f_globals.get("__name__", "").startswith("pixelnet"):
                reads[steps_run].append(caller.f_code.co_name)
            return original(self, *args, **kwargs)
        return read

    def train_step(*args, **kwargs):
        nonlocal steps_run
        steps_run += 1
        return original_step(*args, **kwargs)

    original_step = loop.TrainStep.__call__
    monkeypatch.setattr(loop.TrainStep, "__call__", train_step)
    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    _, _, steps, _ = run(config, read_every=3)
    monkeypatch.undo()

    assert [s for s, _, _ in steps] == list(range(1, 15))
    assert sorted(reads) == READS
    for after, callers in reads.items():
        validation = callers[1:] if after in (7, 14) else []  # epoch ends: the validation NLL, batch by batch
        assert callers == ["read_losses"] + validation, (after, callers)
        assert all(c == "total_nll_nats" for c in validation)


def test_reading_losses_in_bursts_reports_every_step_as_reading_each_step_does():
    every_step, h1, s1, _ = run(read_every=1)  # a read a step: the loop as it was before reads were batched
    bursts, h3, s3, _ = run(read_every=3)
    assert s1 == s3 and len(s3) == 14  # the same steps, epochs and float losses, in the same order
    assert [(r.epoch, r.step, r.train_bpd, r.val_bpd, r.lr) for r in h1] == \
        [(r.epoch, r.step, r.train_bpd, r.val_bpd, r.lr) for r in h3]
    assert same_weights(every_step, bursts)


def test_saving_by_time_saves_at_reads_and_changes_no_output():
    plain, history, steps, saves = run(read_every=3)
    assert [(s["progress"]["epoch"], s["progress"]["batch"]) for s in saves] == [(2, 0), (3, 0)]  # epoch ends only
    timed, timed_history, timed_steps, timed_saves = run(read_every=3, checkpoint_seconds=0.0)
    positions = [(s["progress"]["epoch"], s["progress"]["batch"]) for s in timed_saves]
    assert positions == [(1, 3), (1, 6), (1, 7), (2, 0), (2, 2), (2, 5), (2, 7), (3, 0)]  # every read, every epoch end
    assert same_weights(plain, timed) and steps == timed_steps
    assert [(r.train_bpd, r.val_bpd) for r in history] == [(r.train_bpd, r.val_bpd) for r in timed_history]
    resumed, _, resumed_steps, _ = run(read_every=3, resume=timed_saves[positions.index((2, 2))])
    assert same_weights(plain, resumed) and resumed_steps == steps[9:]
