"""The complete stage: test images with their top rows kept and the rest sampled, several times each.

Writes completions.npy (uint8 levels, (N, K, C, H, W)), completions.png
(original | top rows only | completions, one line per image) and
complete.json; the time goes to timing.json, which nothing downstream reads.
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
from pixelnet.command import MlflowOpt, ParamsOpt, SetOpt, report_stage, run_command
from pixelnet.config import CompleteConfig, load_params
from pixelnet.data.processed import check_fits, load_split, read_manifest
from pixelnet.device import select_device
from pixelnet.errors import PixelNetError
from pixelnet.evaluation.figures import completion_grid, display_scale
from pixelnet.files import make_dir, write_json
from pixelnet.sampling import complete as complete_images


def complete(cfg: CompleteConfig, *, model_path: Path, data_dir: Path, out_dir: Path, device: str = "auto") -> dict:
    """Complete cfg.images test images from their top cfg.rows rows ("auto": half), cfg.per_image times each.

    The images are spread evenly through the test split (splits may be sorted
    by class, and the first ones would then all show one class).
    """
    model, mcfg = load_model(model_path, device=select_device(device))
    manifest = read_manifest(data_dir)
    check_fits(manifest, mcfg, model_path=model_path, data_dir=data_dir)
    rows = mcfg.height // 2 if cfg.rows == "auto" else cfg.rows
    if rows >= mcfg.height:
        raise PixelNetError(f"complete.rows={rows} keeps all {mcfg.height} rows, leaving nothing to sample: "
                            f"choose fewer than {mcfg.height}, or auto (half of them)")
    test = load_split(data_dir, "test", manifest)
    count = min(cfg.images, len(test.images))
    index = torch.arange(count) * len(test.images) // count  # evenly spaced, first one included
    images, labels = test.images[index], test.labels[index]
    t0 = time.perf_counter()
    completions = complete_images(
        model, images, rows=rows, completions=cfg.per_image, seed=cfg.seed, temperature=cfg.temperature,
        labels=labels if mcfg.conditional else None,
        progress=lambda steps: tqdm(steps, desc=f"complete {len(images)}x{cfg.per_image}", unit="row"),
    )
    seconds = time.perf_counter() - t0
    make_dir(out_dir)
    np.save(out_dir / "completions.npy", completions.numpy())
    completion_grid(images, completions, rows=rows, levels=mcfg.levels,
                    scale=display_scale(mcfg.height, mcfg.width)).save(out_dir / "completions.png")
    info = {"images": len(images), "per_image": cfg.per_image, "rows": rows, "temperature": cfg.temperature,
            "seed": cfg.seed, "levels": mcfg.levels, "test_indices": index.tolist()}
    write_json(out_dir / "complete.json", info)
    write_json(out_dir / "timing.json", {"complete_seconds": seconds})
    return info | {"complete_seconds": seconds}


def command(
    model: Annotated[Path, typer.Option(help="checkpoint to sample from")],
    data: Annotated[Path, typer.Option(help="preprocessed data directory (its test split is completed)")],
    out: Annotated[Path, typer.Option(help="directory for completions.npy, completions.png and complete.json")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    mlflow: MlflowOpt = False,
) -> None:
    """Keep the top complete.rows rows of test images and sample the rest (params: complete)."""
    cfg = load_params(params, set_).complete
    report_stage("complete", lambda: complete(cfg, model_path=model, data_dir=data, out_dir=out), mlflow=mlflow,
                 model_path=model, out_dir=out, params=cfg, images={"completions": "completions.png"})


if __name__ == "__main__":
    run_command(command, prog="pixelnet complete")
