"""The DVC pipeline end to end, in a temporary copy of the repository, on tiny params.

One module-scoped scenario runs the commands a user would (each a subprocess,
with the copy's own DVC cache and MLflow sqlite database), and the tests check
what each step did:

1. `dvc repro` runs every stage; a second `dvc repro` runs none.  Each process records the files it
   loaded (tests/module_recorder), and each stage's deps in dvc.yaml must cover them.
2. `dvc exp run -S sample.temperature=0.5`: only sample and evaluate run again.
3. `pixelnet sample --model models:/pixelnet@champion` loads from the registry.
4. A real `mlflow server` on loopback serves the runs and the registry.
5. Two experiments queued (`dvc exp run --queue`) and run by two workers at once
   (`dvc queue start -j 2`) land in the workspace's MLflow store and registry.
6. `mlflow models serve` answers bits/dim per image, with labels and without.

How `champion` moves between trained versions is tested against a real
registry, without the pipeline, in test_tracking.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.repro_check import SMALL, make_copy, pipeline_env

TINY = [*SMALL, "train.epochs=2", "train.batch_size=256"]
REPO = Path(__file__).resolve().parents[1]
DVC_STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
STAGES = set(DVC_STAGES)


@dataclass
class Scenario:
    repo: Path
    env: dict
    server: subprocess.Popen | None = None  # `mlflow server` on the copy's database
    server_url: str = ""
    modules: Path | None = None  # one JSON file per Python process: its argv and the files it loaded
    outputs: dict[str, str] = field(default_factory=dict)  # step -> combined stdout/stderr
    aliases: dict[str, dict[str, int]] = field(default_factory=dict)  # step -> registry aliases
    champion: dict[str, dict] = field(default_factory=dict)  # step -> reports/evaluate/champion.json

    def run(self, *cmd: str, timeout: float = 600) -> str:
        done = subprocess.run(cmd, cwd=self.repo, env=self.env, text=True, capture_output=True, timeout=timeout)
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-3000:]}"
        return out

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=f"sqlite:///{self.repo / 'mlflow.db'}")

    def record(self, step: str, output: str) -> None:
        self.outputs[step] = output
        self.aliases[step] = dict(self.client().get_registered_model("pixelnet").aliases)
        self.champion[step] = json.loads((self.repo / "reports/evaluate/champion.json").read_text())


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w-]+)'", output))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(s: Scenario, log: Path) -> None:
    """`mlflow server` on the copy's database, in its own process group; it boots while the pipeline runs."""
    port = _free_port()
    s.server_url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        s.server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
             f"sqlite:///{s.repo / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=s.repo, env=s.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(s: Scenario) -> None:
    if s.server is None or s.server.poll() is not None:
        return
    os.killpg(s.server.pid, signal.SIGTERM)
    try:
        s.server.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(s.server.pid, signal.SIGKILL)
        s.server.wait(timeout=10)


SWEEP = ("0.03", "0.005")  # train.lr of the two queued experiments (params.yaml has 0.02): each trains, registers and evaluates


def run_sweep(s: Scenario, timeout: float = 420) -> str:
    """Queue two experiments, run them with two workers at once, wait for both; returns the workers' logs."""
    for lr in SWEEP:
        s.run("dvc", "exp", "run", "--queue", "-S", f"train.lr={lr}")
    s.run("dvc", "queue", "start", "-j", "2")
    deadline = time.monotonic() + timeout
    while True:
        status = s.run("dvc", "queue", "status")
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        assert time.monotonic() < deadline, f"the queue did not finish in {timeout} s:\n{status}"
        time.sleep(3)
    assert status.count("Success") == len(SWEEP), status
    tasks = re.findall(r"^([0-9a-f]{7,})\s.*\b(?:Success|Failed)\b", status, re.M)
    assert len(tasks) == len(SWEEP), status
    return status + "".join(s.run("dvc", "queue", "logs", t) for t in tasks)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    repo = root / "repo"
    repo.mkdir()
    make_copy(repo, TINY)
    s = Scenario(repo, pipeline_env(repo))
    s.modules = root / "modules"
    s.modules.mkdir()
    s.env |= {"PIXELNET_MODULE_LOG": str(s.modules),
              "PYTHONPATH": s.env["PYTHONPATH"] + os.pathsep + str(REPO / "tests" / "module_recorder")}
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    s.run("git", "init", "-q")
    s.run("git", "add", "-A")
    s.run(*git, "commit", "-q", "-m", "tiny params")
    s.client().search_experiments()  # create the database before the server and the pipeline share it
    start_server(s, root / "server.log")
    try:
        s.record("first", s.run("dvc", "repro"))
        s.outputs["again"] = s.run("dvc", "repro")
        s.outputs["status"] = s.run("dvc", "status", "--json")
        s.record("temperature", s.run("dvc", "exp", "run", "-S", "sample.temperature=0.5"))
        s.outputs["exp show"] = s.run("dvc", "exp", "show", "--csv")
        s.outputs["sweep"] = run_sweep(s)
        s.aliases["sweep"] = dict(s.client().get_registered_model("pixelnet").aliases)
        yield s
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=s.env, capture_output=True)
        stop_server(s)


def test_repro_runs_every_stage_then_nothing(scenario):
    assert ran(scenario.outputs["first"]) == STAGES
    assert ran(scenario.outputs["again"]) == set()
    assert "Data and pipelines are up to date" in scenario.outputs["again"]
    assert json.loads(scenario.outputs["status"]) == {}
    ignored = scenario.run("git", "check-ignore", "data/processed", "models/model.pt", "mlflow.db").split()
    assert ignored == ["data/processed", "models/model.pt", "mlflow.db"]


def test_each_stage_depends_on_every_project_file_its_process_loaded(scenario):
    """What a stage ran is what its process loaded (sys.modules at exit, lazy imports included)."""
    src = scenario.repo / "src"
    loaded: dict[str, set[str]] = {}
    for record in scenario.modules.glob("*.json"):
        info = json.loads(record.read_text())
        main = Path(info["argv"][0])
        if main.parent == src / "pixelnet" / "stages":  # python -m pixelnet.stages.NAME, as dvc.yaml runs it
            files = {Path(f).resolve() for f in info["files"]}
            loaded.setdefault(main.stem, set()).update(
                f.relative_to(scenario.repo).as_posix() for f in files if f.is_relative_to(src.resolve()))
    assert set(loaded) == STAGES, "every stage's process must have been recorded"
    for name, files in loaded.items():
        deps = [d.rstrip("/") for d in DVC_STAGES[name]["deps"]]
        missing = sorted(f for f in files if not any(f == d or f.startswith(d + "/") for d in deps))
        assert missing == [], f"stage {name} loaded these files, which are not among its deps in dvc.yaml: {missing}"
        assert "src/pixelnet/cli.py" not in files  # the stage's module alone, not the whole CLI
    assert "src/pixelnet/tracking/runs.py" in loaded["train"] and "src/pixelnet/sampling/fast.py" in loaded["sample"]
    assert not any(f.startswith("src/pixelnet/sampling") for f in loaded["train"])  # nothing beyond the stage


def test_every_source_dep_exists():
    for name, stage in DVC_STAGES.items():
        for dep in stage["deps"]:
            if dep.startswith("src/"):
                assert (REPO / dep).exists(), f"stage {name}: dep {dep} does not exist"


def test_metrics_and_plots_are_declared(scenario):
    metrics = json.loads(scenario.run("dvc", "metrics", "show", "--json"))
    shown = json.dumps(metrics)
    for key in ("test_bits_per_dim", "val_bits_per_dim", "epochs", "per_image", "temperature"):
        assert key in shown
    assert "seconds" not in shown  # wall-clock figures are not DVC outputs: they would change dvc.lock every run
    plots = scenario.run("dvc", "plots", "show", "--json")
    for name in ("bits/dim by epoch", "reports/sample/grid.png", "reports/evaluate/loss_curves.png"):
        assert name in plots


def test_changing_sample_temperature_reruns_only_sample_and_evaluate(scenario):
    assert ran(scenario.outputs["temperature"]) == {"sample", "evaluate"}
    shown = scenario.outputs["exp show"]
    assert "sample.temperature" in shown and "0.5" in shown  # the experiment beside its baseline
    client = scenario.client()
    runs = client.search_runs(client.get_experiment_by_name("pixelnet").experiment_id)
    by_temperature = {r.data.params.get("sample.temperature"): r for r in runs}
    copy, first = by_temperature["0.5"], by_temperature["1.0"]
    assert copy.data.tags["copied_from_run"] == first.info.run_id  # the execution gets its own complete run
    assert copy.data.params["train.epochs"] == "2" and "epoch/val_bpd" in copy.data.metrics
    assert "evaluate/test_bits_per_dim" in copy.data.metrics
    assert [d.dataset.name for d in copy.inputs.dataset_inputs] == [d.dataset.name for d in first.inputs.dataset_inputs]
    assert {d.dataset.name for d in first.inputs.dataset_inputs} == {"mnist-5k-train", "mnist-5k-val", "mnist-5k-test"}
    roots = {a.path for a in client.list_artifacts(copy.info.run_id)}  # what Compare shows side by side
    assert {"sample_grid.png", "complete_completions.png", "evaluate_samples_vs_real.png"} <= roots


def test_a_queued_sweep_with_two_workers_loses_no_run(scenario):
    """Each queued experiment ran in a temporary copy; its run is in the workspace's store all the same."""
    assert "database is locked" not in scenario.outputs["sweep"]
    client = scenario.client()
    runs = client.search_runs(client.get_experiment_by_name("pixelnet").experiment_id)
    by_lr = {}
    for r in runs:
        by_lr.setdefault(r.data.params.get("train.lr"), []).append(r)
    for lr in SWEEP:
        assert len(by_lr.get(lr, [])) == 1, f"train.lr={lr}: {len(by_lr.get(lr, []))} runs"
        run = by_lr[lr][0]
        assert {"train.done", "sample.done", "complete.done", "evaluate.done"} <= set(run.data.tags)
        assert "evaluate/test_bits_per_dim" in run.data.metrics
    versions = client.search_model_versions("name='pixelnet'")
    assert len(versions) == 3  # the first run's model and one per queued experiment
    assert scenario.aliases["sweep"]["candidate"] in (2, 3)


def test_registry_holds_the_candidate_and_the_champion(scenario):
    assert scenario.aliases["first"] == {"candidate": 1, "champion": 1}
    assert scenario.champion["first"]["promoted"] is True and scenario.champion["first"]["reason"] == "no champion yet"
    assert scenario.aliases["temperature"] == {"candidate": 1, "champion": 1}  # same model: nothing to decide
    assert scenario.champion["temperature"]["is_champion"] is True
    assert scenario.champion["temperature"]["promoted"] is False


def test_sample_and_score_from_the_registry(scenario, run_cli, tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{scenario.repo / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "samples"
    result = run_cli("sample", "--params", scenario.repo / "params.yaml", "--model", "models:/pixelnet@champion",
                     "--out", out)
    assert result.code == 0, result.err
    samples = np.load(out / "samples.npy")
    assert samples.shape == (4, 1, 8, 8) and samples.dtype == np.uint8
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model("models:/pixelnet@candidate")
        scores = model.predict(np.load(scenario.repo / "data/processed/test_images.npy")[:3])
    finally:
        mlflow.set_tracking_uri(None)  # this also drops MLFLOW_TRACKING_URI from the environment: set it again
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert scores.shape == (3,) and np.all((scores > 0) & (scores < 9))
    missing = run_cli("sample", "--params", scenario.repo / "params.yaml", "--model", "models:/pixelnet@nope",
                      "--out", tmp_path / "none")
    assert missing.code == 2 and "alias" in missing.err and "Traceback" not in missing.err


def _get(url: str, **query: str) -> bytes:
    with urllib.request.urlopen(f"{url}?{urllib.parse.urlencode(query)}" if query else url, timeout=10) as r:
        return r.read()


def test_mlflow_server_serves_epoch_metrics_images_and_aliases(scenario):
    base = scenario.server_url
    deadline = time.monotonic() + 150
    while True:
        try:
            _get(f"{base}/health")
            break
        except OSError:
            assert scenario.server.poll() is None, "mlflow server exited; see server.log beside the repo copy"
            assert time.monotonic() < deadline, "mlflow server did not answer within 150 s"
            time.sleep(1)
    api = f"{base}/api/2.0/mlflow"
    exp = json.loads(_get(f"{api}/experiments/get-by-name", experiment_name="pixelnet"))["experiment"]["experiment_id"]
    req = urllib.request.Request(f"{api}/runs/search", data=json.dumps({"experiment_ids": [exp]}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        runs = json.loads(r.read())["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs]
    copy = next(i for i, t in enumerate(tags) if "copied_from_run" in t)  # the temperature experiment's run
    run_id = runs[copy]["info"]["run_id"]
    history = json.loads(_get(f"{api}/metrics/get-history", run_id=run_id, metric_key="epoch/val_bpd"))["metrics"]
    assert sorted(m["step"] for m in history) == [1, 2]
    files = [f["path"] for f in json.loads(_get(f"{api}/artifacts/list", run_id=run_id, path="images"))["files"]]
    for key in ("sample~grid", "complete~completions", "evaluate~samples_vs_real", "evaluate~loss_curves"):
        png = next(p for p in files if p.startswith(f"images/{key}+") and p.endswith(".png"))
        assert _get(f"{base}/get-artifact", path=png, run_uuid=run_id).startswith(b"\x89PNG")
    model = json.loads(_get(f"{api}/registered-models/get", name="pixelnet"))["registered_model"]
    aliases = {a["alias"]: int(a["version"]) for a in model["aliases"]}
    assert aliases == scenario.aliases["sweep"]  # what the client saw after the queued sweep
    champion = json.loads(_get(f"{api}/registered-models/alias", name="pixelnet", alias="champion"))["model_version"]
    trained_it = [r for r, t in zip(runs, tags) if t.get("model_version") == champion["version"] and "train.done" in t
                  and "copied_from_run" not in t]
    assert [r["info"]["run_id"] for r in trained_it] == [champion["run_id"]]


@pytest.fixture(scope="module")
def served(scenario, tmp_path_factory):
    """`mlflow models serve` on the registry's champion, on loopback, as the README documents it."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = scenario.env | {"MLFLOW_TRACKING_URI": f"sqlite:///{scenario.repo / 'mlflow.db'}"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", "models:/pixelnet@champion",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            cwd=scenario.repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 150
        while True:
            try:
                _get(f"{url}/ping")
                break
            except OSError:
                assert proc.poll() is None, f"mlflow models serve exited:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "mlflow models serve did not answer within 150 s"
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _invoke(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_mlflow_models_serve_answers_bits_per_dim_with_and_without_labels(scenario, served, monkeypatch):
    import mlflow

    images = np.load(scenario.repo / "data/processed/test_images.npy")[:3]  # uint8, as the signature says
    labels = np.load(scenario.repo / "data/processed/test_labels.npy")[:3].tolist()
    status, plain = _invoke(served, {"inputs": images.tolist()})
    assert status == 200 and len(plain["predictions"]) == 3
    status, given = _invoke(served, {"inputs": images.tolist(), "params": {"labels": labels}})
    assert status == 200 and given["predictions"] != plain["predictions"]
    uri = f"sqlite:///{scenario.repo / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        local = mlflow.pyfunc.load_model("models:/pixelnet@champion")
        assert given["predictions"] == pytest.approx(local.predict(images, params={"labels": labels}).tolist(), rel=1e-6)
        assert plain["predictions"] == pytest.approx(local.predict(images).tolist(), rel=1e-6)
    finally:
        mlflow.set_tracking_uri(None)
    status, bad = _invoke(served, {"inputs": images.tolist(), "params": {"labels": [0, 99, 0]}})
    assert status == 400 and "params.labels must hold one class in 0 .. 9 per image" in bad["message"]
