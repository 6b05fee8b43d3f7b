"""The `pixelnet serve` command: load a checkpoint or a registered model and serve the page (app.py) with uvicorn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pixelnet.command import model_file, run_command
from pixelnet.errors import PixelNetError
from pixelnet.files import sha256_file


def model_facts(model: str, path: Path, metrics: Path | None) -> dict:
    """What the page shows about the model: its source, and its registry facts or evaluate's test bits/dim.

    `path`: the model's file (a registered model's, downloaded).  Evaluate's figure is shown only when
    `metrics` was computed for that file's bytes (evaluated_facts).
    """
    facts: dict = {"source": model}
    if model.startswith("models:/"):
        from pixelnet.tracking.registry import version_facts

        facts |= version_facts(model)
    elif metrics is not None and metrics.is_file():
        facts |= evaluated_facts(path, metrics)
    return facts


def evaluated_facts(path: Path, metrics: Path) -> dict:
    """{test_bits_per_dim} from evaluate's metrics.json when it records `path`'s sha256; else {} and why, on stderr."""
    try:
        recorded = json.loads(metrics.read_text())
    except (ValueError, OSError) as e:
        typer.echo(f"not showing a test bits/dim: cannot read {metrics} ({e})", err=True)
        return {}
    sha = recorded.get("model_sha256") if isinstance(recorded, dict) else None
    if sha != sha256_file(path):
        why = f"was computed for another model than {path}" if sha else "does not name its model (no model_sha256)"
        typer.echo(f"not showing a test bits/dim: {metrics} {why}; `dvc repro evaluate` (or `pixelnet evaluate "
                   f"--model {path} ...`) computes this model's", err=True)
        return {}
    return {"test_bits_per_dim": recorded.get("test_bits_per_dim")}


def test_examples(data: Path, config, model: str):
    """Ten test images of `data` evenly spaced (the split is stored in class order), their classes and the
    dataset's name; (None, None, None) when there is no data there, or it does not fit the model (said why)."""
    import torch

    from pixelnet.data.processed import check_fits, load_split, read_manifest

    if not (data / "manifest.json").is_file():
        return None, None, None
    manifest = read_manifest(data)
    try:
        check_fits(manifest, config, model_path=Path(model), data_dir=data)
    except PixelNetError as e:  # the page still generates; it just has no test images to offer
        typer.echo(f"not offering test images to complete: {e}", err=True)
        return None, None, None
    test = load_split(data, "test", manifest)
    pick = torch.arange(10) * len(test.images) // 10
    return test.images[pick], test.labels[pick], manifest["dataset"]


def command(
    model: Annotated[str, typer.Option(help="a checkpoint, or a registered model: models:/pixelnet@champion")],
    host: Annotated[str, typer.Option(help="address to listen on (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    data: Annotated[Path, typer.Option(help="preprocessed data whose test images the page offers to complete")] = Path(
        "data/processed"),
    metrics: Annotated[Path, typer.Option(
        help="evaluate's metrics.json: the checkpoint's test bits/dim, shown if it was computed for this file")] = Path(
        "reports/evaluate/metrics.json"),
) -> None:
    """Serve a page where the model draws images row by row, and completes test images or your drawing."""
    import uvicorn

    if not 1 <= port <= 65535:
        raise PixelNetError(f"--port {port} is not a port: choose one in 1 .. 65535")
    app = page_app(model, data=Path(data), metrics=metrics)
    typer.echo(f"PixelNet serving {model} on http://{host}:{port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def page_app(model: str, *, data: Path, metrics: Path | None):
    """The page's app for `model` (a checkpoint or a registered model), with its facts and data's test images."""
    from pixelnet.checkpoint import load_model
    from pixelnet.serve.app import create_app

    with model_file(model) as path:
        net, config = load_model(path)
        facts = model_facts(model, path, metrics)
    examples, example_labels, dataset = test_examples(data, config, model)
    facts["dataset"] = facts.get("dataset") or dataset
    return create_app(net, config, facts=facts, examples=examples, example_labels=example_labels)


if __name__ == "__main__":
    run_command(command, prog="pixelnet serve")
