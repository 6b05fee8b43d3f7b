"""Where MLflow runs go, and the small helpers every tracked stage uses to talk to the store.

Runs go to MLFLOW_TRACKING_URI when set (a tracking server, say), otherwise
to sqlite:///mlflow.db at the repository root, with artifacts in mlruns/
beside it.  The root is DVC_ROOT when DVC runs the stage, which for
`dvc exp run --queue` and `--temp` names the workspace, not the temporary
copy the experiment runs in: so queued experiments land in the workspace's
store, with no setting by hand.  Outside DVC it is the nearest directory
above the working directory holding .dvc or .git.

Several processes may write one sqlite store at once (`dvc queue start -j 2`).
`connect` opens the store under a file lock (mlflow.db.lock): the first
MlflowClient of a process creates MLflow's schema when the database does not
exist yet, and two workers doing that at once fail with "table experiments
already exists".  Under the same lock it puts the database in WAL mode, once,
so that a reader never blocks a writer and writers wait their turn (MLflow's
busy_timeout) instead of failing with "database is locked".  The `pixelnet`
experiment is created by whichever worker gets there first; the other finds
it.  One file, no server process to start and stop, and the UI reads it as
before.

`connect` also checks the store before any work: a server that cannot be
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
# The experiment's type in MLflow 3's UI: the model-training view (runs, metrics, models), not the GenAI one.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def repo_root(start: Path | None = None) -> Path:
    """The workspace's root: DVC_ROOT under DVC (the workspace even for a queued experiment), else found upwards."""
    if start is None and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
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
    if uri.startswith("sqlite:///"):
        return shared_sqlite(uri, Path(uri.removeprefix("sqlite:///")))
    return MlflowClient(tracking_uri=uri)


def shared_sqlite(uri: str, db: Path) -> MlflowClient:
    """A client of the sqlite store at `db`, the database created (MLflow's schema) and in WAL mode.

    One process at a time: constructing the client is what creates and migrates the schema (its tracking store
    is built at once, the registry's on first use), so both happen under the lock.
    """
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


def dict_metrics(values: dict[str, Any], *, prefix: str, step: int = 0, model_id: str | None = None) -> list[Metric]:
    """The numbers of `values` as `prefix/key` metrics; with model_id, linked to that logged model (its Models tab)."""
    ts = _now_ms()
    return [Metric(f"{prefix}/{k}", float(v), ts, step, model_id=model_id) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]


def log_dir(client: MlflowClient, run_id: str, directory: Path, artifact_path: str) -> None:
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            rel = path.parent.relative_to(directory).as_posix()
            client.log_artifact(run_id, str(path), f"{artifact_path}/{rel}" if rel != "." else artifact_path)
