"""Imports point one way (docs/layout.md): cli -> stages -> the library packages, read from the code with ast.

Every import counts, the lazy ones inside functions too: a lazy import still ties the packages together.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

SRC = REPO / "src"
# The library packages, and the command layer that calls them (never the other way).
LIBRARY = ("pixelnet.model", "pixelnet.data", "pixelnet.sampling", "pixelnet.training", "pixelnet.evaluation",
           "pixelnet.tracking")
COMMANDS = ("pixelnet.cli", "pixelnet.stages", "pixelnet.command", "pixelnet.preset", "pixelnet.serve", "typer")
# What `model` never imports: it is plain PyTorch, with no I/O, devices, logging or tracking.
NOT_IN_MODEL = ("pixelnet.data", "pixelnet.sampling", "pixelnet.training", "pixelnet.evaluation", "pixelnet.tracking",
                "pixelnet.serve", "pixelnet.stages", "pixelnet.cli", "pixelnet.command", "typer", "mlflow", "dvc",
                "great_expectations")


def imports(path: Path, package: str) -> set[str]:
    """The modules `path` imports, relative ones resolved against its package (`from . import x` gives pkg.x)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            out |= {module} | {f"{module}.{a.name}" for a in node.names}  # `from pkg import module` names a module
    return out


def modules(root: Path, *, under: Path | None = None) -> dict[str, set[str]]:
    """Module name -> what it imports, for every .py file below `under` (default: root), named from `root`."""
    out = {}
    for path in sorted((under or root).rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        out[name] = imports(path, name if path.name == "__init__.py" else name.rpartition(".")[0])
    return out


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def importers(code: dict[str, set[str]], *targets: str) -> set[str]:
    """The modules of `code` that import anything of `targets` (packages or modules)."""
    return {m for m, imported in code.items() if any(within(i, *targets) for i in imported)}


SOURCE = modules(SRC, under=SRC / "pixelnet")


def test_only_the_cli_imports_the_stages_and_only_main_the_cli():
    assert importers(SOURCE, "pixelnet.stages") - {"pixelnet.cli"} == set(), "stages are reached through the CLI"
    assert importers(SOURCE, "pixelnet.cli") == {"pixelnet.__main__"}


def test_the_library_packages_import_no_command_code():
    assert {m for m in importers(SOURCE, *COMMANDS) if within(m, *LIBRARY)} == set()


def test_the_model_imports_no_data_training_tracking_or_command_code():
    model = {m: i for m, i in SOURCE.items() if within(m, "pixelnet.model")}
    assert model, "no pixelnet.model modules found"
    assert {m: sorted(i for i in imported if within(i, *NOT_IN_MODEL)) for m, imported in model.items()
            if any(within(i, *NOT_IN_MODEL) for i in imported)} == {}


def test_serve_imports_no_stage():
    assert {m for m in importers(SOURCE, "pixelnet.stages") if within(m, "pixelnet.serve")} == set()


def test_only_tracking_imports_mlflow_and_only_validation_great_expectations():
    assert {m for m in importers(SOURCE, "mlflow") if not within(m, "pixelnet.tracking")} == set()
    assert importers(SOURCE, "great_expectations") <= {"pixelnet.data.validation"}
    assert importers(SOURCE, "dvc") == set()  # a command the pipeline runs, not a library


def test_tests_and_benchmarks_share_code_only_through_devtools():
    benchmarks, devtools = modules(REPO, under=REPO / "benchmarks"), modules(REPO, under=REPO / "devtools")
    tests = modules(REPO, under=REPO / "tests")
    assert importers(benchmarks, "tests") == set()
    assert importers(tests, "benchmarks") == set()
    assert importers(devtools, "tests", "benchmarks") == set()
    assert importers(SOURCE, "tests", "benchmarks", "devtools") == set()
