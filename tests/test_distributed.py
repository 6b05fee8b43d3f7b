"""Data-parallel training under torchrun: 2 gloo processes on the CPU against 1 process with the same global batch.

The loss trajectories are compared step by step (steps.csv):
- with model.norm none, the two runs do the same arithmetic but for the
  order of float sums (the per-rank losses and gradients are averaged over
  ranks instead of summed over the whole batch at once), so they agree to
  NORM_NONE_RTOL relative;
- with BatchNorm, each rank normalizes with the statistics of its own half of
  the batch (SyncBatchNorm, which would share them, refuses CPU modules in
  torch 2.14.1), so the losses differ by more, within BATCHNORM_RTOL relative.
  That they differ at all shows each rank trained on its own share.
Each run is ~12 optimizer steps of a tiny model; the processes use one thread each.

Dropout: each rank draws its own masks (seed + rank) from the shared data order, rank 0 the masks a single
process draws, and a two-process PixelCNN++ run with dropout resumes to its uninterrupted weights (each rank
takes back its own RNG state).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pixelnet.config import defaults, load_params
from pixelnet.data.processed import Split
from pixelnet.model.build import build_model
from pixelnet.stages.download import download
from pixelnet.stages.preprocess import preprocess
from pixelnet.stages.train import session
from pixelnet.training.loop import Dist, fit
from tests.conftest import REPO, model_config, write_image_folder, write_params

NORM_NONE_RTOL = 1e-4  # measured: 1.8e-7 (float summation order only)
BATCHNORM_RTOL = 0.03  # measured: 9.3e-3 (per-rank BatchNorm statistics over 4 images each; steps 1..12)
STEPS = 12

PARAMS = (
    "data: {dataset: folder, size: 8, levels: 4, val_fraction: 0.25, test_fraction: 0.25}\n"
    "model: {arch: pixelcnn, channels: 8, blocks: 1, first_kernel: 3, kernel: 3}\n"
    "train: {epochs: 3, batch_size: 8, lr: 0.01, seed: 0, device: cpu, checkpoint_every: 2}\n"
)
DROPOUT_PARAMS = (  # PixelCNN++ with the CIFAR-10 preset's dropout
    "data: {dataset: folder, size: 8, levels: 4, val_fraction: 0.25, test_fraction: 0.25}\n"
    "model: {arch: pixelcnnpp, channels: 8, resolutions: 2, dropout: 0.5}\n"
    "train: {epochs: 3, batch_size: 8, lr: 0.01, seed: 0, device: cpu, checkpoint_every: 2}\n"
)


def env() -> dict:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def train(data: Path, params: Path, out: Path, *overrides: str, processes: int = 1) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    args = ["-m", "pixelnet", "train", "--params", str(params), "--data", str(data), "--model", str(out / "model.pt"),
            "--reports", str(out / "reports")]
    for o in overrides:
        args += ["-S", o]
    done = subprocess.run(launcher + args, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    """(params.yaml, preprocessed data): 32 training images of 8x8, so 4 global batches of 8 per epoch."""
    root = tmp_path_factory.mktemp("ddp")
    params = root / "params.yaml"
    write_params(params, PARAMS)
    folder = write_image_folder(root / "images", n_per_class=32)
    cfg = load_params(params, [f"data.folder={folder}"]).data
    download(cfg, out_dir=root / "raw", cache_dir=root / "cache")
    preprocess(cfg, raw_dir=root / "raw", out_dir=root / "data")
    return params, root / "data"


@pytest.fixture(scope="module")
def runs(prepared, tmp_path_factory) -> dict[tuple[str, int], Path]:
    """Output directories of 1- and 2-process runs, with BatchNorm and without."""
    params, data = prepared
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for norm in ("batch", "none"):
        for processes in (1, 2):
            out[norm, processes] = root / f"{norm}-{processes}"
            train(data, params, out[norm, processes], f"model.norm={norm}", processes=processes)
    return out


def losses(out: Path) -> np.ndarray:
    steps = pd.read_csv(out / "reports" / "steps.csv")
    assert list(steps["step"]) == list(range(1, STEPS + 1))
    return steps["train_bpd"].to_numpy()


def max_relative_deviation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.abs(a)))


def test_two_processes_without_batchnorm_follow_the_one_process_trajectory(runs):
    deviation = max_relative_deviation(losses(runs["none", 1]), losses(runs["none", 2]))
    print(f"norm none: max relative deviation of the per-step loss {deviation:.2e} (tolerance {NORM_NONE_RTOL})")
    assert deviation < NORM_NONE_RTOL


def test_two_processes_with_batchnorm_agree_within_the_stated_tolerance(runs):
    deviation = max_relative_deviation(losses(runs["batch", 1]), losses(runs["batch", 2]))
    print(f"norm batch: max relative deviation of the per-step loss {deviation:.2e} (tolerance {BATCHNORM_RTOL})")
    assert 0 < deviation < BATCHNORM_RTOL  # > 0: each rank normalized its own half of the batch


def test_rank_zero_alone_writes_and_the_outputs_are_complete(runs):
    out = runs["batch", 2]
    assert sorted(p.name for p in out.iterdir()) == ["model.pt", "model.state.pt", "reports"]
    assert sorted(p.name for p in (out / "reports").iterdir()) == ["epochs.csv", "metrics.json", "steps.csv", "timing.json"]
    metrics = json.loads((out / "reports" / "metrics.json").read_text())
    assert metrics["steps"] == STEPS and metrics["epochs"] == 3
    state = torch.load(out / "model.state.pt", weights_only=True)
    assert state["fingerprint"]["world size"] == 2
    assert not any(k.startswith("module.") for k in state["model"])  # the network's own keys, not DDP's


def test_a_two_process_run_stopped_by_its_budget_resumes_to_the_same_weights(runs, prepared, tmp_path):
    params, data = prepared
    out = tmp_path / "stopped"
    train(data, params, out, "model.norm=batch", "train.max_minutes=1e-6", processes=2)  # stops after epoch 1
    assert json.loads((out / "reports" / "metrics.json").read_text())["epochs"] == 1
    again = train(data, params, out, "model.norm=batch", processes=2)  # no budget now: it goes on
    assert f"resuming from step 4 of {STEPS} (epoch 2)" in again.stdout
    a = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(runs["batch", 2] / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(pd.read_csv(out / "reports" / "steps.csv"),
                                  pd.read_csv(runs["batch", 2] / "reports" / "steps.csv"))


def test_a_batch_the_processes_cannot_share_equally_is_a_clean_error(run_cli, prepared, tmp_path, monkeypatch):
    params, data = prepared
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    result = run_cli("train", "--params", params, "--data", data, "--model", tmp_path / "m.pt",
                     "--reports", tmp_path / "r")
    assert result.code == 2
    assert "train.batch_size 8 is not divisible by the 3 processes" in result.err and "Traceback" not in result.err


@pytest.mark.parametrize("env, overrides, message", [
    ({"WORLD_SIZE": "2"}, [], "WORLD_SIZE is set but RANK, LOCAL_RANK is not: start data-parallel training with torchrun"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, [], "WORLD_SIZE=2, RANK=2, LOCAL_RANK=0 do not describe a world"),
    ({"WORLD_SIZE": "two", "RANK": "0", "LOCAL_RANK": "0"}, [], "environment variable WORLD_SIZE='two' is not an integer"),
    ({}, ["train.checkpoint_every=-1"], "train.checkpoint_every must be >= 0, got -1"),
    pytest.param({}, ["train.device=cuda"], "train.device is cuda but PyTorch sees no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_a_bad_launch_or_train_param_is_a_clean_error(run_cli, prepared, tmp_path, monkeypatch, env, overrides, message):
    params, data = prepared
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = [a for o in overrides for a in ("-S", o)]
    result = run_cli("train", "--params", params, "--data", data, "--model", tmp_path / "m.pt",
                     "--reports", tmp_path / "r", *args)
    assert result.code == 2
    assert message in result.err and "Traceback" not in result.err
    assert not (tmp_path / "m.pt").exists()


def test_bf16_autocast_runs_the_forward_in_bfloat16_and_keeps_the_loss_and_weights_in_float32():
    from pixelnet.model.build import build_model
    from pixelnet.training.loop import TrainStep

    x = torch.randint(0, 4, (8, 1, 6, 6), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    loss = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model(model_config(channels=8, blocks=1, first_kernel=3, kernel=3, levels=4, height=6, width=6))
        step = TrainStep(model.train(), defaults().train.replace(precision=precision), total_steps=10)
        loss[precision] = step(x)
        assert loss[precision].dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert loss["bf16"] != loss["fp32"]  # bfloat16 arithmetic in the forward pass ...
    assert torch.isclose(loss["bf16"], loss["fp32"], rtol=2e-2)  # ... with an 8-bit mantissa's accuracy


# ---- dropout: each rank its own masks, the data order shared ----

DROPOUT_MODEL = model_config(arch="pixelcnnpp", channels=8, resnet_layers=1, resolutions=2, dropout=0.5, norm="none",
                             height=6, width=6)
DROPOUT_TRAIN = defaults().train.replace(epochs=2, batch_size=8, lr=0.01, ema_decay=0.0, seed=3)


def images(n: int) -> Split:
    x = torch.randint(0, 4, (n, 1, 6, 6), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return Split(x, torch.zeros(n, dtype=torch.long))


def recorded_fit(dist: Dist, batch_size: int) -> dict[str, list[torch.Tensor]]:
    """fit DROPOUT_MODEL on 32 images; each step's batch, and the first dropout layer's input and output."""
    torch.manual_seed(0)
    model = build_model(DROPOUT_MODEL)
    seen = {"batches": [], "inputs": [], "outputs": []}

    def record_batch(module, args) -> None:
        if module.training:  # not validation's batches
            seen["batches"].append(args[0].clone())

    def record_dropout(module, args, out) -> None:
        if module.training:
            seen["inputs"].append(args[0].detach().clone())
            seen["outputs"].append(out.detach().clone())

    model.register_forward_pre_hook(record_batch)
    next(m for m in model.modules() if isinstance(m, torch.nn.Dropout)).register_forward_hook(record_dropout)
    fit(model, images(32), images(4), DROPOUT_TRAIN.replace(batch_size=batch_size), device=torch.device("cpu"),
        dist=dist)
    return seen


def dropout_rank(rank: int, port: int, out: Path) -> None:
    """One process of a gloo world of two, joined as torchrun's processes join (session)."""
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with session("cpu", batch_size=DROPOUT_TRAIN.batch_size) as dist:
        torch.save(recorded_fit(dist, DROPOUT_TRAIN.batch_size), out / f"rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def masks(a: dict, b: dict, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two runs' dropout masks (True: kept) at a step, where both can be seen: where neither input was 0."""
    visible = (a["inputs"][step] != 0) & (b["inputs"][step] != 0)
    return (a["outputs"][step] != 0)[visible], (b["outputs"][step] != 0)[visible]


def test_two_ranks_draw_their_own_dropout_masks_from_the_shared_data_order(tmp_path):
    torch.multiprocessing.spawn(dropout_rank, args=(free_port(), tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    order = torch.Generator().manual_seed(DROPOUT_TRAIN.seed)
    data = images(32).images
    for epoch in range(DROPOUT_TRAIN.epochs):
        perm = torch.randperm(32, generator=order)
        for b in range(4):
            step = 4 * epoch + b
            batch = perm[8 * b:8 * (b + 1)]
            for r, seen in enumerate(ranks):  # rank r trains on every second image of the shared global batch
                assert torch.equal(seen["batches"][step], data[batch[r::2]]), (step, r)
            assert not torch.equal(*masks(*ranks, step)), step
    alone = recorded_fit(Dist(), batch_size=4)  # one process, with the shards' batch size
    assert torch.equal(*masks(ranks[0], alone, 0))  # rank 0 draws the masks a single process draws


def test_a_two_process_run_with_dropout_resumes_to_its_uninterrupted_weights(prepared, tmp_path):
    _, data = prepared
    params = write_params(tmp_path / "params.yaml", DROPOUT_PARAMS)
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    train(data, params, whole, processes=2)
    train(data, params, stopped, "train.max_minutes=1e-6", processes=2)  # stops after epoch 1
    again = train(data, params, stopped, processes=2)
    assert f"resuming from step 4 of {STEPS} (epoch 2)" in again.stdout
    a = torch.load(whole / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(stopped / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
