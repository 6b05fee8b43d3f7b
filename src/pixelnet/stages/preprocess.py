"""The preprocess stage: raw images resized, converted, quantized and split into data/processed/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pixelnet.command import ParamsOpt, SetOpt, report, run_command
from pixelnet.config import DataConfig, load_params
from pixelnet.data.preprocess import preprocess as preprocess_data


def preprocess(cfg: DataConfig, *, raw_dir: Path, out_dir: Path) -> dict:
    """Write out_dir from raw_dir; returns the manifest."""
    return preprocess_data(cfg, raw_dir, out_dir)


def command(
    raw: Annotated[Path, typer.Option(help="raw dataset directory written by `download`")],
    out: Annotated[Path, typer.Option(help="directory for the preprocessed tensors, e.g. data/processed")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Resize, convert, quantize and split the raw dataset; write tensors and a manifest."""
    manifest = preprocess(load_params(params, set_).data, raw_dir=raw, out_dir=out)
    report({k: manifest[k] for k in ("dataset", "levels", "shape")} | {
        "counts": {s: v["count"] for s, v in manifest["splits"].items()}})


if __name__ == "__main__":
    run_command(command, prog="pixelnet preprocess")
