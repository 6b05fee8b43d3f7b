"""The training loop (`fit`) and what it is made of: the step, the schedule, the EMA, the run's progress, its ranks.

`fit` knows nothing of files or MLflow: it trains a model on two splits of integer-level images and reports
each step, epoch and save to optional callbacks (stages/train.py wires in the reports and the resume state).
The training split moves to the device once; batches are gathered there by slices of a seeded permutation,
so a seeded run repeats exactly.  Nothing waits for the device between two reads of the losses (every
READ_EVERY steps, where a save is due, and at each epoch end).  The state handed to `on_save` (`capture`)
lets `fit(resume=state)` end bit for bit where the uninterrupted run ends.  Under torchrun (`Dist`) every
rank trains on its slice of each global batch with dropout masks of its own and keeps its RNGs in the saved
state; rank 0 alone validates and hands the state to `on_save`, and decisions that depend on its clock are broadcast.
"""

from __future__ import annotations

import copy
import functools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
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
from pixelnet.training.optim import make_optimizers

DATA_INIT_IMAGES = 128  # images of the one forward pass of a data-dependent init (openai's: 100)
READ_EVERY = 10  # optimizer steps between reads of the losses to the host, the loop's one wait for the device
# Seconds of rank 0's clock after which the resume state is saved even before checkpoint_every steps have passed:
# it bounds the training a kill loses where steps are slow (the CIFAR-10 preset saves every 2000 steps).
CHECKPOINT_SECONDS = 300.0
EVAL_BATCH_SIZE = 64  # on a CPU 64 beats 256, which spills the cache (benchmarks/bench_sampling.py, forward images/s)
STATE_FORMAT = 3  # the layout of `capture`'s dict (2: one RNG state a rank; 3: a list of optimizers)

StepCallback = Callable[[int, int, float], None]  # (step, epoch, loss in bits/dim)
EpochCallback = Callable[["EpochRecord", nn.Module], None]  # (the epoch, the model holding the weights it validated)


def fit(model: nn.Module, train: Split, val: Split, cfg: TrainConfig, *, device: torch.device,
        on_step: StepCallback | None = None, on_epoch: EpochCallback | None = None,
        on_save: Callable[[dict], None] | None = None, resume: dict | None = None,
        dist: Dist | None = None) -> list[EpochRecord]:
    """Train `model` in place on its NLL; returns one record per epoch run (resumed ones too).

    With cfg.ema_decay > 0 the model ends up holding the EMA weights.  `on_step` hears of each step when its
    loss is read.  `on_save(state)` is called on rank 0 at each epoch end and, at a read, once
    cfg.checkpoint_every steps or CHECKPOINT_SECONDS have passed since the last save; `resume` is such a state.
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
    pending: list[tuple[torch.Tensor, int]] = []  # the unread steps: (loss in nats a dimension, 0-d; batch size)
    run_start, last_save = time.perf_counter() - progress.elapsed, time.monotonic()

    def save() -> None:  # every rank takes part: the state keeps every rank's RNGs
        nonlocal last_save
        rngs = dist.gather(rng_state(device))
        if dist.main:
            on_save(capture(step_fn, progress, rngs))
        last_save = time.monotonic()

    while not dist.agree(finished(progress, cfg)):
        epoch_start = time.perf_counter() - progress.epoch_seconds
        order.set_state(progress.order)
        perm = torch.randperm(len(train.images), generator=order).to(device)
        batches = perm.split(cfg.batch_size)[:per_epoch]  # the global batches' indices, on the device
        for b in range(progress.batch, per_epoch):  # from the batch a resumed run stopped at
            idx = dist.shard(batches[b])  # this rank's share of the global batch
            x = images.index_select(0, idx)
            y = labels.index_select(0, idx) if labels is not None else None
            pending.append((dist.mean(step_fn(x, y)), len(batches[b])))
            step = progress.step + len(pending)
            save_due = on_save is not None and cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0
            if step % READ_EVERY == 0 or save_due or b + 1 == per_epoch:  # between reads `progress` lags the weights
                read_losses(pending, progress, on_step)
                if on_save is not None and (save_due or dist.agree(time.monotonic() - last_save >= CHECKPOINT_SECONDS)):
                    progress.epoch_seconds = time.perf_counter() - epoch_start
                    progress.elapsed = time.perf_counter() - run_start
                    save()
        seconds = time.perf_counter() - epoch_start
        val_bpd = math.nan  # rank 0 alone validates, the weights `fit` returns (the EMA's, if any)
        if dist.main:
            if step_fn.ema:
                step_fn.ema.copy_to(eval_model)
            val_bpd = validation_bpd(eval_model, val, device=device)
        record = progress.next_epoch(val_bpd=val_bpd, seconds=seconds, lr=step_fn.last_lr,
                                     elapsed=time.perf_counter() - run_start, order=order.get_state())
        if on_epoch:
            on_epoch(record, eval_model)
        if on_save is not None:
            save()
    if step_fn.ema:
        step_fn.ema.copy_to(model)
    model.eval()
    return progress.history


def batches_per_epoch(n_images: int, batch_size: int) -> int:
    """Full batches only (at least one): every step has the same shape, which torch.compile needs."""
    return max(1, n_images // batch_size)


def read_losses(pending: list[tuple[torch.Tensor, int]], progress: Progress, on_step: StepCallback | None) -> None:
    """Advance `progress` by the pending steps and tell `on_step` of each, in order: one wait for the device."""
    nats = torch.stack([loss for loss, _ in pending]).tolist()  # (steps,) float32: the floats .item() gives
    for (_, n_images), loss_nats in zip(pending, nats):
        loss_bpd = nats_to_bits_per_dim(loss_nats)
        progress.advance(n_images, loss_bpd)
        if on_step:
            on_step(progress.step, progress.epoch, loss_bpd)
    pending.clear()


def validation_bpd(model: nn.Module, val: Split, *, device: torch.device) -> float:
    if not len(val.images):
        return math.nan
    labels = val.labels if is_conditional(model) else None
    nats = total_nll_nats(model, val.images, batch_size=EVAL_BATCH_SIZE, device=device, labels=labels)
    return bits_per_dim(nats, len(val.images), val.images[0].numel())


class TrainStep:
    """One optimizer step on a batch (loss, backward, optimizers, schedule, EMA): what `fit` repeats, benchmarks time.

    `model` is what the forward pass runs through (under torchrun, the DDP wrapper); `module` the network
    itself, whose weights the EMA averages (default: `model`).  The forward pass runs under bfloat16 autocast
    where train.precision resolves to bf16; the loss is computed in float32.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, *, total_steps: int,
                 module: nn.Module | None = None) -> None:
        self.module = model if module is None else module
        loss = functools.partial(mean_nll_nats, self.module.distribution)  # the NLL under its own distribution
        self.opts = make_optimizers(self.module, cfg)
        warmup = round(cfg.warmup_fraction * total_steps)
        schedule = functools.partial(lr_factor, total_steps=total_steps, schedule=cfg.lr_schedule,
                                     warmup_steps=warmup, decay=cfg.lr_decay)
        self.scheds = [torch.optim.lr_scheduler.LambdaLR(opt, schedule) for opt in self.opts]
        self.ema = EMA(self.module, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.shift = cfg.shift
        device = next(self.module.parameters()).device
        bf16 = resolve_precision(cfg.precision, device) == "bf16"

        def loss_of(x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
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

    The decay ramps up as min(decay, (1 + t) / (10 + t)) over updates t, so that in a short run the random
    initial weights fade out quickly.  Integer state (BatchNorm's batch counter) is copied, not averaged.  It
    holds references to the model's own tensors, so build it once the model is on its device (`Module.to`
    replaces buffers).
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


CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with native bf16 dot products


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where that file is missing)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return next((frozenset(line.partition(":")[2].split()) for line in text.splitlines() if line.startswith("flags")),
                frozenset())


def resolve_precision(precision: str, device: torch.device) -> str:
    """train.precision for `device`: auto is bf16 where bf16 runs natively, which was measured faster than fp32
    (docs/training.md): a CPU with AMX or AVX-512 BF16, a CUDA device of compute capability 8.0 or newer."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return "bf16" if device.type == "cpu" and native_bf16(cpu_flags()) else "fp32"


def native_bf16(flags: frozenset[str]) -> bool:
    return any(f in flags for f in CPU_BF16_FLAGS)


def emulated_bf16_warning(precision: str, device: torch.device) -> str | None:
    """A warning for train.precision: bf16 set by hand on a CPU whose flags show no native bf16 (None otherwise,
    and None where the flags cannot be read: no guessing)."""
    flags = cpu_flags()
    if precision != "bf16" or device.type != "cpu" or not flags or native_bf16(flags):
        return None
    return (f"warning: train.precision is bf16, but this CPU has neither {' nor '.join(CPU_BF16_FLAGS)} in "
            "/proc/cpuinfo, so bf16 is emulated here and trains many times slower than fp32 (one measured AVX2 "
            "machine: bf16 matmul 0.11 GFLOP/s against 35 for fp32); set train.precision: auto or fp32")


# ---- the run's progress, its end, and the full state a save captures ----

@dataclass
class EpochRecord:
    """One finished epoch, as the run's history keeps it."""

    epoch: int
    step: int
    train_bpd: float
    val_bpd: float
    seconds: float
    images_per_s: float
    lr: float  # the learning rate of the epoch's last step
    elapsed_seconds: float  # since fit began, validation included: what train.max_minutes is checked against


@dataclass
class Progress:
    """Where a run stands between two optimizer steps, besides its weights, optimizer and RNGs.

    The data order is kept as the order generator's state at the start of the epoch in progress: a resumed
    run draws the permutation again and skips the batches done.
    """

    epoch: int = 1  # the epoch in progress, from 1
    batch: int = 0  # its batches done
    step: int = 0  # optimizer steps done in all
    loss_sum: float = 0.0  # the epoch's sum of batch loss (bits/dim) x batch size, so far
    seen: int = 0  # the epoch's images so far
    epoch_seconds: float = 0.0  # the epoch's training time so far
    elapsed: float = 0.0  # the run's time so far, validation and earlier sessions included
    order: torch.Tensor | None = None  # the data-order generator's state at the start of `epoch`
    history: list[EpochRecord] = field(default_factory=list)

    def to_state(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "history"} | {
            "history": [vars(r) for r in self.history]}

    @classmethod
    def from_state(cls, state: dict) -> Progress:
        return cls(**{k: v for k, v in state.items() if k != "history"},
                   history=[EpochRecord(**r) for r in state["history"]])

    def advance(self, n_images: int, loss_bpd: float) -> None:
        """One optimizer step done, on a (global) batch of n_images with this loss in bits/dim."""
        self.step, self.batch = self.step + 1, self.batch + 1
        self.loss_sum += loss_bpd * n_images
        self.seen += n_images

    def next_epoch(self, *, val_bpd: float, seconds: float, lr: float, elapsed: float,
                   order: torch.Tensor) -> EpochRecord:
        """Close the epoch in progress (`lr`: its last step's; `elapsed`: the run's time so far, validation
        included; `order`: the data order's state for the next epoch, which starts here); returns its record."""
        record = EpochRecord(self.epoch, self.step, self.loss_sum / self.seen, val_bpd, seconds, self.seen / seconds,
                             lr, elapsed)
        self.history.append(record)
        self.epoch, self.batch, self.loss_sum, self.seen = self.epoch + 1, 0, 0.0, 0
        self.epoch_seconds, self.elapsed, self.order = 0.0, elapsed, order
        return record


def finished(progress: Progress, cfg: TrainConfig) -> bool:
    """At an epoch boundary, with every epoch done or the time budget spent.

    train.max_minutes binds where the next epoch would end past the budget at the average pace so far, so it
    is checked only between epochs, and again when a saved run starts.
    """
    history = progress.history
    if progress.batch or not history:
        return False
    elapsed = history[-1].elapsed_seconds
    budget_spent = cfg.max_minutes is not None and elapsed + elapsed / len(history) > 60 * cfg.max_minutes
    return len(history) >= cfg.epochs or budget_spent


def rng_state(device: torch.device) -> dict:
    """Every RNG a run could draw from, as tensors and plain types (weights_only-loadable)."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n, p = state["numpy"], state["python"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))


def capture(step_fn: TrainStep, progress: Progress, rngs: list[dict]) -> dict:
    """The full state of a run, as tensors and plain types (rngs: every rank's `rng_state`, in rank order).

    Its tensors are the live ones: save or copy them at once.
    """
    return {"format": STATE_FORMAT, "model": step_fn.module.state_dict(), "train_step": step_fn.state_dict(),
            "rng": rngs, "progress": progress.to_state()}


# ---- data parallelism ----

@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun world, and the collectives training uses (no-ops in a world of one).

    Every rank draws the same permutation and takes the slice rank::world_size of each global batch; DDP
    averages the gradients.  With equal shards that is the single-process update up to float summation order,
    except for BatchNorm: on CUDA it becomes SyncBatchNorm, on the CPU (which SyncBatchNorm refuses) each
    rank normalizes with its own shard's statistics.
    """

    world_size: int = 1
    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collectives' tensors live

    @property
    def main(self) -> bool:
        """Rank 0: the process that validates and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def rank_seed(self, seed: int) -> int:
        """The seed of this rank's own random draws (dropout masks): rank 0 draws what a single process draws."""
        return seed + self.rank

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's images of a global batch: every world_size-th, from position rank."""
        return index[self.rank::self.world_size] if self.enabled else index

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model DDP-wrapped (gradients averaged over ranks), BatchNorm synchronized on CUDA; itself alone."""
        if not self.enabled:
            return model
        if self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over ranks."""
        if not self.enabled:
            return value
        total = value.detach().clone()
        torch_dist.all_reduce(total, op=torch_dist.ReduceOp.SUM)
        return total / self.world_size

    def agree(self, flag: bool) -> bool:
        """Rank 0's flag on every rank (decisions that depend on its clock, such as the time budget)."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        torch_dist.broadcast(t, src=0)
        return bool(t.item())

    def gather(self, obj: object) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        objs = [None] * self.world_size
        torch_dist.all_gather_object(objs, obj)
        return objs

    def share(self, data: bytes | None) -> bytes | None:
        """Rank 0's bytes (None: nothing) on every rank."""
        if not self.enabled:
            return data
        size = torch.tensor([-1 if data is None else len(data)], dtype=torch.long, device=self.device)
        torch_dist.broadcast(size, src=0)
        n = int(size.item())
        if n < 0:
            return None
        buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device) if self.main
               else torch.empty(n, dtype=torch.uint8, device=self.device))
        torch_dist.broadcast(buf, src=0)
        return buf.cpu().numpy().tobytes()

    def barrier(self) -> None:
        if not self.enabled:
            return
        if self.device.type == "cuda":
            torch_dist.barrier(device_ids=[self.device.index])
        else:
            torch_dist.barrier()
