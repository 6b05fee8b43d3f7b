"""Resume after any kill: SIGKILL mid-epoch, run again, and get the uninterrupted run's weights bit for bit.

Also: every save point resumes exactly (in-process), a finished run is not
retrained, changed params start afresh and say what changed, a damaged or
unsafe state is refused and training starts afresh, and a time budget is
checked again on every start.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from pixelnet.config import TrainConfig, defaults
from pixelnet.data.processed import Split
from pixelnet.model.build import build_model
from pixelnet.training.loop import Progress, finished, fit
from tests.conftest import REPO, model_config, write_image_folder, write_params

CFG = model_config(channels=8, blocks=1, first_kernel=3, kernel=3, levels=4, height=6, width=6)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def split(n: int, seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 4, (n, 1, 6, 6), generator=gen, dtype=torch.uint8)
    x[:, :, :3, :3] = 3
    return Split(x, torch.arange(n) % 2)


def run_fit(cfg: TrainConfig, resume: dict | None = None) -> tuple[torch.nn.Module, list, list[bytes]]:
    """fit on a fixed tiny problem; returns the model, the history and every state it saved, serialized."""
    torch.manual_seed(1)
    model = build_model(CFG)
    saves: list[bytes] = []

    def on_save(state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        saves.append(buf.getvalue())

    history = fit(model, split(36, 0), split(8, 1), cfg, device=torch.device("cpu"), on_save=on_save, resume=resume)
    return model, history, saves


def load(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("levers", [{}, {"weight_decay": 0.01}],
                         ids=["adam", "muon-shift"])
def test_every_save_point_resumes_to_the_same_weights(levers):
    """Muon's momentum and the shifts' RNG are in the state too: a resumed run ends where the uninterrupted one does."""
    cfg = defaults().train.replace(epochs=2, batch_size=8, lr=0.01, ema_decay=0.9, checkpoint_every=1,
                                   **levers)  # 4 steps an epoch
    model, history, saves = run_fit(cfg)
    positions = [(load(s)["progress"]["epoch"], load(s)["progress"]["batch"]) for s in saves]
    # every step, the last batch of an epoch before its validation, and each epoch end
    assert positions == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4), (3, 0)]
    for data in saves:
        resumed, resumed_history, _ = run_fit(cfg, resume=load(data))
        assert same_weights(model.state_dict(), resumed.state_dict())
        assert [(r.epoch, r.step, r.train_bpd, r.val_bpd, r.lr) for r in history] == \
               [(r.epoch, r.step, r.train_bpd, r.val_bpd, r.lr) for r in resumed_history]


def test_checkpoint_every_zero_saves_at_epoch_ends_only():
    _, _, saves = run_fit(defaults().train.replace(epochs=2, batch_size=8, lr=0.01, checkpoint_every=0))
    assert [(load(s)["progress"]["epoch"], load(s)["progress"]["batch"]) for s in saves] == [(2, 0), (3, 0)]


def test_a_budget_is_checked_again_when_a_run_starts():
    base = defaults().train.replace(epochs=3, batch_size=8, lr=0.01)
    _, stopped, saves = run_fit(base.replace(max_minutes=1e-6))
    assert len(stopped) == 1
    last = Progress.from_state(load(saves[-1])["progress"])
    assert finished(last, base.replace(max_minutes=1e-6))
    assert not finished(last, base)  # no budget now: the run goes on to the planned epochs
    full, _, _ = run_fit(base)
    continued, history, _ = run_fit(base, resume=load(saves[-1]))
    assert len(history) == 3 and same_weights(full.state_dict(), continued.state_dict())


# ---- through the command line ----

PARAMS = (
    "data: {dataset: folder, size: 8, levels: 4, val_fraction: 0.25, test_fraction: 0.25}\n"
    "model: {arch: pixelcnn, channels: 8, blocks: 1, first_kernel: 3, kernel: 3}\n"
    "train: {epochs: %d, batch_size: 4, lr: 0.01, ema_decay: 0.9, checkpoint_every: 3, seed: 0, device: cpu}\n"
)


@pytest.fixture
def processed(run_cli, tmp_path) -> tuple[Path, Path]:
    """(params.yaml, preprocessed data) for 64 8x8 images: 32 train images, 8 steps per epoch."""
    params = tmp_path / "params.yaml"
    write_params(params, PARAMS % 3)
    folder = write_image_folder(tmp_path / "images", n_per_class=32)
    for args in (("download", "--params", params, "--out", tmp_path / "raw", "-S", f"data.folder={folder}"),
                 ("preprocess", "--params", params, "--raw", tmp_path / "raw", "--out", tmp_path / "data")):
        assert run_cli(*args).code == 0
    return params, tmp_path / "data"


def train_args(params: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--params", str(params), "--data", str(data), "--model", str(out / "model.pt"),
            "--reports", str(out / "reports"), "--state", str(out / "state.pt"), *extra]


def subprocess_env() -> dict:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def saved_position(path: Path) -> tuple[int, int] | None:
    """(epoch, batch) of the saved state, or None while there is none."""
    try:
        progress = torch.load(path, weights_only=True)["progress"]
    except FileNotFoundError:
        return None
    return progress["epoch"], progress["batch"]


def kill_mid_epoch(proc: subprocess.Popen, state: Path) -> tuple[int, int]:
    """SIGKILL `proc` at a moment when its latest save is mid-epoch; returns that save's (epoch, batch).

    The process is stopped (SIGSTOP) before its state is read for the decision, so that no later save can
    land between the check and the kill.
    """
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "training ended before a mid-epoch save was seen: make the run longer"
        position = saved_position(state)
        if position and position[1] > 0:
            proc.send_signal(signal.SIGSTOP)
            position = saved_position(state)
            if position[1] > 0:
                proc.kill()
                proc.wait()
                return position
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("no mid-epoch save within 120 s")


def outputs(out: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame, dict]:
    weights = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    steps = pd.read_csv(out / "reports" / "steps.csv")
    epochs = pd.read_csv(out / "reports" / "epochs.csv")
    metrics = json.loads((out / "reports" / "metrics.json").read_text())
    assert not any(c.endswith(("seconds", "images_per_s")) for c in [*epochs.columns, *metrics])  # timing.json's
    return weights, steps, epochs, metrics


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(processed, tmp_path):
    params, data = processed
    write_params(params, PARAMS % 12)  # 96 steps, a save every 3
    cmd = [sys.executable, "-m", "pixelnet"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(cmd + train_args(params, data, whole), env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    proc = subprocess.Popen(cmd + train_args(params, data, killed), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    epoch, batch = kill_mid_epoch(proc, killed / "state.pt")
    assert proc.returncode == -signal.SIGKILL and not (killed / "model.pt").exists()

    again = subprocess.run(cmd + train_args(params, data, killed), env=subprocess_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    step = (epoch - 1) * 8 + batch
    assert f"resuming from step {step} of 96 (epoch {epoch})" in again.stdout

    (w1, steps1, epochs1, m1), (w2, steps2, epochs2, m2) = outputs(whole), outputs(killed)
    assert same_weights(w1, w2)
    pd.testing.assert_frame_equal(steps1, steps2)
    pd.testing.assert_frame_equal(epochs1, epochs2)
    assert m1 == m2 and m2["steps"] == 96 and len(steps2) == 96


def test_a_finished_run_is_not_trained_again(run_cli, processed, tmp_path, monkeypatch):
    params, data = processed
    out = tmp_path / "out"
    assert run_cli(*train_args(params, data, out)).code == 0
    first = outputs(out)
    for f in ("model.pt", "reports/steps.csv", "reports/epochs.csv", "reports/metrics.json"):
        (out / f).unlink()  # as DVC removes a stage's outputs before running it

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("pixelnet.stages.train.fit", no_training)
    result = run_cli(*train_args(params, data, out))
    assert result.code == 0, result.err
    assert "training already finished (step 24 of 24, 3 epochs)" in result.out
    second = outputs(out)
    assert same_weights(first[0], second[0])
    pd.testing.assert_frame_equal(first[1], second[1])
    pd.testing.assert_frame_equal(first[2], second[2])
    assert first[3] == second[3]


def test_changed_params_start_afresh_and_say_what_changed(run_cli, processed, tmp_path):
    params, data = processed
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert run_cli(*train_args(params, data, out)).code == 0
    result = run_cli(*train_args(params, data, out, "-S", "train.lr=0.02"))
    assert result.code == 0, result.err
    assert "params, data or code changed since the training state" in result.out and "train.lr: 0.01 -> 0.02" in result.out
    assert "training afresh" in result.out and "already finished" not in result.out
    assert run_cli(*train_args(params, data, fresh, "-S", "train.lr=0.02")).code == 0
    assert same_weights(outputs(out)[0], outputs(fresh)[0])
    assert torch.load(out / "state.pt", weights_only=True)["fingerprint"]["train.lr"] == 0.02
    # where and how often the state is saved does not change the weights: no fresh start for that
    result = run_cli(*train_args(params, data, out, "-S", "train.lr=0.02", "-S", "train.checkpoint_every=5"))
    assert "training already finished" in result.out


def test_a_damaged_or_unsafe_state_is_refused_and_training_starts_afresh(run_cli, processed, tmp_path):
    params, data = processed
    out = tmp_path / "out"
    out.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("this would run code",))

    for content, needle in ((b"\x80\x02junk", "cannot read the training state"),
                            (None, "refusing to load the training state")):
        if content is None:
            torch.save({"fingerprint": {}, "evil": Evil()}, out / "state.pt")
        else:
            (out / "state.pt").write_bytes(content)
        result = run_cli(*train_args(params, data, out))
        assert result.code == 0, result.err
        assert needle in result.out and "training afresh" in result.out and "this would run code" not in result.out
        assert torch.load(out / "state.pt", weights_only=True)["progress"]["epoch"] == 4  # overwritten, finished


def test_a_file_that_is_not_a_training_state_is_named_and_training_starts_afresh(run_cli, processed, tmp_path):
    params, data = processed
    out = tmp_path / "out"
    out.mkdir()
    torch.save({"x": 1}, out / "state.pt")  # loads safely, but holds no fingerprint
    result = run_cli(*train_args(params, data, out))
    assert result.code == 0, result.err
    assert "is not a PixelNet training state (no fingerprint)" in result.out and "training afresh" in result.out
    assert torch.load(out / "state.pt", weights_only=True)["progress"]["epoch"] == 4  # overwritten, finished


def test_the_stage_tells_the_pace_once_with_the_time_left_and_a_shorter_setting(run_cli, processed, tmp_path):
    """One plain line after the first read of the losses (step 10): the training and later stages' time at the
    pace so far; where training has more than 5 minutes left, the epochs for a first look of about 2 minutes."""
    params, data = processed
    result = run_cli(*train_args(params, data, tmp_path / "run"))
    assert result.code == 0
    lines = [line for line in (result.out + result.err).splitlines() if line.startswith("pace:")]
    assert len(lines) == 1 and "over the first 10 steps" in lines[0] and "sample, complete and evaluate" in lines[0]
    assert "train.epochs=" not in lines[0]  # a tiny run: nothing to shorten
    from pixelnet.stages.train import pace_line

    slow = pace_line(defaults().train.replace(epochs=10, batch_size=32), done=10, left=1240,
                     seconds=50.0)  # 6.4 images/s
    assert "about 103 min more" in slow and "train.epochs=" in slow
    assert int(slow.split("train.epochs=")[1].split()[0]) == 1
