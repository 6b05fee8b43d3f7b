"""MLflow tracking without the pipeline: the champion rule, stage ownership, finding and copying runs, bad stores.

Every test that touches MLflow uses its own sqlite database under tmp_path
(MLFLOW_TRACKING_URI), never the repository's mlflow.db.
"""

from __future__ import annotations

import json
import math
import socket

import numpy as np
import pytest

from pixelnet.errors import PixelNetError
from pixelnet.tracking import registry, runs, store


def facts(version, bpd, sha="t1"):
    return {"version": str(version), "test_bits_per_dim": bpd, "test_images_sha256": sha}


@pytest.mark.parametrize("candidate, champion, promoted, is_champion, reason", [
    (facts(1, 3.0), None, True, True, "no champion yet"),
    (facts(2, 2.9), facts(1, 3.0), True, True, "2.9000 < champion's 3.0000"),
    (facts(2, 3.1), facts(1, 3.0), False, False, "3.1000 >= champion's 3.0000"),
    (facts(2, 3.0), facts(1, 3.0), False, False, ">= champion's"),  # a tie keeps the champion
    (facts(2, 1.0), facts(1, 3.0, sha="other"), False, False, "another test set"),
    (facts(2, 1.0), facts(1, None), False, False, "no recorded test bits/dim"),
    (facts(2, math.nan), facts(1, 3.0), False, False, ">= champion's"),
    (facts(1, 3.0), facts(1, 3.0), False, True, "already the champion"),
])
def test_champion_rule(candidate, champion, promoted, is_champion, reason):
    d = registry.champion_decision(candidate, champion)
    assert d["promoted"] is promoted and d["is_champion"] is is_champion and reason in d["reason"]
    assert d["champion_version"] == int(candidate["version"] if promoted else champion["version"])
    assert d["previous_champion_version"] == (int(champion["version"]) if champion else None)


@pytest.mark.parametrize("key, stage", [
    ("data.size", "train"), ("model.channels", "train"), ("train.lr", "train"), ("epoch/val_bpd", "train"),
    ("step/train_bpd", "train"), ("validation/summary.json", "train"), ("git_commit", "train"),
    ("sample.temperature", "sample"), ("sample/grid.png", "sample"), ("images/sample~grid+step+0+x.png", "sample"),
    ("sample.done", "sample"), ("evaluate/test_bits_per_dim", "evaluate"), ("evaluate.champion_decision", "evaluate"),
    ("images/evaluate~loss_curves+step+0+x.png", "evaluate"), ("complete/completions.png", "complete"),
    ("model_sha256", "train"), ("samples_sha256", "sample"), ("model_version", "train"), ("model_id", "train"),
    ("sample_grid.png", "sample"), ("evaluate_samples_vs_real.png", "evaluate"), ("complete_completions.png", "complete"),
    ("data_manifest_sha256", "train"), ("copied_from_run", "train"),
])
def test_owner_of_each_kind_of_key(key, stage):
    assert runs.owner(key) == stage


def test_default_store_is_sqlite_at_the_repository_root(tmp_path, monkeypatch):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert store.tracking_uri() == "http://example.invalid:5000"


def test_unreachable_server_fails_fast_with_a_clear_message(monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(PixelNetError, match="cannot be reached.*unset MLFLOW_TRACKING_URI"):
        store.connect()


def test_registry_uri_without_a_database_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(PixelNetError, match="no MLflow database at .*run `dvc repro`"):
        registry.resolve_model("models:/pixelnet@champion", tmp_path / "dl")
    assert not (tmp_path / "mlflow.db").exists()  # nothing created on the way


def test_train_with_an_unreachable_server_stops_before_training(tmp_path, monkeypatch, run_cli, tiny_params):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    result = run_cli("train", "--params", tiny_params, "--data", tmp_path / "no-data", "--model", tmp_path / "m.pt",
                     "--reports", tmp_path / "r", "--mlflow")
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err.startswith(f"error: MLflow tracking server http://127.0.0.1:{port} (MLFLOW_TRACKING_URI) cannot be reached")
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "r").exists()


# One worker of a queued sweep on a fresh clone: wait for the other, then open the store and start a run.
WORKER = """
import sys, time
from pathlib import Path
from pixelnet.tracking import store
here, me = Path(sys.argv[1]), sys.argv[2]
(here / f"ready-{me}").touch()
while len(list(here.glob("ready-*"))) < 2:
    time.sleep(0.001)
client = store.connect()
client.create_run(store.experiment_id(client), tags={"worker": me})
"""


def test_two_workers_starting_together_on_no_database_both_land_their_run(tmp_path):
    """`dvc queue start -j 2` before any mlflow.db exists: both create the store at once, and neither may fail."""
    import os
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "pixelnet-test"}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), str(k)], cwd=tmp_path, env=env,
                                stderr=subprocess.PIPE, text=True) for k in range(2)]
    errors = [w.communicate(timeout=300)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(e[-3000:] for e in errors)
    exp = MlflowClient(uri).get_experiment_by_name("pixelnet-test")
    runs = MlflowClient(uri).search_runs([exp.experiment_id])
    assert sorted(r.data.tags["worker"] for r in runs) == ["0", "1"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """One sqlite store for this module's tests (creating one takes seconds)."""
    import mlflow

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(db.parent)  # MLflow's default artifact root for a sqlite store is ./mlruns: keep it out of the repo
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "pixelnet-test")
        yield store.connect()
    mlflow.set_tracking_uri(None)  # connect() set the process-wide URI to this database


def test_an_experiment_another_worker_created_meanwhile_is_found(client, monkeypatch):
    """The other worker creates the experiment between this one's look-up and its create_experiment."""
    name = "pixelnet-created-meanwhile"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    theirs = client.create_experiment(name)
    calls = []
    real = client.get_experiment_by_name

    def look_up(n):
        calls.append(n)
        return None if len(calls) == 1 else real(n)  # not there yet at the first look

    monkeypatch.setattr(client, "get_experiment_by_name", look_up)
    assert store.experiment_id(client) == theirs


def test_a_later_stage_finds_the_newest_run_holding_its_inputs(client):
    exp = store.experiment_id(client)
    older = client.create_run(exp, tags={"model_sha256": "m1"}).info.run_id
    newer = client.create_run(exp, tags={"model_sha256": "m1", "samples_sha256": "s1"}).info.run_id
    other = client.create_run(exp, tags={"model_sha256": "m2"}).info.run_id
    assert runs.find_run(client, exp, {"model_sha256": "m1"}).info.run_id == newer
    assert runs.find_run(client, exp, {"model_sha256": "m1", "samples_sha256": "s1"}).info.run_id == newer
    assert runs.find_run(client, exp, {"model_sha256": "m2"}).info.run_id == other
    assert runs.find_run(client, exp, {"model_sha256": "m1", "samples_sha256": "s2"}) is None
    assert older not in (newer, other)
    started = runs.run_for(client, "sample", {"model_sha256": "m3"})  # no run holds m3: a run of its own, said so
    assert client.get_run(started).data.tags["model_sha256"] == "m3"
    assert "restored from DVC's cache" in client.get_run(started).data.tags["pixelnet.note"]


def test_a_rerun_stage_continues_in_a_copy_without_its_own_results(client, tmp_path):
    from mlflow.entities import Metric

    exp = store.experiment_id(client)
    run = client.create_run(exp, tags={"git_commit": "abc", "train.done": "true", "model_sha256": "m9",
                                       "samples_sha256": "s9"}).info.run_id
    store.log_batch(client, run, params={"data.size": "8", "train.lr": "0.001", "sample.temperature": "1.0"},
                    metrics=[Metric("epoch/val_bpd", v, 0, step) for step, v in [(1, 5.0), (2, 4.0)]]
                    + [Metric("sample/sample_seconds", 1.0, 0, 0)])
    for rel in ("train/metrics.json", "sample/grid.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
        client.log_artifact(run, str(tmp_path / rel), rel.split("/")[0])

    assert runs.run_for(client, "sample", {"model_sha256": "m9"}) == run  # sample not done yet: same run
    client.set_tag(run, "sample.done", "true")
    copy = runs.run_for(client, "sample", {"model_sha256": "m9"})
    assert copy != run
    data = client.get_run(copy).data
    assert data.params == {"data.size": "8", "train.lr": "0.001"}
    assert set(data.metrics) == {"epoch/val_bpd"}
    assert [(m.step, m.value) for m in client.get_metric_history(copy, "epoch/val_bpd")] == [(1, 5.0), (2, 4.0)]
    assert data.tags["copied_from_run"] == run and data.tags["git_commit"] == "abc" and "sample.done" not in data.tags
    assert data.tags["model_sha256"] == "m9" and "samples_sha256" not in data.tags  # sample tags its new samples
    assert [a.path for a in client.list_artifacts(copy)] == ["train"]
    assert runs.run_for(client, "sample", {"model_sha256": "m9"}) == copy  # the newest run with the model


def test_champion_moves_only_to_a_better_model_on_the_same_test_set(client, tmp_path):
    from pixelnet.checkpoint import load_model, save_checkpoint
    from pixelnet.model.build import build_model
    from tests.conftest import model_config

    cfg = model_config(channels=4, blocks=0, first_kernel=3, levels=4, height=4, width=4)
    save_checkpoint(build_model(cfg), cfg, tmp_path / "model.pt")
    exp = store.experiment_id(client)
    decisions = []
    for bpd, test_set in [(3.0, "a"), (3.5, "a"), (2.0, "a"), (1.0, "b")]:
        run = client.create_run(exp).info.run_id
        manifest = {"dataset": "x", "shape": [1, 4, 4], "levels": 4, "splits": {"test": {"images_sha256": test_set}}}
        version, _ = registry.log_model(client, run, model_path=tmp_path / "model.pt", manifest=manifest,
                                        example=np.zeros((1, 1, 4, 4), np.uint8))
        assert client.get_registered_model("pixelnet").aliases["candidate"] == int(version)
        out = tmp_path / f"evaluate-{version}"
        out.mkdir()
        client.set_tag(run, "model_version", version)  # as track_train tags it
        registry.record_champion(client, run, {"test_bits_per_dim": bpd}, out)
        decisions.append(json.loads((out / "champion.json").read_text()))
        assert client.get_run(run).data.tags["evaluate.champion_decision"] == decisions[-1]["reason"]
    assert [d["champion_version"] for d in decisions] == [1, 1, 3, 3]
    assert [d["promoted"] for d in decisions] == [True, False, True, False]
    assert "another test set" in decisions[3]["reason"]
    assert client.get_registered_model("pixelnet").aliases == {"candidate": 4, "champion": 3}
    path = registry.resolve_model("models:/pixelnet@champion", tmp_path / "download")
    assert load_model(path)[1] == cfg  # the registered model is the checkpoint, read back weights-only


@pytest.fixture(scope="module")
def conditional_model(client, tmp_path_factory):
    """A registered class-conditional model (3 classes, 2x2 binary images) and what scoring it must give."""
    import torch

    from pixelnet.checkpoint import save_checkpoint
    from tests.test_core_likelihood import every_image, tiny_conditional

    tmp = tmp_path_factory.mktemp("conditional")
    model, prior = tiny_conditional(), torch.tensor([0.5, 0.25, 0.25])
    save_checkpoint(model, model.config, tmp / "m.pt", meta={"class_prior": prior.tolist()})
    run = client.create_run(store.experiment_id(client)).info.run_id
    manifest = {"dataset": "x", "shape": [1, 2, 2], "levels": 2, "splits": {"test": {"images_sha256": "t"}}}
    images = every_image(2, 2, 2).numpy().astype(np.uint8)
    version, model_id = registry.log_model(client, run, model_path=tmp / "m.pt", manifest=manifest,
                                           example=images[:2])
    from pixelnet.tracking.pyfunc import PixelNetPyfunc

    direct = PixelNetPyfunc(str(tmp / "m.pt"))
    labels = [k % 3 for k in range(len(images))]
    return {"version": version, "model_id": model_id, "images": images, "labels": labels,
            "marginal": direct.predict(images), "given": direct.predict(images, params={"labels": labels})}


def test_the_registered_model_keeps_its_labels_through_mlflow_pyfunc(conditional_model):
    import mlflow

    c = conditional_model
    loaded = mlflow.pyfunc.load_model(f"models:/pixelnet/{c['version']}")
    assert [p.name for p in loaded.metadata.get_params_schema().params] == ["labels"]
    assert loaded.metadata.get_input_schema().inputs[0].shape == (-1, 1, 2, 2)
    given = loaded.predict(c["images"], params={"labels": c["labels"]})
    assert given == pytest.approx(c["given"], rel=1e-6)
    assert not np.allclose(given, c["marginal"])  # the labels were used, not dropped
    assert loaded.predict(c["images"]) == pytest.approx(c["marginal"], rel=1e-6)
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=r"params.labels must hold one class in 0 .. 2 per image"):
        loaded.predict(c["images"][:2], params={"labels": [0, 7]})


def test_the_registered_model_loads_without_an_installed_pixelnet(conditional_model, tmp_path):
    """code_paths: the model carries the package; a process where `import pixelnet` fails can still load it."""
    import subprocess
    import sys

    c = conditional_model
    np.save(tmp_path / "x.npy", c["images"])
    script = (
        "import os, sys, json\n"
        "sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or '.', 'pixelnet'))]\n"
        "try:\n    import pixelnet\n    raise SystemExit('pixelnet is still importable')\nexcept ImportError:\n    pass\n"
        "import mlflow, numpy as np\n"
        f"m = mlflow.pyfunc.load_model('models:/pixelnet/{c['version']}')\n"
        f"scores = m.predict(np.load({str(tmp_path / 'x.npy')!r}), params={{'labels': {c['labels']}}})\n"
        "import pixelnet\n"
        "print(json.dumps({'file': pixelnet.__file__, 'scores': scores.tolist()}))\n"
    )
    import os

    env = os.environ | {"MLFLOW_TRACKING_URI": store.tracking_uri()}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "/code/pixelnet/" in out["file"] and "/src/pixelnet/" not in out["file"]
    assert out["scores"] == pytest.approx(list(c["given"]), rel=1e-6)


def test_evaluate_metrics_are_linked_to_the_logged_model(client, conditional_model):
    run = client.create_run(store.experiment_id(client), tags={"model_id": conditional_model["model_id"]}).info.run_id
    store.log_batch(client, run, metrics=store.dict_metrics({"test_bits_per_dim": 0.5}, prefix="evaluate",
                                                            model_id=conditional_model["model_id"]))
    logged = client.get_logged_model(conditional_model["model_id"])
    assert {m.key: m.value for m in logged.metrics} == {"evaluate/test_bits_per_dim": 0.5}


def test_the_experiment_opens_in_the_model_training_view(client):
    exp = client.get_experiment(store.experiment_id(client))
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
