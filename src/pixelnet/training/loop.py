"""A small, generic training loop for autoregressive image models.

Nothing here knows about PixelCNN internals, files or MLflow: `fit` takes a
model, two splits of integer-level images and a TrainConfig, and reports
each step and epoch to optional callbacks (the stage wires in CSVs, progress
bars, tracking and the resume state).  The training split is one uint8
tensor, moved to the device once; batches are gathered there by slices of a
seeded permutation, so a seeded run repeats exactly.

The loop never waits for the device between two reads of the losses: each
step's loss stays on the device until a read (`LossLog`: every READ_EVERY
steps, where a save is due by steps, and at each epoch end), which hands
`on_step` the steps since the last read, in order, with the floats a
per-step `.item()` would give.  The EMA updates from references to the
model's tensors.  The resume state is saved at reads too (`Checkpoints`).

Time to quality (train section of params.yaml):
- `lr_schedule: cosine` warms the learning rate up linearly over the first
  `warmup_fraction` of the steps, then anneals it to zero along a cosine
  (`lr_factor`); `constant` keeps `lr` after the warmup; `exponential`
  multiplies it by `lr_decay` every step after the warmup (openai's
  PixelCNN++ schedule: 0.999995 a step).
- `ema_decay > 0` keeps an exponential moving average of the weights and
  BatchNorm statistics (`EMA`); validation uses it and the model `fit`
  returns holds it, so the EMA weights are what gets saved and evaluated.
- `max_minutes` is a wall-clock budget, checked only between epochs: training
  stops before an epoch that, at the average pace so far, would end past the
  budget (`budget_binds`).  The schedule stays the one planned for `epochs`,
  so a run the budget does not stop is bit-for-bit the run without a budget;
  one it stops depends on the machine's speed.  The stage records whether it
  stopped (`budget_bound`); the reproducibility check uses a budget that never
  binds.
- `optimizer: muon` steps the conv filters with Muon and the rest with AdamW; `adam` everything with AdamW
  (optim.py).  `shift` moves each training image by up to that many pixels (`shifted`, from the device's RNG,
  which the resume state keeps); a model whose config says `init: data` gets its data-dependent init from
  the first DATA_INIT_IMAGES images of the first epoch's order before the first step.
- `compile: true` runs the loss and its backward through torch.compile
  (the compile time is part of the first epoch's time).
- `precision: bf16` runs the forward pass under bfloat16 autocast; the output
  head and the loss compute in float32.  `auto` (the default) is bf16 where
  the CPU (AVX-512 BF16, AMX) or the GPU runs it natively (precision.py).

Resume after any kill: `fit` saves and continues from the run's full state (resume.py),
every `checkpoint_every` steps, every CHECKPOINT_SECONDS and at each epoch end.

Data parallel under torchrun (`dist`, distributed.py): every rank draws the
same permutation and trains on its slice of each global batch, with dropout
masks of its own (seed + rank); DDP averages the gradients; the reported loss
is the mean over ranks.  Only rank 0 validates and writes the state; decisions
that depend on its clock are broadcast.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable

import torch
from torch import nn

from pixelnet.config import TrainConfig
from pixelnet.data.processed import Split
from pixelnet.model.likelihood import (
    bits_per_dim,
    forward,
    is_conditional,
    mean_nll_nats,
    nats_to_bits_per_dim,
    total_nll_nats,
)
from pixelnet.training.distributed import Dist
from pixelnet.training.optim import make_optimizers
from pixelnet.training.precision import resolve_precision
from pixelnet.training.resume import EpochRecord, Progress, capture, finished, rng_state, set_rng_state

DATA_INIT_IMAGES = 128  # images of the one forward pass of a data-dependent init (openai's: 100)
READ_EVERY = 10  # optimizer steps between reads of the losses to the host, the loop's one wait for the device
# Seconds of rank 0's clock after which the resume state is saved even before checkpoint_every steps have passed:
# it bounds the training a kill loses where steps are slow (the CIFAR-10 preset saves every 2000 steps).
CHECKPOINT_SECONDS = 300.0

StepCallback = Callable[[int, int, float], None]  # (step, epoch, loss in bits/dim)
EpochCallback = Callable[[EpochRecord, nn.Module], None]  # (the epoch, the model holding the weights it validated)


def lr_factor(step: int, total_steps: int, *, schedule: str, warmup_steps: int, decay: float = 1.0) -> float:
    """Multiplier of train.lr for optimizer step `step` (0-based) of `total_steps`; `decay` is exponential's."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "exponential":
        return decay ** (step - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a model's floating-point state (weights and BatchNorm statistics).

    The decay ramps up as min(decay, (1 + t) / (10 + t)) over updates t, so
    that in a short run the random initial weights fade out quickly.
    Integer state (BatchNorm's batch counter) is copied, not averaged.  It
    holds references to the model's own tensors, so build it once the model
    is on its device (`Module.to` replaces buffers).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        live = model.state_dict(keep_vars=True)  # the parameters and buffers themselves, not copies
        self.shadow = {k: v.detach().clone() for k, v in live.items()}
        self._floats = ([self.shadow[k] for k, v in live.items() if v.is_floating_point()],
                        [v for v in live.values() if v.is_floating_point()])
        self._counters = [(self.shadow[k], v) for k, v in live.items() if not v.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        """One more average, of the model's tensors as they are now."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        shadow, live = self._floats
        torch._foreach_lerp_(shadow, live, 1.0 - decay)
        for kept, counter in self._counters:
            kept.copy_(counter)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow)


def batches_per_epoch(n_images: int, batch_size: int) -> int:
    """Full batches only (at least one): every step has the same shape, which torch.compile needs."""
    return max(1, n_images // batch_size)


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (network output, x) -> mean NLL in nats


def shifted(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Each image of x (N, C, H, W) moved by its own random offsets in [-shift, shift] down and right, zero-filled.

    The offsets come from the device's global RNG, which the resume state keeps.
    """
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (shift, shift, shift, shift))
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


class TrainStep:
    """One optimizer step on a batch (loss, backward, optimizers, schedule, EMA): what `fit` repeats and benchmarks time.

    `model` is what the forward pass runs through (under torchrun, the DDP wrapper); `module` the network
    itself, whose weights the EMA averages (default: `model`).
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, *, total_steps: int, loss: Loss | None = None,
                 module: nn.Module | None = None) -> None:
        self.model = model
        self.module = model if module is None else module
        if loss is None:  # the NLL under the network's own output distribution
            loss = functools.partial(mean_nll_nats, self.module.distribution)
        self.opts = make_optimizers(self.module, cfg)
        warmup = round(cfg.warmup_fraction * total_steps)
        schedule = functools.partial(lr_factor, total_steps=total_steps, schedule=cfg.lr_schedule,
                                     warmup_steps=warmup, decay=cfg.lr_decay)
        self.scheds = [torch.optim.lr_scheduler.LambdaLR(opt, schedule) for opt in self.opts]
        self.ema = EMA(self.module, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.shift = cfg.shift
        device = next(self.module.parameters()).device
        bf16 = resolve_precision(cfg.precision, device) == "bf16"
        device_type = device.type

        def loss_of(x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                out = forward(model, x, labels)
            return loss(out.float(), x)  # float32 loss (.float() is a no-op on float32 outputs)

        self.loss_of = torch.compile(loss_of) if cfg.compile else loss_of

        self.last_lr = cfg.lr  # the learning rate the last step used

    def __call__(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self.last_lr = self.opts[0].param_groups[0]["lr"]
        if self.shift:
            x = shifted(x, self.shift)
        loss = self.loss_of(x, labels)
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt, sched in zip(self.opts, self.scheds):
            opt.step()
            sched.step()
        if self.ema:
            self.ema.update()
        return loss.detach()

    def state_dict(self) -> dict:
        ema = {"shadow": self.ema.shadow, "updates": self.ema.updates} if self.ema else None
        return {"optimizers": [opt.state_dict() for opt in self.opts],
                "schedulers": [sched.state_dict() for sched in self.scheds], "ema": ema, "last_lr": self.last_lr}

    def load_state_dict(self, state: dict) -> None:
        for opt, sched, opt_state, sched_state in zip(self.opts, self.scheds, state["optimizers"], state["schedulers"],
                                                      strict=True):
            opt.load_state_dict(opt_state)
            sched.load_state_dict(sched_state)
        if self.ema:
            for k, v in state["ema"]["shadow"].items():
                self.ema.shadow[k].copy_(v)
            self.ema.updates = state["ema"]["updates"]
        self.last_lr = state["last_lr"]


class Stopwatch:
    """A run's training time and its epoch's, continuing a resumed run's (Progress.elapsed, .epoch_seconds)."""

    def __init__(self, progress: Progress) -> None:
        self.run_start = time.perf_counter() - progress.elapsed
        self.start_epoch(progress)

    def start_epoch(self, progress: Progress) -> None:
        self.epoch_start = time.perf_counter() - progress.epoch_seconds

    def epoch(self) -> float:
        return time.perf_counter() - self.epoch_start

    def run(self) -> float:
        return time.perf_counter() - self.run_start

    def stamp(self, progress: Progress) -> None:
        """Write the times so far into a mid-epoch `progress`, for a save."""
        progress.epoch_seconds, progress.elapsed = self.epoch(), self.run()


class LossLog:
    """The losses of the steps since the last read, kept on the device until `read` copies them to the host."""

    def __init__(self, on_step: StepCallback | None) -> None:
        self.on_step = on_step
        self.pending: list[tuple[torch.Tensor, int]] = []  # (loss in nats a dimension, 0-d; images in its global batch)

    def add(self, loss: torch.Tensor, n_images: int) -> None:
        self.pending.append((loss, n_images))

    def read(self, progress: Progress) -> None:
        """Advance `progress` by the pending steps and tell `on_step` of each, in order: one wait for the device."""
        nats = torch.stack([loss for loss, _ in self.pending]).tolist()  # (steps,) float32: the floats .item() gives
        for (_, n_images), loss_nats in zip(self.pending, nats):
            loss_bpd = nats_to_bits_per_dim(loss_nats)
            progress.advance(n_images, loss_bpd)
            if self.on_step:
                self.on_step(progress.step, progress.epoch, loss_bpd)
        self.pending.clear()


class Checkpoints:
    """When `fit` saves the resume state, and the saving.

    At each epoch end, and at a read of the losses (between reads `progress` lags the weights) once `every`
    steps (train.checkpoint_every) or `seconds` of rank 0's clock have passed since the last save.  Every
    rank takes part in a save, for the state keeps every rank's RNGs; `on_save` (the same on every rank, or
    None on every rank) is called on rank 0.
    """

    def __init__(self, on_save: Callable[[dict], None] | None, step_fn: TrainStep, *, watch: Stopwatch, dist: Dist,
                 device: torch.device, every: int, seconds: float) -> None:
        self.on_save, self.step_fn, self.watch, self.dist, self.device = on_save, step_fn, watch, dist, device
        self.every, self.seconds = every, seconds
        self.last = time.monotonic()

    def by_steps(self, step: int) -> bool:
        """A save is due after `step` by train.checkpoint_every: its loss must be read then."""
        return self.on_save is not None and self.every > 0 and step % self.every == 0

    def after_read(self, progress: Progress) -> None:
        """Save mid-epoch if `every` steps or `seconds` have passed (rank 0's clock, which every rank follows)."""
        if self.on_save is None:
            return
        if self.by_steps(progress.step) or self.dist.agree(time.monotonic() - self.last >= self.seconds):
            self.watch.stamp(progress)
            self.save(progress)

    def save(self, progress: Progress) -> None:
        if self.on_save is None:
            return
        rngs = self.dist.gather(rng_state(self.device))
        if self.dist.main:
            self.on_save(capture(self.step_fn, progress, rngs))
        self.last = time.monotonic()


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    cfg: TrainConfig,
    *,
    device: torch.device,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
    eval_batch_size: int = 64,  # on a CPU 64 beats 256, which spills the cache (benchmarks/bench_eval_batch.py)
    on_save: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    dist: Dist | None = None,
    read_every: int = READ_EVERY,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> list[EpochRecord]:
    """Train `model` in place on its NLL (train.optimizer: Muon and AdamW, or AdamW); returns one record per epoch
    run (resumed ones too).

    With cfg.ema_decay > 0 the model ends up holding the EMA weights.  `on_step` hears of each step when its
    loss is read: every `read_every` steps, at mid-epoch saves and at each epoch end.  `on_save(state)` is called
    on rank 0 every cfg.checkpoint_every steps, every `checkpoint_seconds` and at each epoch end (`Checkpoints`);
    `resume` is such a state to continue from.
    """
    dist = dist or Dist(device=device)
    torch.manual_seed(dist.rank_seed(cfg.seed))  # dropout: every rank draws its own masks
    order = torch.Generator().manual_seed(cfg.seed)  # the data order: the same on every rank
    model.to(device).train()
    if resume is not None:
        model.load_state_dict(resume["model"])
    elif getattr(getattr(model, "config", None), "init", "default") == "data":  # model.init: data (PixelCNN++)
        first = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(cfg.seed))[:DATA_INIT_IMAGES]
        model.data_init(train.images[first].to(device),
                        train.labels[first].to(device) if is_conditional(model) else None)
    per_epoch = batches_per_epoch(len(train.images), cfg.batch_size)
    step_fn = TrainStep(dist.wrap(model), cfg, total_steps=per_epoch * cfg.epochs, module=model)
    progress = Progress(order=order.get_state())
    if resume is not None:
        step_fn.load_state_dict(resume["train_step"])
        progress = Progress.from_state(resume["progress"])
        set_rng_state(resume["rng"][dist.rank], device)
    eval_model = copy.deepcopy(model) if step_fn.ema else model  # holds the EMA weights for validation
    images = train.images.to(device)  # once: every batch is gathered on the device
    labels = train.labels.to(device) if is_conditional(model) else None
    watch = Stopwatch(progress)
    saves = Checkpoints(on_save, step_fn, watch=watch, dist=dist, device=device, every=cfg.checkpoint_every,
                        seconds=checkpoint_seconds)
    losses = LossLog(on_step)
    while not dist.agree(finished(progress, cfg)):
        watch.start_epoch(progress)
        order.set_state(progress.order)
        perm = torch.randperm(len(train.images), generator=order).to(device)
        batches = perm.split(cfg.batch_size)[:per_epoch]  # the global batches' indices, on the device
        _train_epoch(step_fn, batches, progress, images=images, labels=labels, dist=dist, losses=losses,
                     saves=saves, read_every=read_every)
        seconds = watch.epoch()
        val_bpd = _validate(step_fn, eval_model, val, dist=dist, batch_size=eval_batch_size, device=device)
        record = progress.next_epoch(val_bpd=val_bpd, seconds=seconds, lr=step_fn.last_lr, elapsed=watch.run(),
                                     order=order.get_state())
        if on_epoch:
            on_epoch(record, eval_model)
        saves.save(progress)
    if step_fn.ema:
        step_fn.ema.copy_to(model)
    model.eval()
    return progress.history


def _train_epoch(step_fn: TrainStep, batches: tuple[torch.Tensor, ...], progress: Progress, *, images: torch.Tensor,
                 labels: torch.Tensor | None, dist: Dist, losses: LossLog, saves: Checkpoints, read_every: int) -> None:
    """The epoch's batches from progress.batch on (`batches`: each global batch's indices, on the device).

    The losses are read every `read_every` steps, where a save is due by steps, and at the epoch's end; in
    between, nothing waits for the device.
    """
    for b in range(progress.batch, len(batches)):
        idx = dist.shard(batches[b])  # this rank's share of the global batch
        losses.add(_train_batch(step_fn, images, labels, idx, dist=dist), len(batches[b]))
        step = progress.step + len(losses.pending)
        if step % read_every == 0 or saves.by_steps(step) or b + 1 == len(batches):
            losses.read(progress)
            saves.after_read(progress)


def _train_batch(step_fn: TrainStep, images: torch.Tensor, labels: torch.Tensor | None, idx: torch.Tensor, *,
                 dist: Dist) -> torch.Tensor:
    """One optimizer step on images[idx]; its loss in nats a dimension, averaged over ranks, left on the device."""
    x = images.index_select(0, idx)
    y = labels.index_select(0, idx) if labels is not None else None
    return dist.mean(step_fn(x, y))


def _validate(step_fn: TrainStep, eval_model: nn.Module, val: Split, *, dist: Dist, batch_size: int,
              device: torch.device) -> float:
    """Rank 0's validation bits/dim of the weights `fit` returns (the EMA's, if any); NaN on the other ranks."""
    if not dist.main:
        return math.nan
    if step_fn.ema:
        step_fn.ema.copy_to(eval_model)
    return _val_bpd(eval_model, val, batch_size=batch_size, device=device)


def _val_bpd(model: nn.Module, val: Split, *, batch_size: int, device: torch.device) -> float:
    if not len(val.images):
        return math.nan
    labels = val.labels if is_conditional(model) else None
    nats = total_nll_nats(model, val.images, batch_size=batch_size, device=device, labels=labels)
    return bits_per_dim(nats, len(val.images), val.images[0].numel())
