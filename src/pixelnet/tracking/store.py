"""Where MLflow runs go, and the helpers every tracked stage uses to talk to the store.

Runs go to MLFLOW_TRACKING_URI when set, else to sqlite:///mlflow.db (artifacts in mlruns/) at the workspace root:
DVC_ROOT under DVC, which names the workspace even for a queued or temporary experiment, else the nearest
directory above holding .dvc or .git.  Several processes may share the sqlite store (`dvc queue start -j 2`):
`connect` creates MLflow's schema under a file lock and puts the database in WAL mode, so that readers never
block writers and writers wait their turn.  `connect` checks that the store answers before any work starts.
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
# The experiment's type in MLflow 3's UI: the model-training view (runs, metrics, models), not the GenAI one.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def repo_root() -> Path:
    """The workspace's root: DVC_ROOT under DVC (the workspace even for a queued experiment), else found upwards."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / ".dvc").is_dir() or (d / ".git").exists():
            return d
    return here


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def first_line(e: BaseException) -> str:
    """An exception's first line, for one-line error messages (its type when it has no message)."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def connect() -> MlflowClient:
    """Point MLflow at the store and check it answers; a clear PixelNetError if it does not."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in the stages' logs
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a vanished server fails in seconds, not minutes
    uri = tracking_uri()
    db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    if uri.startswith(("http://", "https://")):
        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as e:
            raise PixelNetError(
                f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) cannot be reached ({type(e).__name__}); "
                "start it, or unset MLFLOW_TRACKING_URI to track into sqlite:///mlflow.db"
            ) from None
    elif db is not None and (not db.parent.is_dir() or not os.access(db.parent, os.W_OK)):
        raise PixelNetError(f"MLflow database directory {db.parent} does not exist or is not writable: "
                            "fix MLFLOW_TRACKING_URI or the directory's permissions")
    mlflow.set_tracking_uri(uri)
    return shared_sqlite(uri, db) if db is not None else MlflowClient(tracking_uri=uri)


def shared_sqlite(uri: str, db: Path) -> MlflowClient:
    """A client of the sqlite store at `db`, its schema created (tracking and registry stores, under the lock: one
    process at a time) and the database in WAL mode."""
    import fcntl
    import sqlite3

    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two workers starting at once must not both create the schema
        try:
            client = MlflowClient(tracking_uri=uri)  # creates and migrates the database if needed
            client.search_registered_models(max_results=1)  # the registry's store, over the same tables
            with sqlite3.connect(db, timeout=60) as conn:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the database file
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return client


@contextmanager
def mlflow_errors(what: str) -> Iterator[None]:
    """Turn MLflow and connection failures into one-line PixelNetErrors naming the store."""
    try:
        yield
    except (MlflowException, requests.RequestException) as e:
        raise PixelNetError(f"MLflow failed while {what} ({first_line(e)}); tracking URI {tracking_uri()}: "
                            "check the server or database, then run the stage again") from None


def experiment_id(client: MlflowClient) -> str:
    """The `pixelnet` experiment (MLFLOW_EXPERIMENT_NAME overrides), created on first use; with the default store
    its artifacts go to mlruns/ at the workspace root, wherever the command runs from."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        if not EXPERIMENT_KIND.items() <= found.tags.items():  # made by an earlier PixelNet, or by hand
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id
    location = (repo_root() / "mlruns").as_uri() if "MLFLOW_TRACKING_URI" not in os.environ else None
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id  # another worker created it since we looked


def finish(client: MlflowClient, run_id: str, status: str) -> None:
    try:
        client.set_terminated(run_id, status)
    except (MlflowException, requests.RequestException):
        pass  # the error that got us here is the one to report


def log_batch(client: MlflowClient, run_id: str, *, metrics: list[Metric] = (), params: dict[str, str] | None = None,
              tags: dict[str, str] | None = None) -> None:
    """Metrics, params and tags (dicts of them) in one client.log_batch, which splits them within MLflow's limits."""
    client.log_batch(run_id, metrics=list(metrics), params=[Param(k, v) for k, v in (params or {}).items()],
                     tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])


def flatten(section: str, values: dict[str, Any]) -> dict[str, str]:
    return {f"{section}.{k}": str(v) for k, v in values.items()}


def frame_metrics(frame: pd.DataFrame, *, step_column: str) -> list[Metric]:
    """Every numeric column of a per-epoch or per-step table as `step_column/column` metrics, stepped by it."""
    ts = int(time.time() * 1000)
    return [Metric(f"{step_column}/{col}", value, ts, int(step)) for col in frame.columns
            if col not in ("epoch", "step") and pd.api.types.is_numeric_dtype(frame[col])
            for step, value in zip(frame[step_column].astype(int), frame[col].astype(float))]


def dict_metrics(values: dict[str, Any], *, prefix: str, step: int = 0, model_id: str | None = None) -> list[Metric]:
    """The numbers of `values` as `prefix/key` metrics; with model_id, linked to that logged model (its Models tab)."""
    ts = int(time.time() * 1000)
    return [Metric(f"{prefix}/{k}", float(v), ts, step, model_id=model_id) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]


def log_dir(client: MlflowClient, run_id: str, directory: Path, artifact_path: str) -> None:
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            rel = path.parent.relative_to(directory).as_posix()
            client.log_artifact(run_id, str(path), f"{artifact_path}/{rel}" if rel != "." else artifact_path)
