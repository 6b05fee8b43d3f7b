"""The validate stage: Great Expectations over data/processed/ (data/validation.py); failure stops the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pixelnet.command import ParamsOpt, SetOpt, report, run_command
from pixelnet.config import load_params
from pixelnet.data.validation import validate


def command(
    data: Annotated[Path, typer.Option(help="preprocessed data directory to check")],
    suite: Annotated[Path, typer.Option(help="the expectation suite, e.g. pipeline/expectations.yaml")],
    out: Annotated[Path, typer.Option(help="directory for summary.json and gx/ (GE results and Data Docs)")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Check the preprocessed tensors with Great Expectations (params: data); fail listing what failed."""
    summary = validate(load_params(params, set_).data, data_dir=data, suite_path=suite, out_dir=out)
    report({k: summary[k] for k in ("success", "evaluated", "failed")})


if __name__ == "__main__":
    run_command(command, prog="pixelnet validate")
