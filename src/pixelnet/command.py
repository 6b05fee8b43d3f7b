"""What every `pixelnet` command shares: its common options, the JSON report, clean errors.

A stage module (pixelnet.stages.*) defines one Typer command, `command`, run by `run_command` as
`python -m pixelnet.stages.NAME` (dvc.yaml's form) and by `pixelnet NAME` (cli.py).  User-fixable errors
print one line naming the cause and the fix and exit with status 2; `--debug` (or PIXELNET_DEBUG=1) shows the
traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from pixelnet.errors import PixelNetError

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="the params file, params.yaml")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-S", help="override a parameter: section.key=value "
                                                                      "(repeatable)")]
MlflowOpt = Annotated[bool, typer.Option(
    "--mlflow", help="log into this pipeline execution's MLflow run (found by the hash of the model it used)")]


def report(result: dict) -> None:
    typer.echo(json.dumps(result, indent=2, sort_keys=True))


def report_stage(stage: str, work: Callable[[], dict], *, mlflow: bool, **tracking) -> None:
    """Run a later stage's `work` and print its results; with --mlflow inside the pipeline's MLflow run.

    `tracking`: the keywords of pixelnet.tracking.runs.track_stage (model_path, out_dir, params, images, ...).
    """
    if not mlflow:
        report(work())
        return
    from pixelnet.tracking.runs import track_stage

    report(track_stage(stage, work=work, **tracking))


@contextmanager
def model_file(model: str) -> Iterator[Path]:
    """A checkpoint path as given, or a registry URI (models:/pixelnet@champion) downloaded for the command."""
    if not model.startswith(("models:/", "runs:/")):
        yield Path(model)
        return
    from pixelnet.tracking.registry import resolve_model

    with tempfile.TemporaryDirectory(prefix="pixelnet-model-") as tmp:
        yield resolve_model(model, Path(tmp))


def app_for(fn: Callable, *, help: str | None = None) -> typer.Typer:
    """A Typer app whose only command is `fn` (run without naming it)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=help)
    app.command()(fn)
    return app


def run_app(app: typer.Typer, *, prog: str | None = None, args: list[str] | None = None) -> None:
    """Run a Typer app, turning user-fixable errors into one clean line and exit status 2."""
    args = list(sys.argv[1:] if args is None else args)
    if "--debug" in args:
        args.remove("--debug")
        os.environ["PIXELNET_DEBUG"] = "1"
    debug = os.environ.get("PIXELNET_DEBUG") == "1"
    try:
        app(args=args, prog_name=prog)
    except PixelNetError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OSError as e:
        if debug:
            raise
        where = f" {e.filename}" if e.filename else ""
        typer.echo(f"error: cannot access{where}: {e.strerror or e}. Check the path and its permissions.", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


def run_command(fn: Callable, *, prog: str | None = None) -> None:
    """Run one stage's command as a program (`python -m pixelnet.stages.NAME ...`)."""
    run_app(app_for(fn), prog=prog)
