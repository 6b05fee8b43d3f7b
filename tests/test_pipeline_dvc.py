"""dvc.yaml and params.yaml: each stage's params sections and source deps; params as `dvc exp run -S` writes them."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from pixelnet.config import SECTIONS, load_params
from tests.conftest import REPO


def test_exponent_floats_as_dvc_writes_them_are_numbers(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: {lr: 1e-05}\nsample: {temperature: 5E-1}\n")  # DVC's ruamel writes 0.00001 so
    params = load_params(path, ["evaluate.batch_size=3", "train.seed=7"])
    assert params.train.lr == 1e-05 and params.sample.temperature == 0.5 and params.train.seed == 7
    assert load_params(path, ["train.lr=3e-4"]).train.lr == 3e-4


def test_each_stage_depends_on_its_own_params_sections_only():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    wanted = {"download": {"data"}, "preprocess": {"data"}, "validate": {"data"}, "train": {"model", "train"},
              "sample": {"sample"}, "complete": {"complete"}, "evaluate": {"evaluate"}}
    for name, stage in stages.items():
        assert {p.split(".")[0] for p in stage["params"]} == wanted[name], name
        assert set(wanted[name]) <= set(SECTIONS)


def test_repo_params_file_loads():
    load_params(REPO / "params.yaml")


def _imported_modules(path: Path, src: Path) -> set[Path]:
    """The pixelnet source files `path` imports at module level, transitively."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for node in ast.parse(current.read_text()).body:
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.startswith("pixelnet"):
                    base = src / Path(*name.split("."))
                    found = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
                    if found.is_file():
                        todo.append(found)
    return seen


def test_every_module_the_stages_run_is_some_stages_dependency():
    src = REPO / "src"
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    deps = {d for stage in stages.values() for d in stage["deps"] if d.startswith("src/")}
    # cli, config, schema and errors only parse and report: the values they check are DVC params themselves.
    skip = {f"src/pixelnet/{name}" for name in ("__init__.py", "cli.py", "config.py", "schema.py", "errors.py")}
    skip.add("src/pixelnet/data/__init__.py")
    used = {p.relative_to(REPO).as_posix() for p in _imported_modules(src / "pixelnet" / "stages.py", src)}
    covered = lambda rel: any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)  # noqa: E731
    missing = sorted(rel for rel in used - skip if not covered(rel))
    assert "src/pixelnet/training.py" in used and missing == [], (
        f"add these to the deps of the stages that run them in dvc.yaml: {missing}")
