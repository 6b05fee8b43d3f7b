"""The environment: pyproject.toml declares what src/ imports (the dev extra what tests/, benchmarks/ and devtools/
add), and requirements.lock pins all of it, with hashes."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# Declared though src/ does not import them, and why.
NOT_IMPORTED = {"dvc": "the pipeline's runner (dvc repro), a command, not a library we call",
                "psutil": "MLflow's system metrics during training (tracking/runs.py) need it"}


def declared() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


def imported_distributions(*dirs: str) -> dict[str, set[str]]:
    """module -> the distributions that provide it, for the third-party modules code in `dirs` imports (lazy ones
    too)."""
    tops = set()
    for path in (p for d in dirs for p in (REPO / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                tops.add(node.module.split(".")[0])
    tops -= set(sys.stdlib_module_names) | {"pixelnet", "tests", "devtools", "pipeline"}  # this repository's
    providers = packages_distributions()
    missing = sorted(t for t in tops if t not in providers)
    assert missing == [], f"no installed distribution provides {missing}"
    return {t: {canonicalize_name(d) for d in providers[t]} for t in tops}  # mlflow: mlflow and mlflow-skinny


def locked() -> dict[str, tuple[Version, list[str]]]:
    """requirements.lock: name -> (version, sha256 hashes)."""
    pins: dict[str, tuple[Version, list[str]]] = {}
    name = None
    for line in (REPO / "requirements.lock").read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", line)
        if pin:
            name = canonicalize_name(pin.group(1))
            pins[name] = (Version(pin.group(2)), [])
        elif name and (h := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            pins[name][1].append(h.group(1))
    return pins


def test_pyproject_declares_what_src_imports_and_nothing_else():
    imports, names = imported_distributions("src"), set(declared())
    assert sorted(m for m, dists in imports.items() if not dists & names) == [], "imported but not declared"
    provided = set().union(*imports.values())
    assert sorted(names - provided - set(NOT_IMPORTED)) == [], "declared but never imported (add it to NOT_IMPORTED?)"
    assert set(NOT_IMPORTED) <= names


def test_the_dev_extra_declares_what_tests_benchmarks_and_devtools_add():
    dev = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["optional-dependencies"]["dev"]}
    imports = imported_distributions("tests", "benchmarks", "devtools")
    assert sorted(m for m, dists in imports.items() if not dists & (set(declared()) | dev)) == []


def test_the_lock_pins_every_declared_requirement_within_its_range():
    pins = locked()
    wanted = list(declared().values()) + [Requirement(r) for r in PYPROJECT["optional-dependencies"]["dev"]]
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is in pyproject.toml but not in requirements.lock: run the README's lock update"
        assert pins[name][0] in req.specifier, f"requirements.lock pins {name}=={pins[name][0]}, outside {req}"


def test_every_locked_package_has_a_hash():
    pins = locked()
    assert len(pins) > 50  # torch, mlflow, dvc and great-expectations bring most of it
    assert [name for name, (_, hashes) in pins.items() if not hashes] == []
    text = (REPO / "requirements.lock").read_text()
    assert "--extra-index-url" not in text and "--find-links" not in text and "file://" not in text  # portable
