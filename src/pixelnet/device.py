"""Which torch device a process runs on: `select_device(name)`, for train.device and the later stages ("auto").

Its own module, so that the stages that only load a model (sample, complete, evaluate) import nothing of
training, and a change to training does not make DVC run them again.
"""

from __future__ import annotations

import torch

from pixelnet.errors import PixelNetError


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """train.device -> this process's device: auto is CUDA when there is one; under torchrun, GPU LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cuda":
        return torch.device(name)
    if not torch.cuda.is_available():
        raise PixelNetError("train.device is cuda but PyTorch sees no CUDA device: set train.device=auto or cpu")
    if local_rank >= torch.cuda.device_count():
        raise PixelNetError(f"LOCAL_RANK {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                            "start at most that many processes per node (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)
