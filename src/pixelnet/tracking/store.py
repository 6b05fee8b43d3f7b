"""Where MLflow runs go, and the small helpers every tracked stage uses to talk to the store.

Runs go to MLFLOW_TRACKING_URI when set (a tracking server, say), otherwise
to sqlite:///mlflow.db at the repository root (the nearest directory above
the working directory holding .dvc or .git), with artifacts in mlruns/ beside
it.  `connect` checks the store before any work: a server that cannot be
reached fails the stage at once, rather than after minutes of work whose
results could not be logged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pixelnet.errors import PixelNetError

EXPERIMENT = "pixelnet"


def repo_root(start: Path | None = None) -> Path:
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / ".dvc").is_dir() or (d / ".git").exists():
            return d
    return here


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def quiet_mlflow() -> None:
    """No artifact progress bars in the stages' logs, and a vanished server failing in seconds, not minutes."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")


def connect() -> MlflowClient:
    """Point MLflow at the store and check it answers; a clear PixelNetError if it does not."""
    quiet_mlflow()
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as e:
            raise PixelNetError(
                f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) cannot be reached ({type(e).__name__}); "
                "start it, or unset MLFLOW_TRACKING_URI to track into sqlite:///mlflow.db"
            ) from None
    elif uri.startswith("sqlite:///"):
        parent = Path(uri.removeprefix("sqlite:///")).parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise PixelNetError(f"MLflow database directory {parent} does not exist or is not writable: "
                                "fix MLFLOW_TRACKING_URI or the directory's permissions")
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


@contextmanager
def mlflow_errors(what: str) -> Iterator[None]:
    """Turn MLflow and connection failures into one-line PixelNetErrors naming the store."""
    try:
        yield
    except (MlflowException, requests.RequestException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PixelNetError(f"MLflow failed while {what} ({first}); tracking URI {tracking_uri()}: "
                            "check the server or database, then run the stage again") from None


def experiment_id(client: MlflowClient) -> str:
    """The `pixelnet` experiment (MLFLOW_EXPERIMENT_NAME overrides), created on first use.

    With the default sqlite store its artifacts go to mlruns/ at the repository
    root, wherever the command runs from; a server or a user's URI decides itself.
    """
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (repo_root() / "mlruns").as_uri() if "MLFLOW_TRACKING_URI" not in os.environ else None
    return client.create_experiment(name, artifact_location=location)


def finish(client: MlflowClient, run_id: str, status: str) -> None:
    try:
        client.set_terminated(run_id, status)
    except (MlflowException, requests.RequestException):
        pass  # the error that got us here is the one to report


def _now_ms() -> int:
    return int(time.time() * 1000)


def log_batch(client: MlflowClient, run_id: str, *, metrics: list[Metric] = (), params: dict[str, str] | None = None,
              tags: dict[str, str] | None = None) -> None:
    """client.log_batch within MLflow's limits (100 params or tags, 1000 metrics per call)."""
    plist = [Param(k, v) for k, v in (params or {}).items()]
    tlist = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    for i in range(0, max(len(plist), len(tlist)), 100):
        client.log_batch(run_id, params=plist[i:i + 100], tags=tlist[i:i + 100])
    metrics = list(metrics)
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def flatten(section: str, values: dict[str, Any]) -> dict[str, str]:
    return {f"{section}.{k}": str(v) for k, v in values.items()}


def frame_metrics(frame: pd.DataFrame, *, prefix: str, step_column: str) -> list[Metric]:
    """Every numeric column of a per-epoch or per-step table as a metric history, stepped by step_column."""
    ts = _now_ms()
    out = []
    for col in frame.columns:
        if col in ("epoch", "step") or not pd.api.types.is_numeric_dtype(frame[col]):
            continue
        for step, value in zip(frame[step_column].astype(int), frame[col].astype(float)):
            out.append(Metric(f"{prefix}/{col}", value, ts, int(step)))
    return out


def dict_metrics(values: dict[str, Any], *, prefix: str, step: int = 0) -> list[Metric]:
    ts = _now_ms()
    return [Metric(f"{prefix}/{k}", float(v), ts, step) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]


def log_dir(client: MlflowClient, run_id: str, directory: Path, artifact_path: str) -> None:
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            rel = path.parent.relative_to(directory).as_posix()
            client.log_artifact(run_id, str(path), f"{artifact_path}/{rel}" if rel != "." else artifact_path)
