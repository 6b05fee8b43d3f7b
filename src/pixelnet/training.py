"""A small, generic training loop for autoregressive image models.

Nothing here knows about PixelCNN internals, files or MLflow: `fit` takes a
model, two splits of integer-level images and a TrainConfig, and reports
each step and epoch to optional callbacks (the stage wires in CSVs, progress
bars and tracking).  The whole dataset stays one uint8 tensor; batches are
slices of a seeded permutation, so a seeded run repeats exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pixelnet.config import TrainConfig
from pixelnet.data.processed import Split
from pixelnet.likelihood import bits_per_dim, mean_nll_nats, nats_to_bits_per_dim, nll_nats


@dataclass
class EpochRecord:
    epoch: int
    step: int
    train_bpd: float
    val_bpd: float
    seconds: float
    images_per_s: float


StepCallback = Callable[[int, int, float], None]  # (step, epoch, loss in bits/dim)
EpochCallback = Callable[[EpochRecord], None]


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def total_nll_nats(model: nn.Module, images: torch.Tensor, *, batch_size: int, device: torch.device) -> float:
    """Summed NLL (nats) of uint8 level images (N, C, H, W) under `model` in eval mode."""
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        total += float(nll_nats(model(x), x))
    model.train(was_training)
    return total


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    cfg: TrainConfig,
    *,
    device: torch.device,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
    eval_batch_size: int = 256,
) -> list[EpochRecord]:
    """Train `model` in place with Adam on cross-entropy; returns one record per epoch."""
    torch.manual_seed(cfg.seed)
    order = torch.Generator().manual_seed(cfg.seed)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    dims = train.images[0].numel()
    history: list[EpochRecord] = []
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(len(train.images), generator=order)
        loss_sum, seen = 0.0, 0
        for start in range(0, len(perm), cfg.batch_size):
            x = train.images[perm[start:start + cfg.batch_size]].to(device)
            loss = mean_nll_nats(model(x), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_bpd = nats_to_bits_per_dim(loss.item())
            loss_sum += loss_bpd * len(x)
            seen += len(x)
            if on_step:
                on_step(step, epoch, loss_bpd)
        seconds = time.perf_counter() - t0
        val_bpd = (
            bits_per_dim(total_nll_nats(model, val.images, batch_size=eval_batch_size, device=device), len(val.images), dims)
            if len(val.images) else float("nan")
        )
        record = EpochRecord(epoch, step, loss_sum / seen, val_bpd, seconds, seen / seconds)
        history.append(record)
        if on_epoch:
            on_epoch(record)
    model.eval()
    return history
