"""MLflow tracking for the pipeline: runs, artifacts and the model registry.

The only module that imports mlflow.  The CLI calls it only when a stage is
asked to track (`pixelnet train --mlflow`, `--mlflow-run FILE` for the later
stages, as dvc.yaml does); the library and its tests never need it.

Where runs go: MLFLOW_TRACKING_URI when set (a tracking server, say),
otherwise sqlite:///mlflow.db at the repository root (the nearest directory
above the working directory holding .dvc or .git), with artifacts in mlruns/
beside it.  The store is checked before any work: a server that cannot be
reached fails the stage at once, before training, rather than after minutes
of work whose results could not be logged.

One run per pipeline execution: `train` starts it (experiment `pixelnet`) and
writes mlflow_run.json into its reports directory; every later stage reads the
previous stage's run file, logs into that run and writes its own.  When DVC
re-runs a stage whose results the run already holds (only sample and
evaluate re-run after sample.temperature changes), the stage continues in a
new run that copies what the earlier stages logged, so each execution is one
complete run in the UI.  What belongs to which stage is read off its name
(`OWNERS`): params by section, metrics and artifacts by their `stage/` prefix.

The model is logged as an MLflow pyfunc model whose data is PixelNet's own
checkpoint (config + weights-only state dict) and whose loader is this module
(`_load_pyfunc`): nothing pickled, unlike mlflow.pytorch (which pickles the
module, or runs torch.export, slowly).  It is registered as `pixelnet` with the
alias `candidate`; evaluate moves `champion` to it when its test bits/dim
beats the champion's on the same test set, or when there is no champion.
`resolve_model("models:/pixelnet@champion", dst)` downloads it and returns the
checkpoint, which `pixelnet.checkpoints.load_model` reads with weights_only=True.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a vanished server fails in seconds, not minutes

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import requests  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from pixelnet.errors import PixelNetError  # noqa: E402

EXPERIMENT = "pixelnet"
MODEL_NAME = "pixelnet"
RUN_FILE = "mlflow_run.json"
CHAMPION_FILE = "champion.json"
# Who logged a key, by its first component: params by section, metrics/artifacts by prefix.
OWNERS = {"data": "train", "model": "train", "train": "train", "epoch": "train", "step": "train",
          "validation": "train", "sample": "sample", "complete": "complete", "evaluate": "evaluate"}
# Re-running a stage redoes it and everything after it in the chain.
REDONE = {"train": {"train", "sample", "complete", "evaluate"}, "sample": {"sample", "evaluate"},
          "complete": {"complete"}, "evaluate": {"evaluate"}}


def repo_root(start: Path | None = None) -> Path:
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / ".dvc").is_dir() or (d / ".git").exists():
            return d
    return here


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def connect() -> MlflowClient:
    """Point MLflow at the store and check it answers; a clear PixelNetError if it does not."""
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


def owner(key: str) -> str:
    """The stage that logged a param, metric, tag or artifact path (images/ keys use ~ for /)."""
    head = key.removeprefix("images/").replace("~", "/")
    for sep in "./":
        head = head.split(sep, 1)[0]
    return OWNERS.get(head, "train")


def flatten(section: str, values: dict[str, Any]) -> dict[str, str]:
    return {f"{section}.{k}": str(v) for k, v in values.items()}


def sha256_or_none(path: Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        return "none"


def provenance(data_dir: Path | None = None) -> dict[str, str]:
    """Tags tying a run to its code and data: git commit, dvc.lock and data manifest hashes."""
    root = repo_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    tags = {"git_commit": commit, "mlflow.source.git.commit": commit,
            "dvc_lock_sha256": sha256_or_none(root / "dvc.lock")}
    if data_dir is not None:
        tags["data_manifest_sha256"] = sha256_or_none(Path(data_dir) / "manifest.json")
    return tags


def read_run_file(path: Path) -> dict:
    try:
        info = json.loads(Path(path).read_text())
        info["run_id"]
    except FileNotFoundError:
        raise PixelNetError(f"MLflow run file {path} not found: run the stage before it with tracking "
                            "(`pixelnet train --mlflow`, or `dvc repro`)") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise PixelNetError(f"{path} is not a PixelNet MLflow run file: run the stage that writes it again") from None
    return info


def write_json(path: Path, info: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@contextmanager
def mlflow_errors(what: str) -> Iterator[None]:
    """Turn MLflow and connection failures into one-line PixelNetErrors naming the store."""
    try:
        yield
    except (MlflowException, requests.RequestException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PixelNetError(f"MLflow failed while {what} ({first}); tracking URI {tracking_uri()}: "
                            "check the server or database, then run the stage again") from None


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


def log_dir(client: MlflowClient, run_id: str, directory: Path, artifact_path: str, *, skip: tuple[str, ...] = ()) -> None:
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file() and path.name not in skip and not path.name.startswith("."):
            rel = path.parent.relative_to(directory).as_posix()
            client.log_artifact(run_id, str(path), f"{artifact_path}/{rel}" if rel != "." else artifact_path)


def copy_run(client: MlflowClient, run: Any, *, drop: set[str]) -> str:
    """A new run holding what `run` logged, less the keys the stages in `drop` own."""
    keep = lambda key: owner(key) not in drop  # noqa: E731
    src = run.info.run_id
    tags = {k: v for k, v in run.data.tags.items() if keep(k) and k != "mlflow.runName"}
    new = client.create_run(run.info.experiment_id, tags=tags | {"copied_from_run": src}).info.run_id
    metrics = [m for key in run.data.metrics if keep(key) for m in client.get_metric_history(src, key)]
    log_batch(client, new, params={k: v for k, v in run.data.params.items() if keep(k)}, metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(client.download_artifacts(src, "", tmp))
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and keep(rel):
                parent = path.parent.relative_to(root).as_posix()
                client.log_artifact(new, str(path), None if parent == "." else parent)
    return new


def get_run(client: MlflowClient, info: dict) -> Any:
    """The run a run file names, or a PixelNetError saying where it went."""
    try:
        return client.get_run(info["run_id"])
    except MlflowException:
        raise PixelNetError(
            f"MLflow run {info['run_id']} (from the previous stage's run file) is not in {tracking_uri()}: "
            f"it was tracked into {info.get('tracking_uri', 'another store')}. Point MLFLOW_TRACKING_URI there, "
            "or re-run the pipeline from train (`dvc repro -f train`)"
        ) from None


def continue_run(client: MlflowClient, run: Any, stage: str) -> str:
    """The run `stage` logs into: `run` itself, or a copy of it when it already holds this stage's results."""
    if f"{stage}.done" not in run.data.tags:
        return run.info.run_id
    return copy_run(client, run, drop=REDONE[stage])


def _finish(client: MlflowClient, run_id: str, status: str) -> None:
    try:
        client.set_terminated(run_id, status)
    except (MlflowException, requests.RequestException):
        pass  # the error that got us here is the one to report


def log_model(client: MlflowClient, run_id: str, *, model_path: Path, manifest: dict) -> str:
    """Log the checkpoint as a pyfunc model, register it as `pixelnet`, alias `candidate`; returns the version."""
    import torch

    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model", loader_module=__name__, data_path=str(model_path),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
                              f"mlflow=={mlflow.__version__}", "pixelnet"],
            registered_model_name=MODEL_NAME,
        )
    version = str(info.registered_model_version)
    client.set_registered_model_alias(MODEL_NAME, "candidate", version)
    test = manifest.get("splits", {}).get("test", {})
    for key, value in {"dataset": manifest.get("dataset"), "test_images_sha256": test.get("images_sha256"),
                       "shape": "x".join(map(str, manifest.get("shape", []))), "levels": manifest.get("levels")}.items():
        client.set_model_version_tag(MODEL_NAME, version, key, str(value))
    return version


def track_train(params: Any, *, data_dir: Path, reports_dir: Path, model_path: Path, validation_dir: Path | None,
                train: Callable[[], dict]) -> dict:
    """Run `train()` inside a new MLflow run; log params, metrics, reports and the model; write the run file.

    The run is created (and the store checked) before `train()` starts.
    """
    from pixelnet.data.processed import read_manifest
    from pixelnet.model import MODEL_PARAM_KEYS
    from pixelnet.schema import to_dict

    client = connect()
    model_params = {k: v for k, v in to_dict(params.model).items() if k in MODEL_PARAM_KEYS}
    with mlflow_errors("starting the run"):
        exp = experiment_id(client)
        run_id = client.create_run(exp, tags=provenance(data_dir)).info.run_id
        log_batch(client, run_id, params=flatten("data", to_dict(params.data)) | flatten("model", model_params)
                  | flatten("train", to_dict(params.train)))
    try:
        metrics = train()
        with mlflow_errors("logging the training results"):
            epochs, steps = pd.read_csv(reports_dir / "epochs.csv"), pd.read_csv(reports_dir / "steps.csv")
            log_batch(client, run_id, metrics=frame_metrics(epochs, prefix="epoch", step_column="epoch")
                      + frame_metrics(steps, prefix="step", step_column="step")
                      + dict_metrics(metrics, prefix="train", step=int(metrics.get("epochs", 0))))
            log_dir(client, run_id, reports_dir, "train", skip=(RUN_FILE,))
            if validation_dir is not None:
                log_dir(client, run_id, validation_dir, "validation")
            version = log_model(client, run_id, model_path=model_path, manifest=read_manifest(data_dir))
            log_batch(client, run_id, tags={"model_version": version, "train.done": "true"})
    except BaseException:
        _finish(client, run_id, "FAILED")
        raise
    _finish(client, run_id, "FINISHED")
    write_json(reports_dir / RUN_FILE, {"run_id": run_id, "experiment_id": exp, "model_name": MODEL_NAME,
                                            "model_version": version, "tracking_uri": tracking_uri()})
    return metrics


def track_stage(stage: str, *, run_file: Path, out_dir: Path, params: dict[str, Any], work: Callable[[], dict],
                images: dict[str, str], after: Callable[[MlflowClient, str, dict, dict], None] | None = None) -> dict:
    """Run a later stage's `work()` and log it into the pipeline's run (or a copy, see continue_run).

    Logs `params` under the stage's section, the numeric results as `stage/...`
    metrics, every file of out_dir as artifacts under `stage/`, and `images`
    ({name: file in out_dir}) as image charts the UI compares side by side.
    `after(client, run_id, info, results)` adds stage-specific logging.
    Writes out_dir/mlflow_run.json naming the run.
    """
    info = read_run_file(run_file)
    client = connect()
    with mlflow_errors("opening the run"):
        get_run(client, info)  # fail fast: the store and the run must be there before the work starts
    results = work()
    with mlflow_errors(f"logging the {stage} results"):
        run_id = continue_run(client, get_run(client, info), stage)
        client.update_run(run_id, status="RUNNING")
    try:
        with mlflow_errors(f"logging the {stage} results"):
            log_batch(client, run_id, params=flatten(stage, params), tags=provenance())
            log_batch(client, run_id, metrics=dict_metrics({k: v for k, v in results.items() if k not in params},
                                                           prefix=stage))
            log_dir(client, run_id, out_dir, stage, skip=(RUN_FILE,))
            from PIL import Image

            for name, file in images.items():
                with Image.open(Path(out_dir) / file) as img:
                    client.log_image(run_id, img.copy(), key=f"{stage}/{name}")
            if after is not None:
                after(client, run_id, info, results)
            client.set_tag(run_id, f"{stage}.done", "true")
    except BaseException:
        _finish(client, run_id, "FAILED")
        raise
    _finish(client, run_id, "FINISHED")
    write_json(Path(out_dir) / RUN_FILE, info | {"run_id": run_id, "tracking_uri": tracking_uri()})
    return results


def champion_decision(candidate: dict, champion: dict | None) -> dict:
    """Whether the evaluated version takes the alias `champion`.

    candidate and champion: {"version", "test_bits_per_dim", "test_images_sha256"}.
    The candidate wins when there is no champion, or when its test bits/dim is
    lower on the same test set (by content hash).  Bits/dim measured on other
    test data (another dataset, size or levels) do not compare, so the champion
    then stays, and the reason says how to move the alias by hand.
    """
    bpd = candidate["test_bits_per_dim"]
    old = champion or {}
    old_bpd = old.get("test_bits_per_dim")

    def decide(promote: bool, reason: str) -> dict:
        return {"version": int(candidate["version"]), "test_bits_per_dim": bpd, "promoted": promote,
                "champion_version": int(candidate["version"] if promote else old["version"]),
                "is_champion": promote or str(old.get("version")) == str(candidate["version"]),
                "previous_champion_version": int(old["version"]) if champion else None,
                "previous_champion_bits_per_dim": old_bpd, "reason": reason}

    if champion is None:
        return decide(True, "no champion yet")
    if str(old["version"]) == str(candidate["version"]):
        return decide(False, f"version {old['version']} is already the champion")
    if old.get("test_images_sha256") != candidate["test_images_sha256"]:
        return decide(False, f"champion version {old['version']} was measured on another test set, so bits/dim do not "
                             f"compare; to switch, run: mlflow.MlflowClient().set_registered_model_alias("
                             f"'{MODEL_NAME}', 'champion', {candidate['version']})")
    if old_bpd is None or not math.isfinite(old_bpd):
        return decide(False, f"champion version {old['version']} has no recorded test bits/dim")
    if math.isfinite(bpd) and bpd < old_bpd:
        return decide(True, f"test bits/dim {bpd:.4f} < champion's {old_bpd:.4f}")
    return decide(False, f"test bits/dim {bpd:.4f} >= champion's {old_bpd:.4f}")


def _version_facts(mv: Any) -> dict:
    bpd = mv.tags.get("test_bits_per_dim")
    return {"version": mv.version, "test_bits_per_dim": float(bpd) if bpd is not None else None,
            "test_images_sha256": mv.tags.get("test_images_sha256")}


def current_champion(client: MlflowClient) -> Any | None:
    try:
        return client.get_model_version_by_alias(MODEL_NAME, "champion")
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def record_champion(out_dir: Path) -> Callable[[MlflowClient, str, dict, dict], None]:
    """evaluate's extra logging: the champion decision, to the registry, the run and out_dir/champion.json."""
    def after(client: MlflowClient, run_id: str, info: dict, results: dict) -> None:
        version = str(info["model_version"])
        client.set_model_version_tag(MODEL_NAME, version, "test_bits_per_dim", repr(results["test_bits_per_dim"]))
        candidate = _version_facts(client.get_model_version(MODEL_NAME, version))
        champion = current_champion(client)
        decision = champion_decision(candidate, None if champion is None else _version_facts(champion))
        if decision["promoted"]:
            client.set_registered_model_alias(MODEL_NAME, "champion", version)
        log_batch(client, run_id, tags={"evaluate.champion_decision": decision["reason"]},
                  metrics=dict_metrics({"promoted_to_champion": int(decision["promoted"]),
                                        "is_champion": int(decision["is_champion"])}, prefix="evaluate"))
        write_json(Path(out_dir) / CHAMPION_FILE, decision)
        client.log_artifact(run_id, str(Path(out_dir) / CHAMPION_FILE), "evaluate")
    return after


def resolve_model(uri: str, dst: Path) -> Path:
    """Download a registered (models:/name@alias, models:/name/3) or logged (runs:/...) PixelNet model.

    Returns the checkpoint file inside it, for `pixelnet.checkpoints.load_model`.
    """
    from mlflow.models import Model

    store = tracking_uri()
    if store.startswith("sqlite:///") and not Path(store.removeprefix("sqlite:///")).is_file():
        raise PixelNetError(f"no MLflow database at {store.removeprefix('sqlite:///')} to load {uri} from: run "
                            "`dvc repro` in the repository first, or set MLFLOW_TRACKING_URI to your tracking store")
    connect()
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except (MlflowException, requests.RequestException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PixelNetError(f"cannot load {uri} from {tracking_uri()} ({first}): check the model name and alias, "
                            f"e.g. models:/{MODEL_NAME}@champion (set by evaluate) or @candidate (set by train)") from None
    try:
        flavor = Model.load(local).flavors.get("python_function", {})
    except (MlflowException, OSError):
        flavor = {}
    if flavor.get("loader_module") != __name__ or not flavor.get("data"):
        raise PixelNetError(f"{uri} is not a PixelNet model (no {__name__} pyfunc flavor): pass a model registered by `pixelnet train --mlflow`")
    return local / flavor["data"]


class PixelNetPyfunc:
    """What `mlflow.pyfunc.load_model` returns for a PixelNet model: `predict` scores images.

    predict(images) -> bits/dim per image.  images are integer levels shaped
    (N, C, H, W) or (N, C*H*W) (a DataFrame of rows works).  A class-conditional
    model scores -log p(x | y) given params={"labels": [...]}, and without
    labels -log p(x) = -log sum_y p(y) p(x | y), with p(y) the class
    frequencies of its train split (saved in the checkpoint).
    """

    def __init__(self, checkpoint: str) -> None:
        from pixelnet.checkpoints import load_model, read_checkpoint

        self.model, self.config = load_model(Path(checkpoint))
        self.class_prior = read_checkpoint(Path(checkpoint))["meta"].get("class_prior")

    def predict(self, model_input: Any, params: dict | None = None) -> np.ndarray:
        import torch

        from pixelnet.evaluation import marginal_nll_nats
        from pixelnet.likelihood import bits_per_dim, nll_nats

        c = self.config
        x = torch.as_tensor(np.asarray(model_input, dtype=np.int64)).reshape(-1, c.image_channels, c.height, c.width)
        labels = (params or {}).get("labels")
        dims = x[0].numel()
        if c.conditional and labels is None:
            if self.class_prior is None:
                raise ValueError("this class-conditional model has no saved class prior: pass params={'labels': [...]}")
            nats = marginal_nll_nats(self.model, x, prior=torch.tensor(self.class_prior), batch_size=64,
                                     device=torch.device("cpu"))
            return np.asarray([bits_per_dim(float(v), 1, dims) for v in nats])
        scores = []
        with torch.no_grad():
            for i in range(len(x)):
                xi = x[i:i + 1]
                logits = self.model(xi, torch.as_tensor([labels[i]])) if labels is not None else self.model(xi)
                scores.append(bits_per_dim(float(nll_nats(logits, xi)), 1, dims))
        return np.asarray(scores)


def _load_pyfunc(data_path: str) -> PixelNetPyfunc:
    """MLflow's loader_module hook: the model's data is the checkpoint, read with weights_only=True."""
    return PixelNetPyfunc(data_path)
