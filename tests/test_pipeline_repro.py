"""The reproducibility check's comparison: what counts as the same output, and what fails it."""

from __future__ import annotations

import json

from pipeline.repro_check import compare, not_compared, outputs


def lock(hashes: dict[str, str]) -> dict:
    return {"schema": "2.0", "stages": {"s": {"outs": [{"path": p, "md5": h} for p, h in hashes.items()]}}}


def write(root, rel, obj):
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def test_outputs_lists_every_stage_output():
    both = {"stages": {"a": {"outs": [{"path": "x", "md5": "1"}]}, "b": {"outs": [{"path": "y", "md5": "2"}]}}}
    assert outputs(both) == {"x": "1", "y": "2"}


def test_a_changed_checkpoint_fails_and_timing_only_changes_pass(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root, seconds in ((a, 1.5), (b, 9.0)):
        write(root, "reports/train/metrics.json", {"train_bits_per_dim": 3.0, "train_seconds": seconds, "images_per_s": seconds})
        write(root, "reports/train/epochs.csv", f"epoch,train_bpd,seconds\n1,3.0,{seconds}\n")
    write(a, "reports/sample/sample.json", {"n": 4, "sample_seconds": 1.0})
    write(b, "reports/sample/sample.json", {"n": 5, "sample_seconds": 1.0})
    paths = ["models/model.pt", "reports/train/metrics.json", "reports/train/epochs.csv",
             "reports/sample/sample.json", "reports/train/mlflow_run.json"]
    rows = compare(a, b, lock(dict(zip(paths, "12345"))), lock(dict(zip(paths, "98760"))))
    verdicts = {path: verdict for path, verdict, _ in rows}
    assert verdicts == {
        "models/model.pt": "DIFFERENT",
        "reports/train/metrics.json": "same-but-timing",
        "reports/train/epochs.csv": "same-but-timing",
        "reports/sample/sample.json": "DIFFERENT",  # n changed: not a timing field
        "reports/train/mlflow_run.json": "not-compared",
    }


def test_only_run_files_and_ge_docs_are_left_out():
    assert not_compared("reports/sample/mlflow_run.json") and not_compared("reports/validation/gx")
    assert not not_compared("reports/validation/summary.json") and not not_compared("models/model.pt")
