"""The registered model `pixelnet`: a checkpoint logged as a model, its aliases, and the champion rule.

The model is an MLflow pyfunc model whose data is PixelNet's own checkpoint and whose loader is tracking/pyfunc.py
(nothing pickled, unlike mlflow.pytorch); its code_paths carry the package, so `mlflow models serve` needs no
installed PixelNet.  train registers it with the alias `candidate`; evaluate moves `champion` to it when its test
bits/dim beats the champion's on the same test set, or when there is no champion.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import requests
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

import pixelnet
from pixelnet.errors import PixelNetError
from pixelnet.files import write_json
from pixelnet.tracking import pyfunc
from pixelnet.tracking.store import connect, dict_metrics, first_line, log_batch, tracking_uri

MODEL_NAME = "pixelnet"
CHAMPION_FILE = "champion.json"


def signature(manifest: dict) -> ModelSignature:
    """uint8 levels (N, C, H, W) in, bits/dim per image out; param `labels`, one class per image ([]: none)."""
    c, h, w = manifest["shape"]
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, c, h, w))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float64), (-1,))]),
                          params=ParamSchema([ParamSpec("labels", "long", [], (-1,))]))


def log_model(client: MlflowClient, run_id: str, *, model_path: Path, manifest: dict, example: np.ndarray) -> tuple[str, str]:
    """Log the checkpoint as a pyfunc model with `example` (uint8 images) as its input example, register it as
    `pixelnet` with the alias `candidate`; returns (registered version, logged model id)."""
    import torch

    package = Path(pixelnet.__file__).resolve().parent
    with mlflow.start_run(run_id=run_id), tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "pixelnet"
        shutil.copytree(package, code, ignore=shutil.ignore_patterns("__pycache__"))
        info = mlflow.pyfunc.log_model(
            name="model", loader_module=pyfunc.__name__, data_path=str(model_path), code_paths=[str(code)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
                              f"mlflow=={mlflow.__version__}"],
            signature=signature(manifest), input_example=example.astype(np.uint8),
            registered_model_name=MODEL_NAME,
        )
    version = str(info.registered_model_version)
    client.set_registered_model_alias(MODEL_NAME, "candidate", version)
    test = manifest.get("splits", {}).get("test", {})
    for key, value in {"dataset": manifest.get("dataset"), "test_images_sha256": test.get("images_sha256"),
                       "shape": "x".join(map(str, manifest.get("shape", []))), "levels": manifest.get("levels")}.items():
        client.set_model_version_tag(MODEL_NAME, version, key, str(value))
    return version, info.model_id


def champion_decision(candidate: dict, champion: dict | None) -> dict:
    """Whether the candidate takes the alias `champion` (both {"version", "test_bits_per_dim", "test_images_sha256"}).

    It does when there is no champion, or when its test bits/dim is lower on the same test set (by content hash);
    bits/dim of other test data do not compare, so the champion stays and the reason says how to move it by hand.
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


def _compared(mv: Any) -> dict:
    """What champion_decision compares of a registered version (its tags)."""
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


def record_champion(client: MlflowClient, run_id: str, results: dict, out_dir: Path) -> None:
    """evaluate's champion decision, to the registry, the run and out_dir/champion.json."""
    version = client.get_run(run_id).data.tags.get("model_version")
    if version is None:
        decision = {"promoted": False, "is_champion": False,
                    "reason": "this run registered no model version (train's outputs came from DVC's cache)"}
    else:
        client.set_model_version_tag(MODEL_NAME, version, "test_bits_per_dim", repr(results["test_bits_per_dim"]))
        candidate = _compared(client.get_model_version(MODEL_NAME, version))
        champion = current_champion(client)
        decision = champion_decision(candidate, None if champion is None else _compared(champion))
        if decision["promoted"]:
            client.set_registered_model_alias(MODEL_NAME, "champion", version)
    log_batch(client, run_id, tags={"evaluate.champion_decision": decision["reason"]},
              metrics=dict_metrics({"promoted_to_champion": int(decision["promoted"]),
                                    "is_champion": int(decision["is_champion"])}, prefix="evaluate"))
    write_json(Path(out_dir) / CHAMPION_FILE, decision)
    client.log_artifact(run_id, str(Path(out_dir) / CHAMPION_FILE), "evaluate")


def resolve_model(uri: str, dst: Path) -> Path:
    """Download a registered (models:/name@alias, models:/name/3) or logged (runs:/...) PixelNet model.

    Returns the checkpoint file inside it, for `pixelnet.checkpoint.load_model`.
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
        raise PixelNetError(f"cannot load {uri} from {tracking_uri()} ({first_line(e)}): check the model name and "
                            f"alias, e.g. models:/{MODEL_NAME}@champion (set by evaluate) or @candidate (set by train)"
                            ) from None
    try:
        flavor = Model.load(local).flavors.get("python_function", {})
    except (MlflowException, OSError):
        flavor = {}
    if flavor.get("loader_module") != pyfunc.__name__ or not flavor.get("data"):
        raise PixelNetError(f"{uri} is not a PixelNet model (no {pyfunc.__name__} pyfunc flavor): "
                            "pass a model registered by `pixelnet train --mlflow`")
    return local / flavor["data"]


def version_facts(uri: str) -> dict:
    """What a registered model's page shows: its version, aliases, dataset and test bits/dim (registry tags)."""
    client = connect()
    name, _, ref = uri.removeprefix("models:/").partition("@")
    try:
        if ref:
            mv = client.get_model_version_by_alias(name, ref)
        else:
            name, _, number = name.partition("/")
            mv = client.get_model_version(name, number)
        aliases = [a for a, v in client.get_registered_model(name).aliases.items() if str(v) == str(mv.version)]
    except (MlflowException, requests.RequestException) as e:
        raise PixelNetError(f"cannot read {uri} from the registry ({e}): check the name and alias") from None
    return {"registry": {"name": name, "version": int(mv.version), "aliases": sorted(aliases)},
            "dataset": mv.tags.get("dataset"), "test_bits_per_dim": _compared(mv)["test_bits_per_dim"]}
