"""The download stage: data.dataset's raw images and labels, in PixelNet's raw format (data/rawformat.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pixelnet.command import ParamsOpt, SetOpt, report, run_command
from pixelnet.config import DataConfig, load_params
from pixelnet.data.rawformat import write_raw
from pixelnet.data.sources import load_source


def download(cfg: DataConfig, *, out_dir: Path, cache_dir: Path) -> dict:
    """data/raw/<dataset>/ from the configured source."""
    raw = load_source(cfg.dataset, cache_dir=cache_dir, folder=cfg.folder, size=cfg.size, fit=cfg.fit)
    write_raw(raw, out_dir, name=cfg.dataset)
    counts = {"train": len(raw.train.labels), "test": len(raw.test.labels) if raw.test else 0}
    return {"dataset": cfg.dataset, "images": counts, "shape": list(raw.train.images.shape[1:])}


def command(
    out: Annotated[Path, typer.Option(help="raw dataset directory to write, e.g. data/raw/mnist-5k")],
    params: ParamsOpt = Path("params.yaml"),
    cache: Annotated[Path, typer.Option(help="where torchvision datasets are downloaded or placed by hand")] = Path("data/external"),
    dataset: Annotated[str | None, typer.Option(help="override data.dataset")] = None,
    set_: SetOpt = None,
) -> None:
    """Fetch the raw dataset (data.dataset) into OUT in PixelNet's raw format."""
    overrides = list(set_ or []) + ([f"data.dataset={dataset}"] if dataset else [])
    report(download(load_params(params, overrides).data, out_dir=out, cache_dir=cache))


if __name__ == "__main__":
    run_command(command, prog="pixelnet download")
