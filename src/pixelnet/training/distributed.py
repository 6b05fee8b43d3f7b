"""Data-parallel training under torchrun: the process group, each rank's device, and the few collectives it needs.

`torchrun --nproc_per_node N -m pixelnet train ...` starts N copies of the
command with WORLD_SIZE, RANK and LOCAL_RANK set.  `session` reads them, joins
the process group (gloo on the CPU; NCCL on CUDA, one GPU per process,
cuda:LOCAL_RANK) and leaves it at the end.  Without them the world is one
process, `Dist()`, and nothing here communicates: a single-process run is the
run it was before data parallelism existed.

How training uses it (loop.py): every rank draws the same seeded
permutation and takes the slice rank::world_size of each global batch, DDP
averages the gradients, and the reported loss is the mean over ranks.  With
equal shards that is the single-process update on the whole global batch, up
to float summation order, except for BatchNorm: each rank normalizes with its
own shard's statistics.  On CUDA BatchNorm becomes SyncBatchNorm, which
restores the global-batch statistics; on the CPU it stays per rank, because
SyncBatchNorm refuses CPU modules (torch 2.14.1).  Dropout is per rank too:
each rank seeds its own torch RNG (`rank_seed`), so the ranks draw different
masks, and the resume state keeps every rank's RNGs (`gather`).  Rank 0 (`Dist.main`) alone
writes files and talks to MLflow; the others only compute.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as torch_dist
from torch import nn

from pixelnet.device import select_device
from pixelnet.errors import ConfigError, PixelNetError

ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class Dist:
    """This process's place in the world, and the collectives training uses (no-ops in a world of one)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collectives' tensors live

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def rank_seed(self, seed: int) -> int:
        """The seed of this rank's own random draws (dropout masks): seed + rank.

        Rank 0 draws what a single-process run with this seed draws; the data order has a generator of its
        own, seeded alike on every rank.
        """
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
        """Every rank's `obj`, in rank order, on every rank (the RNG states that the resume state keeps per rank)."""
        if not self.enabled:
            return [obj]
        objs = [None] * self.world_size
        torch_dist.all_gather_object(objs, obj)
        return objs

    def share(self, data: bytes | None) -> bytes | None:
        """Rank 0's bytes (None: nothing) on every rank: the saved training state, which only rank 0 reads."""
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


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise PixelNetError(f"environment variable {name}={value!r} is not an integer: "
                            "start data-parallel training with torchrun, which sets it") from None


def from_env() -> tuple[int, int, int]:
    """(world_size, rank, local_rank) as torchrun sets them; (1, 0, 0) outside torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return 1, 0, 0
    missing = [k for k in ENV if k not in os.environ]
    if missing:
        raise PixelNetError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start data-parallel training "
                            "with torchrun (torchrun --nproc_per_node N -m pixelnet train ...), or unset WORLD_SIZE")
    world, rank, local = (_env_int(k) for k in ENV)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise PixelNetError(f"WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local} do not describe a world: "
                            "start data-parallel training with torchrun")
    return world, rank, local


def is_main_process() -> bool:
    """Rank 0, or a run outside torchrun: the process that writes files and talks to MLflow."""
    return from_env()[1] == 0


@contextmanager
def session(device_name: str, *, batch_size: int) -> Iterator[tuple[Dist, torch.device]]:
    """This process's Dist and device, inside the process group when torchrun started several processes."""
    world, rank, local = from_env()
    if batch_size % world:
        raise ConfigError(f"train.batch_size {batch_size} is not divisible by the {world} processes (WORLD_SIZE): "
                          f"each takes an equal share of every batch; choose a multiple of {world}")
    device = select_device(device_name, local)
    if world == 1:
        yield Dist(device=device), device
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", world_size=world, rank=rank)
    try:
        yield Dist(world_size=world, rank=rank, local_rank=local, device=device), device
    finally:
        torch_dist.destroy_process_group()
