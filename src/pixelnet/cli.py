"""The `pixelnet` command line: one thin command per pipeline stage.

Each command parses paths, loads and checks params.yaml (plus `--set
section.key=value` overrides) and calls the matching function in
`pixelnet.stages`.  User-fixable errors print one line naming the cause and
the fix, and exit with status 2; `--debug` (or PIXELNET_DEBUG=1) shows the
traceback instead.

MLflow is used only when asked for (`train --mlflow`, `--mlflow-run FILE` on the
later stages, as dvc.yaml does); then `pixelnet.tracking` wraps the stage.
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

# OpenMP threads that wait by spinning take the cores from the other thread of the same op when the machine is
# busy: on the shared 2-core machine, 64 fast samples went from 119x to 346x faster than naive with passive
# waiting (docs/sampling.md).  It must be set before torch loads OpenMP; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="PixelNet: PixelCNN-style image generation. Commands are the pipeline's stages.",
)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params.yaml with the data/model/train/sample/evaluate sections")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-S", help="override a parameter: section.key=value (repeatable)")]
MlflowRunOpt = Annotated[Path | None, typer.Option(
    "--mlflow-run", help="log into the MLflow run named by this run file, written by the stage before (as dvc.yaml does)")]


def _params(path: Path, overrides: list[str] | None):
    from pixelnet.config import load_params

    return load_params(path, overrides or [])


def _report(result: dict) -> None:
    typer.echo(json.dumps(result, indent=2, sort_keys=True))


@contextmanager
def _model_file(model: str) -> Iterator[Path]:
    """A checkpoint path as given, or a registry URI (models:/pixelnet@champion) downloaded for the command."""
    if not model.startswith(("models:/", "runs:/")):
        yield Path(model)
        return
    from pixelnet import tracking

    with tempfile.TemporaryDirectory(prefix="pixelnet-model-") as tmp:
        yield tracking.resolve_model(model, Path(tmp))


def _tracked(run_file: Path | None, stage: str, cfg, out: Path, work: Callable[[], dict], *,
             images: dict[str, str], champion: bool = False) -> dict:
    """work(), logged into the pipeline's MLflow run when a run file is given."""
    if run_file is None:
        return work()
    from pixelnet import tracking
    from pixelnet.schema import to_dict

    after = tracking.record_champion(out) if champion else None
    return tracking.track_stage(stage, run_file=run_file, out_dir=out, params=to_dict(cfg), work=work,
                                images=images, after=after)


@app.callback()
def root(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks for errors")] = False) -> None:
    if debug:
        os.environ["PIXELNET_DEBUG"] = "1"


@app.command()
def download(
    out: Annotated[Path, typer.Option(help="raw dataset directory to write, e.g. data/raw/mnist-5k")],
    params: ParamsOpt = Path("params.yaml"),
    cache: Annotated[Path, typer.Option(help="where torchvision datasets are downloaded or placed by hand")] = Path("data/external"),
    dataset: Annotated[str | None, typer.Option(help="override data.dataset")] = None,
    set_: SetOpt = None,
) -> None:
    """Fetch the raw dataset (data.dataset) into OUT in PixelNet's raw format."""
    from pixelnet import stages

    overrides = list(set_ or []) + ([f"data.dataset={dataset}"] if dataset else [])
    _report(stages.download(_params(params, overrides).data, out_dir=out, cache_dir=cache))


@app.command()
def preprocess(
    raw: Annotated[Path, typer.Option(help="raw dataset directory written by `download`")],
    out: Annotated[Path, typer.Option(help="directory for the preprocessed tensors, e.g. data/processed")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Resize, convert, quantize and split the raw dataset; write tensors and a manifest."""
    from pixelnet import stages

    manifest = stages.preprocess(_params(params, set_).data, raw_dir=raw, out_dir=out)
    _report({k: manifest[k] for k in ("dataset", "levels", "shape")} | {
        "counts": {s: v["count"] for s, v in manifest["splits"].items()}})


@app.command()
def validate(
    data: Annotated[Path, typer.Option(help="preprocessed data directory to check")],
    suite: Annotated[Path, typer.Option(help="the expectation suite, e.g. pipeline/expectations.yaml")],
    out: Annotated[Path, typer.Option(help="directory for summary.json and gx/ (GE results and Data Docs)")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Check the preprocessed tensors with Great Expectations (params: data); fail listing what failed."""
    from pixelnet.validation import validate as validate_data

    summary = validate_data(_params(params, set_).data, data_dir=data, suite_path=suite, out_dir=out)
    _report({k: summary[k] for k in ("success", "evaluated", "failed")})


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="preprocessed data directory")],
    model: Annotated[Path, typer.Option(help="checkpoint file to write, e.g. models/model.pt")],
    reports: Annotated[Path, typer.Option(help="directory for metrics.json, steps.csv, epochs.csv")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    validation: Annotated[Path | None, typer.Option(
        help="validation report directory written by `validate`: refuse data that failed or skipped it")] = None,
    mlflow: Annotated[bool, typer.Option(
        "--mlflow", help="track the run in MLflow, register the model, write REPORTS/mlflow_run.json")] = False,
    state: Annotated[Path | None, typer.Option(
        help="the resume state, saved as training goes and resumed after a kill "
             "[default: beside --model, MODEL's name with .state.pt]")] = None,
) -> None:
    """Train the model (params: model, train) and save a checkpoint; resumes a killed run from --state.

    Under `torchrun --nproc_per_node N -m pixelnet train ...` it trains data-parallel; rank 0 alone writes
    files and tracks in MLflow.
    """
    from pixelnet import stages
    from pixelnet.distributed import is_main_process

    p = _params(params, set_)
    if validation is not None:
        from pixelnet.validation import check_validated

        check_validated(validation, data)
    state = state if state is not None else model.with_name(f"{model.stem}.state.pt")
    work = lambda: stages.train(p, data_dir=data, model_path=model, reports_dir=reports, state_path=state)  # noqa: E731
    if not is_main_process():
        work()  # the other ranks of a torchrun job compute only: rank 0 reports, writes and tracks
        return
    if not mlflow:
        _report(work())
        return
    from pixelnet import tracking

    _report(tracking.track_train(p, data_dir=data, reports_dir=reports, model_path=model,
                                 validation_dir=validation, train=work))


@app.command()
def sample(
    model: Annotated[str, typer.Option(help="checkpoint to sample from, or a registered model: models:/pixelnet@champion")],
    out: Annotated[Path, typer.Option(help="directory for samples.npy, grid.png and sample.json")],
    params: ParamsOpt = Path("params.yaml"),
    method: Annotated[str | None, typer.Option(help="override sample.method: fast (cached) or naive; same images")] = None,
    label: Annotated[int | None, typer.Option(help="conditional models: draw only this class (overrides sample.label)")] = None,
    set_: SetOpt = None,
    mlflow_run: MlflowRunOpt = None,
) -> None:
    """Generate sample.n images pixel by pixel (params: sample)."""
    from pixelnet import stages

    overrides = list(set_ or []) + ([f"sample.method={method}"] if method else [])
    overrides += [f"sample.label={label}"] if label is not None else []
    cfg = _params(params, overrides).sample
    with _model_file(model) as path:
        work = lambda: stages.sample(cfg, model_path=path, out_dir=out)  # noqa: E731
        _report(_tracked(mlflow_run, "sample", cfg, out, work, images={"grid": "grid.png"}))


@app.command()
def complete(
    model: Annotated[Path, typer.Option(help="checkpoint to sample from")],
    data: Annotated[Path, typer.Option(help="preprocessed data directory (its test split is completed)")],
    out: Annotated[Path, typer.Option(help="directory for completions.npy, completions.png and complete.json")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    mlflow_run: MlflowRunOpt = None,
) -> None:
    """Keep the top complete.rows rows of test images and sample the rest (params: complete)."""
    from pixelnet import stages

    cfg = _params(params, set_).complete
    work = lambda: stages.complete(cfg, model_path=model, data_dir=data, out_dir=out)  # noqa: E731
    _report(_tracked(mlflow_run, "complete", cfg, out, work, images={"completions": "completions.png"}))


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="checkpoint to evaluate")],
    data: Annotated[Path, typer.Option(help="preprocessed data directory (its test split is used)")],
    samples: Annotated[Path, typer.Option(help="samples.npy written by `sample`")],
    train_reports: Annotated[Path, typer.Option(help="the training reports directory (steps.csv, epochs.csv)")],
    out: Annotated[Path, typer.Option(help="directory for metrics.json and figures")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    mlflow_run: MlflowRunOpt = None,
) -> None:
    """Test NLL in bits/dim, loss curves, and samples beside real test images."""
    from pixelnet import stages

    cfg = _params(params, set_).evaluate
    work = lambda: stages.evaluate(cfg, model_path=model, data_dir=data, samples_path=samples,  # noqa: E731
                                   train_reports=train_reports, out_dir=out)
    _report(_tracked(mlflow_run, "evaluate", cfg, out, work, champion=True,
                     images={"samples_vs_real": "samples_vs_real.png", "loss_curves": "loss_curves.png"}))


def main() -> None:
    """Entry point: run the app, turning user-fixable errors into one clean line."""
    debug = "--debug" in sys.argv or os.environ.get("PIXELNET_DEBUG") == "1"
    try:
        app()
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
