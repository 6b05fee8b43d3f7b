"""The sample stage: sample.n images drawn pixel by pixel from the trained model, and their grid.

Writes samples.npy (uint8 levels, (N, C, H, W)), labels.npy (the class each
image was drawn for, -1 for an unconditional model), grid.png and sample.json;
the sampling time goes to timing.json, which nothing downstream reads.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from tqdm.auto import tqdm

from pixelnet.checkpoint import load_model
from pixelnet.command import MlflowOpt, ParamsOpt, SetOpt, model_file, report_stage, run_command
from pixelnet.config import SampleConfig, load_params
from pixelnet.device import select_device
from pixelnet.evaluation.figures import class_grid
from pixelnet.files import make_dir, write_json
from pixelnet.sampling import sample_fast, sample_labels, sample_naive, sampling_noise


def sample(cfg: SampleConfig, *, model_path: Path, out_dir: Path, device: str = "auto") -> dict:
    """Draw cfg.n images; write samples.npy, labels.npy, grid.png, sample.json and timing.json."""
    model, mcfg = load_model(model_path, device=select_device(device))
    labels, per_row = sample_labels(cfg, mcfg)
    noise = sampling_noise(cfg.n, mcfg.image_channels, mcfg.height, mcfg.width, seed=cfg.seed)
    progress = lambda rows: tqdm(rows, desc=f"sample {cfg.n} ({cfg.method})", unit="row")  # noqa: E731
    t0 = time.perf_counter()
    draw = sample_fast if cfg.method == "fast" else sample_naive
    images = draw(model, noise, temperature=cfg.temperature, labels=labels, progress=progress)
    seconds = time.perf_counter() - t0
    make_dir(out_dir)
    np.save(out_dir / "samples.npy", images.numpy())
    np.save(out_dir / "labels.npy", (labels if labels is not None else torch.full((cfg.n,), -1)).numpy().astype(np.int64))
    classes = [str(k) for k in range(mcfg.n_classes)] if per_row else None  # the classes take turns
    class_grid(images, mcfg.levels, classes=classes).save(out_dir / "grid.png")
    info = {"n": cfg.n, "method": cfg.method, "temperature": cfg.temperature, "seed": cfg.seed,
            "levels": mcfg.levels, "label": cfg.label, "conditional": mcfg.conditional}
    write_json(out_dir / "sample.json", info)
    write_json(out_dir / "timing.json", {"sample_seconds": seconds})
    return info | {"sample_seconds": seconds}


def command(
    model: Annotated[str, typer.Option(help="checkpoint to sample from, or a registered model: models:/pixelnet@champion")],
    out: Annotated[Path, typer.Option(help="directory for samples.npy, grid.png and sample.json")],
    params: ParamsOpt = Path("params.yaml"),
    method: Annotated[str | None, typer.Option(help="override sample.method: fast (cached) or naive; same images")] = None,
    label: Annotated[int | None, typer.Option(help="conditional models: draw only this class (overrides sample.label)")] = None,
    set_: SetOpt = None,
    mlflow: MlflowOpt = False,
) -> None:
    """Generate sample.n images pixel by pixel (params: sample)."""
    overrides = list(set_ or []) + ([f"sample.method={method}"] if method else [])
    overrides += [f"sample.label={label}"] if label is not None else []
    cfg = load_params(params, overrides).sample
    with model_file(model) as path:
        report_stage("sample", lambda: sample(cfg, model_path=path, out_dir=out), mlflow=mlflow, model_path=path,
                     out_dir=out, params=cfg, images={"grid": "grid.png"}, publishes={"samples_sha256": out / "samples.npy"})


if __name__ == "__main__":
    run_command(command, prog="pixelnet sample")
