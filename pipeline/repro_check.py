"""The reproducibility check: run the pipeline twice from scratch and compare every entry of dvc.lock.

    python pipeline/repro_check.py            # small params (below), two fresh copies
    python pipeline/repro_check.py -S train.epochs=2 --keep

It copies the working tree (git's tracked and untracked-but-not-ignored files,
without dvc.lock, data or outputs) into two temporary directories, applies the
small params, makes each copy a fresh git repository with its own DVC cache and
MLflow database, and runs `dvc repro` in each.  It fails when `dvc status` is
not clean after a run, or when any entry of the two dvc.lock files differs:
every stage's command, every dep's and param's recorded value, every output's
hash.  No output may carry a wall-clock figure or a run id (dvc.yaml says
where those go instead); the few files written beside the outputs that do
differ between two runs are named in VARYING, and only there.

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

import yaml

REPO = Path(__file__).resolve().parents[1]
# data.levels=256: at 8x8, binarized digits repeat across splits, and the validate stage (rightly) stops on that.
SMALL = ["data.size=8", "data.levels=256", "model.channels=8", "train.epochs=1", "train.batch_size=128",
         "sample.n=4", "evaluate.grid_n=8", "complete.images=2", "complete.per_image=2"]
# Files the stages write beside their outputs (not DVC outputs, so not in dvc.lock) that differ between two runs.
VARYING = {"reports/train/timing.json": "train's wall-clock times",
           "reports/sample/timing.json": "sample's wall-clock time",
           "reports/complete/timing.json": "complete's wall-clock time",
           "reports/validation/gx": "Great Expectations' results and Data Docs carry timestamps"}


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


def entries(lock: dict) -> dict[str, object]:
    """Every entry of a parsed dvc.lock, keyed `stage:cmd`, `stage:deps:PATH`, `stage:params:FILE:KEY`, `stage:outs:PATH`."""
    out: dict[str, object] = {}
    for name, stage in lock["stages"].items():
        out[f"{name}:cmd"] = stage.get("cmd")
        for kind in ("deps", "outs"):
            for item in stage.get(kind, []):
                out[f"{name}:{kind}:{item['path']}"] = {k: v for k, v in item.items() if k != "path"}
        for file, values in (stage.get("params") or {}).items():
            for key, value in values.items():
                out[f"{name}:params:{file}:{key}"] = value
    return out


def compare(lock_a: dict, lock_b: dict) -> list[tuple[str, str, str]]:
    """(entry, verdict, detail) for every entry of either lock; verdict is same or DIFFERENT."""
    a, b = entries(lock_a), entries(lock_b)
    rows = []
    for key in sorted(a.keys() | b.keys()):
        if key not in a or key not in b:
            rows.append((key, "DIFFERENT", "in only one run's dvc.lock"))
        elif a[key] == b[key]:
            rows.append((key, "same", ""))
        else:
            rows.append((key, "DIFFERENT", f"{a[key]} != {b[key]}"))
    return rows


def beside_outputs(a: Path, b: Path, lock: dict) -> list[tuple[str, str, str]]:
    """(path, verdict, reason) for the files under reports/ that are not DVC outputs: they must be the same
    in both runs unless VARYING names them (or a directory above them)."""
    outs = {item["path"] for stage in lock["stages"].values() for item in stage.get("outs", [])}
    files = {p.relative_to(root).as_posix() for root in (a, b) for p in (root / "reports").rglob("*") if p.is_file()}
    rows = []
    for rel in sorted(files - outs):
        varying = next((reason for path, reason in VARYING.items() if rel == path or rel.startswith(path + "/")), None)
        if varying:
            if rel in VARYING:  # directories are listed once, by their VARYING entry
                rows.append((rel, "varies", varying))
            continue
        same = (a / rel).is_file() and (b / rel).is_file() and (a / rel).read_bytes() == (b / rel).read_bytes()
        rows.append((rel, "same" if same else "DIFFERENT", "" if same else "not an output, yet not in VARYING"))
    return rows + [(path, "varies", reason) for path, reason in VARYING.items()
                   if path not in {r[0] for r in rows} and (a / path).exists()]


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
        rows = compare(*locks)
        width = max(len(r[0]) for r in rows)
        print("\nreproducibility check: dvc.lock of two runs from scratch, entry by entry")
        for key, verdict, detail in rows:
            if ":outs:" in key or verdict != "same":
                print(f"  {key:<{width}}  {verdict:<10} {detail}")
        beside = beside_outputs(*copies, locks[0])
        print("files beside the outputs (not in dvc.lock):")
        for path, verdict, detail in beside:
            print(f"  {path:<{width}}  {verdict:<10} {detail}")
        bad = [r for r in rows + beside if r[1] == "DIFFERENT"]
        outs = sum(":outs:" in r[0] for r in rows)
        print(f"{len(rows)} dvc.lock entries compared ({outs} outputs) and {len(beside)} files beside them; "
              f"{len(bad)} differ; `dvc status` clean after both runs")
        return 1 if bad else 0
    finally:
        if args.keep:
            print(f"copies kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
