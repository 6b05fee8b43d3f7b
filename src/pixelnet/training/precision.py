"""train.precision: which floating-point format the forward pass computes in, and what `auto` picks.

bf16 runs the forward pass under bfloat16 autocast: convolutions and matmuls
take bf16 inputs and accumulate in float32.  The parts that shape the
likelihood stay in float32 whatever the precision (model/layers.py
`in_float32`: every architecture's output head), and so does the loss.

`auto` picks bf16 only where it was measured faster than float32 (docs/training.md,
benchmarks/bench_training_pp.py):

- a CPU with AMX (`amx_bf16`) or AVX-512 BF16 (`avx512_bf16`) instructions, which
  oneDNN uses for bf16 convolutions (2.5x float32's matmul speed with AVX-512 BF16
  alone, 5-8x with AMX);
- a CUDA device that supports bf16 (compute capability 8.0 and newer).

Everywhere else bf16 is emulated and slower, so `auto` is fp32.  The resolved
precision is what the run records (train's metrics.json, MLflow's params).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with native bf16 dot products


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where that file is missing)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)


def emulated_bf16_warning(precision: str, device: torch.device) -> str | None:
    """A warning for train.precision: bf16 set by hand on a CPU whose flags show no native bf16 (None otherwise,
    and None where the flags cannot be read: no guessing)."""
    if precision != "bf16" or device.type != "cpu" or not cpu_flags() or cpu_has_native_bf16():
        return None
    return (f"warning: train.precision is bf16, but this CPU has neither {' nor '.join(CPU_BF16_FLAGS)} in "
            "/proc/cpuinfo, so bf16 is emulated here and trains many times slower than fp32 (one measured AVX2 "
            "machine: bf16 matmul 0.11 GFLOP/s against 35 for fp32); set train.precision: auto or fp32")


def resolve_precision(precision: str, device: torch.device) -> str:
    """train.precision for `device`: "auto" is bf16 where it runs natively (module docstring), else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
