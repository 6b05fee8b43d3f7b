"""A small, generic training loop for autoregressive image models.

Nothing here knows about PixelCNN internals, files or MLflow: `fit` takes a
model, two splits of integer-level images and a TrainConfig, and reports
each step and epoch to optional callbacks (the stage wires in CSVs, progress
bars and tracking).  The whole dataset stays one uint8 tensor; batches are
slices of a seeded permutation, so a seeded run repeats exactly.

Time to quality (train section of params.yaml):
- `lr_schedule: cosine` warms the learning rate up linearly over the first
  `warmup_fraction` of the steps, then anneals it to zero along a cosine
  (`lr_factor`); `constant` keeps `lr` after the warmup.
- `ema_decay > 0` keeps an exponential moving average of the weights and
  BatchNorm statistics (`EMA`); validation uses it and the model `fit`
  returns holds it, so the EMA weights are what gets saved and evaluated.
- `max_minutes` is a wall-clock budget, checked only between epochs: training
  stops before an epoch that, at the average pace so far, would end past the
  budget.  The schedule stays the one planned for `epochs`, so a run the
  budget does not stop is bit-for-bit the run without a budget; one it stops
  depends on the machine's speed.  The stage records whether it stopped
  (`budget_bound`); the reproducibility check uses a budget that never binds.
- `compile: true` runs the loss and its backward through torch.compile
  (the compile time is part of the first epoch's time).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pixelnet.config import TrainConfig
from pixelnet.data.processed import Split
from pixelnet.likelihood import bits_per_dim, nats_to_bits_per_dim


@dataclass
class EpochRecord:
    epoch: int
    step: int
    train_bpd: float
    val_bpd: float
    seconds: float
    images_per_s: float
    lr: float  # the learning rate of the epoch's last step
    elapsed_seconds: float  # since fit began, validation included: what train.max_minutes is checked against


StepCallback = Callable[[int, int, float], None]  # (step, epoch, loss in bits/dim)
EpochCallback = Callable[[EpochRecord], None]


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def nll_nats(logits: torch.Tensor, x: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """likelihood.nll_nats / mean_nll_nats, computed on a (sub-pixels, levels) view of the logits.

    logits (B, levels, C, H, W), x (B, C, H, W) levels.  A channels-last head
    stores the logits as (B, H, W, C, levels), so the permute below is a view
    and the softmax runs over contiguous rows; strided logits are copied once.
    """
    levels = logits.shape[1]
    flat = logits.permute(0, 3, 4, 2, 1).reshape(-1, levels)  # (B * H * W * C, levels)
    return F.cross_entropy(flat.float(), x.permute(0, 2, 3, 1).reshape(-1).long(), reduction=reduction)


def conditional(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "conditional", False))


def forward(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    return model(x) if labels is None else model(x, labels)


@torch.no_grad()
def total_nll_nats(
    model: nn.Module, images: torch.Tensor, *, batch_size: int, device: torch.device, labels: torch.Tensor | None = None
) -> float:
    """Summed NLL (nats) of uint8 level images (N, C, H, W) under `model` in eval mode (labels (N,) if conditional)."""
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        y = labels[start:start + batch_size].to(device) if labels is not None and conditional(model) else None
        total += float(nll_nats(forward(model, x, y), x, reduction="sum"))
    model.train(was_training)
    return total


def lr_factor(step: int, total_steps: int, *, schedule: str, warmup_steps: int) -> float:
    """Multiplier of train.lr for optimizer step `step` (0-based) of `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a model's floating-point state (weights and BatchNorm statistics).

    The decay ramps up as min(decay, (1 + t) / (10 + t)) over updates t, so
    that in a short run the random initial weights fade out quickly.
    Integer state (BatchNorm's batch counter) is copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._float_keys = [k for k, v in self.shadow.items() if v.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        state = model.state_dict()
        torch._foreach_lerp_([self.shadow[k] for k in self._float_keys],
                             [state[k].detach() for k in self._float_keys], 1.0 - decay)
        for k, v in state.items():
            if not v.is_floating_point():
                self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow)


def batches_per_epoch(n_images: int, batch_size: int) -> int:
    """Full batches only (at least one): every step has the same shape, which torch.compile needs."""
    return max(1, n_images // batch_size)


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, x) -> mean NLL in nats


class TrainStep:
    """One optimizer step on a batch (loss, backward, Adam, schedule, EMA): what `fit` repeats and benchmarks time."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, *, total_steps: int, loss: Loss = nll_nats) -> None:
        self.model = model
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        warmup = round(cfg.warmup_fraction * total_steps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, total_steps, schedule=cfg.lr_schedule, warmup_steps=warmup))
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None

        def loss_of(x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
            return loss(forward(model, x, labels), x)

        self.loss_of = torch.compile(loss_of) if cfg.compile else loss_of

        self.last_lr = cfg.lr  # the learning rate the last step used

    def __call__(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self.last_lr = self.opt.param_groups[0]["lr"]
        loss = self.loss_of(x, labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if self.ema:
            self.ema.update(self.model)
        return loss.detach()


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
    """Train `model` in place with Adam on cross-entropy; returns one record per epoch run.

    With cfg.ema_decay > 0 the model ends up holding the EMA weights.
    """
    torch.manual_seed(cfg.seed)
    order = torch.Generator().manual_seed(cfg.seed)
    model.to(device).train()
    per_epoch = batches_per_epoch(len(train.images), cfg.batch_size)
    step_fn = TrainStep(model, cfg, total_steps=per_epoch * cfg.epochs)
    eval_model = copy.deepcopy(model) if step_fn.ema else model  # holds the EMA weights for validation
    use_labels = conditional(model)
    dims = train.images[0].numel()
    history: list[EpochRecord] = []
    step = 0
    began = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(len(train.images), generator=order)
        loss_sum, seen = 0.0, 0
        for b in range(per_epoch):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x = train.images[idx].to(device)
            loss_bpd = nats_to_bits_per_dim(step_fn(x, train.labels[idx].to(device) if use_labels else None).item())
            step += 1
            loss_sum += loss_bpd * len(x)
            seen += len(x)
            if on_step:
                on_step(step, epoch, loss_bpd)
        seconds = time.perf_counter() - t0
        if step_fn.ema:
            step_fn.ema.copy_to(eval_model)
        val_bpd = bits_per_dim(
            total_nll_nats(eval_model, val.images, batch_size=eval_batch_size, device=device,
                           labels=val.labels if use_labels else None), len(val.images), dims,
        ) if len(val.images) else float("nan")
        elapsed = time.perf_counter() - began
        record = EpochRecord(epoch, step, loss_sum / seen, val_bpd, seconds, seen / seconds, step_fn.last_lr, elapsed)
        history.append(record)
        if on_epoch:
            on_epoch(record)
        if cfg.max_minutes is not None and epoch < cfg.epochs and elapsed + (elapsed / epoch) > 60 * cfg.max_minutes:
            break  # the next epoch would end past the budget (at the average pace so far)
    if step_fn.ema:
        step_fn.ema.copy_to(model)
    model.eval()
    return history
