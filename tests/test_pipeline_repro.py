"""The reproducibility check's comparison: every dvc.lock entry must match; only VARYING files may differ."""

from __future__ import annotations

import copy
import json

from pipeline.repro_check import VARYING, beside_outputs, compare, entries


def lock() -> dict:
    return {"schema": "2.0", "stages": {
        "train": {"cmd": "python -m pixelnet.stages.train", "deps": [{"path": "src/a.py", "md5": "d1", "size": 3}],
                  "params": {"params.yaml": {"train.lr": 0.003}},
                  "outs": [{"path": "models/model.pt", "md5": "m1", "size": 9},
                           {"path": "reports/train/metrics.json", "md5": "j1", "size": 2}]},
        "sample": {"cmd": "python -m pixelnet.stages.sample", "outs": [{"path": "reports/sample/samples.npy", "md5": "s1"}]},
    }}


def test_entries_cover_commands_deps_params_and_outputs():
    assert set(entries(lock())) == {
        "train:cmd", "train:deps:src/a.py", "train:params:params.yaml:train.lr", "train:outs:models/model.pt",
        "train:outs:reports/train/metrics.json", "sample:cmd", "sample:outs:reports/sample/samples.npy"}


def test_identical_locks_pass_and_any_changed_entry_fails():
    assert all(verdict == "same" for _, verdict, _ in compare(lock(), lock()))
    for path, change in [(("train", "outs", 1, "md5"), "j2"), (("train", "deps", 0, "md5"), "d2"),
                         (("sample", "cmd"), "python -m other")]:
        other = copy.deepcopy(lock())
        node = other["stages"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = change
        bad = [key for key, verdict, _ in compare(lock(), other) if verdict == "DIFFERENT"]
        assert len(bad) == 1 and bad[0].startswith(f"{path[0]}:{path[1]}"), bad
    fewer = copy.deepcopy(lock())
    fewer["stages"]["train"]["outs"].pop()
    assert [k for k, v, _ in compare(lock(), fewer) if v == "DIFFERENT"] == ["train:outs:reports/train/metrics.json"]


def write(root, rel, text):
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def test_only_files_named_in_varying_may_differ_beside_the_outputs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root, seconds in ((a, 1.5), (b, 9.0)):
        write(root, "reports/train/metrics.json", "{}")  # an output: compared through dvc.lock, not here
        write(root, "reports/train/timing.json", json.dumps({"train_seconds": seconds}))
        write(root, "reports/validation/gx/results.json", str(seconds))
        write(root, "reports/evaluate/champion.json", json.dumps({"promoted": True}))
    verdicts = {path: verdict for path, verdict, _ in beside_outputs(a, b, lock())}
    assert verdicts == {"reports/train/timing.json": "varies", "reports/validation/gx": "varies",
                        "reports/evaluate/champion.json": "same"}
    write(b, "reports/evaluate/champion.json", json.dumps({"promoted": False}))
    verdicts = {path: verdict for path, verdict, _ in beside_outputs(a, b, lock())}
    assert verdicts["reports/evaluate/champion.json"] == "DIFFERENT"
    assert all(path.startswith("reports/") for path in VARYING)
