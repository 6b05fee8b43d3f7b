"""The hardware line a benchmark prints beside its figures: the CPU and the flags that matter, the GPU, torch."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")  # bf16 matrix units, native bf16, vector width


def describe() -> str:
    """One line: CPU model, CPUs, threads, OpenMP's wait policy, FLAGS present or not, torch, the GPU if any."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())  # the first CPU's
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    have = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in FLAGS) if flags else "CPU flags unknown"
    gpu = f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{info.get('model name') or platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
            f"{have}; torch {torch.__version__} (ATen CPU capability {torch.backends.cpu.get_cpu_capability()}){gpu}")
