"""The reproducibility check: run the pipeline twice from scratch and compare every output.

    python pipeline/repro_check.py            # small params (below), two fresh copies
    python pipeline/repro_check.py -S train.epochs=2 --keep

It copies the working tree (git's tracked and untracked-but-not-ignored files,
without dvc.lock, data or outputs) into two temporary directories, applies the
small params, makes each copy a fresh git repository with its own DVC cache and
MLflow database, and runs `dvc repro` in each.  It fails when `dvc status` is
not clean after a run, or when a stage output differs between the two runs:

- every output's hash in dvc.lock must match, except
- outputs that record wall-clock times (train's metrics.json and epochs.csv,
  sample.json, ...), which are compared by content with those fields removed
  (JSON keys and CSV columns named *seconds or images_per_s), and
- outputs that name an MLflow run (mlflow_run.json: a new run id each time) or
  carry Great Expectations' timestamps (reports/validation/gx), which are not
  compared; their deterministic parts are (the checkpoint, validation summary.json).

CI runs it after the tests (.ci/run, .github/workflows/ci.yml).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
# data.levels=256: at 8x8, binarized digits repeat across splits, and the validate stage (rightly) stops on that.
SMALL = ["data.size=8", "data.levels=256", "model.channels=8", "model.blocks=1", "train.epochs=1", "train.batch_size=128",
         "sample.n=4", "evaluate.grid_n=8", "complete.rows=4", "complete.images=2", "complete.per_image=2"]
NOT_COMPARED = {"mlflow_run.json": "names the run's MLflow run id, new in every run",
                "reports/validation/gx": "Great Expectations results and Data Docs carry timestamps"}
TIMING = ("seconds", "images_per_s")


def is_timing(name: str) -> bool:
    return name.endswith(TIMING)


def not_compared(path: str) -> str | None:
    return NOT_COMPARED.get(path) or NOT_COMPARED.get(Path(path).name)


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    print(f"[{cwd.name}] $ {' '.join(cmd)}", flush=True)
    done = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"repro check: `{' '.join(cmd)}` failed in {cwd} (exit {done.returncode})")
    return done


def make_copy(dest: Path, overrides: list[str]) -> None:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if rel == "dvc.lock" or rel.startswith(("data/", "models/", "reports/")) or not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section in params:  # a section this version of params.yaml lacks is skipped
            params[section][name] = yaml.safe_load(value)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def pipeline_env(copy: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # each copy: its own sqlite store
    bin_dir = str(Path(sys.executable).parent)
    env.update(DVC_NO_ANALYTICS="1", GX_ANALYTICS_ENABLED="false", MPLBACKEND="Agg",
               PYTHONPATH=str(copy / "src"), PATH=bin_dir + os.pathsep + env.get("PATH", ""))
    return env


def run_pipeline(copy: Path) -> dict:
    """Fresh git repo, `dvc repro`, then `dvc status` must be clean; returns the parsed dvc.lock."""
    env = pipeline_env(copy)
    git = ["git", "-c", "user.name=repro-check", "-c", "user.email=repro-check@localhost"]
    run(["git", "init", "-q"], copy, env)
    run(["git", "add", "-A"], copy, env)
    run([*git, "commit", "-q", "-m", "repro check"], copy, env)
    run(["dvc", "repro"], copy, env)
    status = run(["dvc", "status", "--json"], copy, env).stdout.strip()
    if json.loads(status or "{}"):
        raise SystemExit(f"repro check: `dvc status` is not clean after `dvc repro` in {copy}:\n{status}")
    return yaml.safe_load((copy / "dvc.lock").read_text())


def outputs(lock: dict) -> dict[str, str]:
    """{output path: hash} over every stage of a parsed dvc.lock."""
    return {out["path"]: out.get("md5") or out.get("hash", "") for stage in lock["stages"].values()
            for out in stage.get("outs", [])}


def without_timing(path: Path) -> object:
    """A JSON or CSV output with its wall-clock fields removed, for comparison."""
    if path.suffix == ".json":
        return {k: v for k, v in json.loads(path.read_text()).items() if not is_timing(k)}
    if path.suffix == ".csv":
        frame = pd.read_csv(path)
        return frame[[c for c in frame.columns if not is_timing(c)]].to_csv(index=False)
    return None


def compare(a: Path, b: Path, lock_a: dict, lock_b: dict) -> list[tuple[str, str, str]]:
    """(path, verdict, detail) per output; verdict is same, same-but-timing, not-compared or DIFFERENT."""
    outs_a, outs_b = outputs(lock_a), outputs(lock_b)
    rows = []
    for path in sorted(outs_a.keys() | outs_b.keys()):
        reason = not_compared(path)
        if reason:
            rows.append((path, "not-compared", reason))
        elif path not in outs_a or path not in outs_b:
            rows.append((path, "DIFFERENT", "output of only one run"))
        elif outs_a[path] == outs_b[path]:
            rows.append((path, "same", outs_a[path]))
        else:
            left, right = without_timing(a / path), without_timing(b / path)
            same = left is not None and left == right
            rows.append((path, "same-but-timing" if same else "DIFFERENT",
                         "equal once wall-clock fields are removed" if same else f"{outs_a[path]} != {outs_b[path]}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-S", "--set", action="append", default=[], help="extra param override section.key=value")
    parser.add_argument("--keep", action="store_true", help="keep the two copies (their paths are printed)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="pixelnet-repro-"))
    try:
        copies = [root / "run-a", root / "run-b"]
        copies[0].mkdir()
        make_copy(copies[0], SMALL + args.set)
        shutil.copytree(copies[0], copies[1])  # one snapshot of the tree for both, however it changes meanwhile
        locks = [run_pipeline(copy) for copy in copies]  # one after the other: each run owns the CPU
        rows = compare(*copies, *locks)
        width = max(len(r[0]) for r in rows)
        print("\nreproducibility check: stage outputs of two runs from scratch")
        for path, verdict, detail in rows:
            print(f"  {path:<{width}}  {verdict:<16} {detail}")
        bad = [r for r in rows if r[1] == "DIFFERENT"]
        compared = sum(r[1] != "not-compared" for r in rows)
        print(f"{compared} outputs compared, {len(bad)} differ; `dvc status` clean after both runs")
        return 1 if bad else 0
    finally:
        if args.keep:
            print(f"copies kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
