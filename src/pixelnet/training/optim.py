"""train.optimizer: AdamW, or Muon for the conv filters with AdamW for the rest (gains, biases, embeddings).

Muon (Jordan et al. 2024; the optimizer of the nanoGPT and CIFAR-10 speedruns) follows the momentum of each
filter, viewed as a (Cout, Cin * kh * kw) matrix, orthogonalized by a Newton-Schulz iteration.  It is
torch.optim.Muon's update (the same coefficients, Nesterov momentum 0.95, decoupled weight decay, and the
step scaled as `adjust_lr_fn="match_rms_adamw"`: 0.2 * sqrt(max(rows, columns)), so that one train.lr serves
both optimizers), computed here for every filter of one shape at once (one batched iteration a shape, where
torch's runs one a filter: a tenth of the small matrix products), and in float32 on a CPU, where torch's
bfloat16 is emulated, and so a hundred times slower, on CPUs without AVX-512 BF16 or AMX.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import nn

from pixelnet.config import TrainConfig

NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)  # torch.optim.Muon's (Keller Jordan's) quintic iteration
NS_STEPS = 5
MOMENTUM = 0.95


def make_optimizers(module: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """train.optimizer's: AdamW (decay on the filters only), or Muon for the filters and AdamW for the rest."""
    filters, rest = split_filters(module)
    adam = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    if cfg.optimizer == "muon":
        return [torch.optim.AdamW(rest, weight_decay=0.0, **adam), Muon(filters, lr=cfg.lr,
                                                                         weight_decay=cfg.weight_decay)]
    groups = [{"params": filters, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return [torch.optim.AdamW([g for g in groups if g["params"]], **adam)]


def split_filters(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The conv filters (weights of 2+ dims: not biases, weight normalization's gains or embeddings) and the rest."""
    embeddings = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    filters, rest = [], []
    for name, p in module.named_parameters():
        is_filter = p.dim() >= 2 and not name.endswith("original0") and id(p) not in embeddings
        (filters if is_filter else rest).append(p)
    return filters, rest


def orthogonalize(g: torch.Tensor, steps: int = NS_STEPS, eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz's approximate U V^T of each (m, n) matrix of g (B, m, n), as torch.optim.Muon computes it."""
    a, b, c = NS_COEFFICIENTS
    wide = g.shape[-2] <= g.shape[-1]
    x = g if wide else g.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.mT


class Muon(torch.optim.Optimizer):
    """Muon for conv filters (any layout), batched by matrix shape; the state is one momentum buffer a filter."""

    def __init__(self, params, *, lr: float, weight_decay: float = 0.0, momentum: float = MOMENTUM) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
            by_shape: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum)  # Nesterov
                rows = p.shape[0]
                by_shape[(rows, p.numel() // rows, p.device)].append((p, update.reshape(rows, -1)))
            for (rows, cols, device), items in by_shape.items():
                dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
                ortho = orthogonalize(torch.stack([u for _, u in items]).to(dtype))
                scale = lr * 0.2 * math.sqrt(max(rows, cols))  # match_rms_adamw
                for (p, _), o in zip(items, ortho):
                    if decay:  # train.weight_decay's default 0 skips a pass over every filter
                        p.mul_(1 - lr * decay)
                    p.add_(o.reshape(p.shape).to(p.dtype), alpha=-scale)
