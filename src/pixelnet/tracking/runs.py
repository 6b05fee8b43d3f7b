"""One MLflow run per pipeline execution: train starts it, the later stages find it by content hashes.

`track_train` creates the run and tags it with `model_sha256`, the hash of the checkpoint it wrote; a later stage
(`track_stage`) finds the newest run holding the hashes of the files it read (the model's; for evaluate also
`samples_sha256`, which sample tags) and logs into it, so no file of the pipeline names a run.  A stage re-run
on a run that already holds its results continues in a copy of that run, less what that stage and the stages
after it logged (`OWNERS`, `REDONE`).  When no run holds the model (train's outputs came from DVC's cache), the
stage starts a run of its own and says so in a tag.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from pixelnet.files import sha256_file
from pixelnet.tracking.registry import log_model, record_champion
from pixelnet.tracking.store import (connect, dict_metrics, experiment_id, finish, flatten, frame_metrics, log_batch,
                                     log_dir, mlflow_errors, repo_root, tracking_uri)

# Who logged a key, by its first component: params by section, metrics/artifacts by prefix, the content tags.
OWNERS = {"data": "train", "model": "train", "train": "train", "epoch": "train", "step": "train",
          "validation": "train", "sample": "sample", "samples": "sample",
          "complete": "complete", "evaluate": "evaluate"}
# Re-running a stage redoes it and everything after it in the chain.
REDONE = {"train": {"train", "sample", "complete", "evaluate"}, "sample": {"sample", "evaluate"},
          "complete": {"complete"}, "evaluate": {"evaluate"}}
SYSTEM_METRICS_INTERVAL_S = 5
TIMING_FILE = "timing.json"  # train's wall-clock figures (stages/train.py), logged as metrics


def owner(key: str) -> str:
    """The stage that logged a param, metric, tag or artifact path (images/ keys use ~ for /; root images are
    STAGE_NAME.png)."""
    head = key.removeprefix("images/").replace("~", "/")
    for sep in "./_":
        head = head.split(sep, 1)[0]
    return OWNERS.get(head, "train")


def provenance(data_dir: Path | None = None) -> dict[str, str]:
    """Tags tying a run to its code and data: git commit, dvc.lock and data manifest hashes."""
    root = repo_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    tags = {"git_commit": commit, "mlflow.source.git.commit": commit}
    for name, path in (("dvc_lock_sha256", root / "dvc.lock"),
                       ("data_manifest_sha256", Path(data_dir) / "manifest.json" if data_dir else None)):
        if path is not None:
            tags[name] = sha256_file(path) if path.is_file() else "none"
    return tags


def find_run(client: MlflowClient, experiment: str, tags: dict[str, str]) -> Any | None:
    """The newest run of the experiment carrying all these tags, or None."""
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in sorted(tags.items()))
    found = client.search_runs([experiment], filter_string=query, order_by=["attributes.start_time DESC"],
                               max_results=1)
    return found[0] if found else None


def copy_run(client: MlflowClient, run: Any, *, drop: set[str]) -> str:
    """A new run holding what `run` logged, less the keys the stages in `drop` own."""
    keep = lambda key: owner(key) not in drop  # noqa: E731
    src = run.info.run_id
    tags = {k: v for k, v in run.data.tags.items() if keep(k) and k != "mlflow.runName"}
    new = client.create_run(run.info.experiment_id, tags=tags | {"copied_from_run": src}).info.run_id
    metrics = [m for key in run.data.metrics if keep(key) for m in client.get_metric_history(src, key)]
    log_batch(client, new, params={k: v for k, v in run.data.params.items() if keep(k)}, metrics=metrics)
    if run.inputs and run.inputs.dataset_inputs:  # the splits train logged: the copy trained on them too
        client.log_inputs(new, datasets=list(run.inputs.dataset_inputs))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(client.download_artifacts(src, "", tmp))
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and keep(rel):
                parent = path.parent.relative_to(root).as_posix()
                client.log_artifact(new, str(path), None if parent == "." else parent)
    return new


def run_for(client: MlflowClient, stage: str, keys: dict[str, str]) -> str:
    """The run `stage` logs into: the newest run holding `keys`, or a copy of it if it has this stage's results."""
    exp = experiment_id(client)
    run = find_run(client, exp, keys)
    if run is None:
        return client.create_run(exp, tags=keys | {"pixelnet.note": (
            "no earlier run holds this model: its training was restored from DVC's cache, not tracked here")}).info.run_id
    if f"{stage}.done" not in run.data.tags:
        return run.info.run_id
    return copy_run(client, run, drop=REDONE[stage])


def log_datasets(client: MlflowClient, run_id: str, data_dir: Path, manifest: dict) -> None:
    """The train, val and test splits as the run's datasets, each named by dataset and split, with its content digest."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for split, info in manifest["splits"].items():
        source = resolve_dataset_source(str((Path(data_dir) / f"{split}_images.npy").resolve()))
        dataset = MetaDataset(source=source, name=f"{manifest['dataset']}-{split}", digest=info["images_sha256"][:16])
        context = {"train": "training", "val": "validation"}.get(split, split)
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)]))
    client.log_inputs(run_id, datasets=inputs)


def track_train(params: Any, *, data_dir: Path, reports_dir: Path, model_path: Path, validation_dir: Path | None,
                train: Callable[[], dict]) -> dict:
    """Run `train()` inside a new MLflow run, created (the store checked) before it starts; log params, datasets,
    system metrics while training, metrics, reports and the model; tag the model's hash."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from pixelnet.data.processed import load_split, read_manifest

    client = connect()
    manifest = read_manifest(data_dir)
    with mlflow_errors("starting the run"):
        exp = experiment_id(client)
        run_id = client.create_run(exp, tags=provenance(data_dir)).info.run_id
        log_batch(client, run_id, params=flatten("data", params.data.model_dump())
                  | flatten("model", params.model.model_dump()) | flatten("train", params.train.model_dump()))
        log_datasets(client, run_id, data_dir, manifest)
    monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, tracking_uri=tracking_uri())
    try:
        monitor.start()  # CPU, memory, disk and (with pynvml) GPU use, as the run's system/ metrics
        try:
            metrics = train()
        finally:
            monitor.finish()
        with mlflow_errors("logging the training results"):
            example = load_split(data_dir, "test", manifest).images[:2].numpy()
            version, model_id = log_model(client, run_id, model_path=model_path, manifest=manifest, example=example)
            epochs, steps = pd.read_csv(reports_dir / "epochs.csv"), pd.read_csv(reports_dir / "steps.csv")
            by_epoch = pd.DataFrame(json.loads((reports_dir / TIMING_FILE).read_text())["by_epoch"])
            log_batch(client, run_id, metrics=frame_metrics(epochs, step_column="epoch")
                      + frame_metrics(by_epoch, step_column="epoch") + frame_metrics(steps, step_column="step")
                      + dict_metrics(metrics, prefix="train", step=int(metrics.get("epochs", 0)), model_id=model_id))
            log_dir(client, run_id, reports_dir, "train")
            if validation_dir is not None:
                log_dir(client, run_id, validation_dir, "validation")
            log_batch(client, run_id, tags={"model_version": version, "model_id": model_id,
                                            "train.precision_used": str(metrics.get("precision")),
                                            "model_sha256": sha256_file(model_path), "train.done": "true"})
    except BaseException:
        finish(client, run_id, "FAILED")
        raise
    finish(client, run_id, "FINISHED")
    return metrics


def track_stage(stage: str, *, model_path: Path, out_dir: Path, params: Any, work: Callable[[], dict],
                images: dict[str, str], samples_path: Path | None = None, publishes: dict[str, Path] | None = None,
                champion: bool = False) -> dict:
    """Run a later stage's `work()` and log it into the run holding model_path (and samples_path: `run_for`).

    Logs `params` under the stage's section, the numeric results as `stage/...` metrics, out_dir's files under
    `stage/`, and `images` ({name: file in out_dir}) as image charts; `publishes` ({tag: file}) tags the run
    with the hashes of files the stage wrote, for the stages after it; `champion` runs `record_champion`.
    """
    keys = {"model_sha256": sha256_file(model_path)}
    if samples_path is not None:
        keys["samples_sha256"] = sha256_file(samples_path)
    client = connect()
    with mlflow_errors("opening the store"):
        experiment_id(client)  # fail fast: the store must answer before the work starts
    values = params.model_dump()
    results = work()
    with mlflow_errors(f"logging the {stage} results"):
        run_id = run_for(client, stage, keys)
        client.update_run(run_id, status="RUNNING")
    try:
        with mlflow_errors(f"logging the {stage} results"):
            log_batch(client, run_id, params=flatten(stage, values), tags=provenance() | {
                k: sha256_file(path) for k, path in (publishes or {}).items()})
            model_id = client.get_run(run_id).data.tags.get("model_id")  # evaluate's metrics on the Models tab
            log_batch(client, run_id, metrics=dict_metrics({k: v for k, v in results.items() if k not in values},
                                                           prefix=stage, model_id=model_id))
            log_dir(client, run_id, out_dir, stage)
            from PIL import Image

            for name, file in images.items():
                with Image.open(Path(out_dir) / file) as img:
                    client.log_image(run_id, img.copy(), key=f"{stage}/{name}")  # the runs' chart view
                with tempfile.TemporaryDirectory() as tmp:  # and at the root, where Compare shows them side by side
                    shutil.copyfile(Path(out_dir) / file, Path(tmp) / f"{stage}_{name}.png")
                    client.log_artifact(run_id, str(Path(tmp) / f"{stage}_{name}.png"))
            if champion:
                record_champion(client, run_id, results, out_dir)
            client.set_tag(run_id, f"{stage}.done", "true")
    except BaseException:
        finish(client, run_id, "FAILED")
        raise
    finish(client, run_id, "FINISHED")
    return results
