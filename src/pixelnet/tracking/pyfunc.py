"""The loader_module of a registered PixelNet model: `mlflow.pyfunc.load_model` gets a PixelNetPyfunc from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class PixelNetPyfunc:
    """predict(images) -> bits/dim per image, images integer levels (N, C, H, W) or (N, C*H*W) (DataFrame rows too).

    A class-conditional model scores -log p(x | y) given params={"labels": [...]} (one class per image), else
    -log p(x) = -log sum_y p(y) p(x | y), p(y) the train split's class frequencies saved in the checkpoint.  Bad
    labels raise MLflow's INVALID_PARAMETER_VALUE naming them: a 400 from `mlflow models serve`.
    """

    def __init__(self, checkpoint: str) -> None:
        from pixelnet.checkpoint import load_model, read_checkpoint
        from pixelnet.device import select_device

        self.device = select_device("auto")  # a GPU where the server has one
        self.model, self.config = load_model(Path(checkpoint), device=self.device)
        self.class_prior = read_checkpoint(Path(checkpoint))["meta"].get("class_prior")

    def predict(self, model_input: Any, params: dict | None = None) -> np.ndarray:
        import torch

        from pixelnet.model.likelihood import bits_per_dim, marginal_nll_nats, nll_nats

        c = self.config
        x = torch.as_tensor(np.asarray(model_input, dtype=np.int64)).reshape(-1, c.image_channels, c.height, c.width)
        x = x.to(self.device)
        labels = list((params or {}).get("labels") or []) or None
        dims = x[0].numel()
        if labels is not None:
            from mlflow.exceptions import MlflowException

            if not c.conditional:
                raise MlflowException.invalid_parameter_value(
                    "params.labels: this model is unconditional and takes no labels; leave them out")
            if len(labels) != len(x) or not all(0 <= int(k) < c.n_classes for k in labels):
                raise MlflowException.invalid_parameter_value(
                    f"params.labels must hold one class in 0 .. {c.n_classes - 1} per image ({len(x)} images), "
                    f"got {labels}")
        if c.conditional and labels is None:
            if self.class_prior is None:
                raise ValueError("this class-conditional model has no saved class prior: pass params={'labels': [...]}")
            nats = marginal_nll_nats(self.model, x, prior=torch.tensor(self.class_prior), batch_size=64,
                                     device=self.device)
            return np.asarray([bits_per_dim(float(v), 1, dims) for v in nats])
        scores = []
        with torch.no_grad():
            for i in range(len(x)):
                xi = x[i:i + 1]
                label = torch.as_tensor([labels[i]], device=self.device) if labels is not None else None
                out = self.model(xi, label) if label is not None else self.model(xi)
                scores.append(bits_per_dim(float(nll_nats(self.model.distribution, out, xi, reduction="sum")), 1, dims))
        return np.asarray(scores)


def _load_pyfunc(data_path: str) -> PixelNetPyfunc:
    """MLflow's loader_module hook."""
    return PixelNetPyfunc(data_path)
