""".ci/run runs the README's test command and stops at its first failing step: the reproducibility check runs
only after the tests passed.  It runs in a copy, with every program it calls a logging shim (no install)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

SHIMS = ("python3.11", "pip", "pytest", "python", "chromium", "chromedriver")  # chromium's: no apt-get
REPRO_CHECK = "python pipeline/repro_check.py"


def readme_test_steps() -> list[str]:
    """The README's test command, split at its &&s, less the venv's activation (no program of its own)."""
    lines = (REPO / "README.md").read_text().splitlines()
    command = lines[lines.index("# Set up and run the tests") + 1]
    return [step.strip() for step in command.split("&&") if not step.strip().startswith(". ")]


def run_ci(root: Path, *, failing: str | None = None) -> tuple[int, list[str]]:
    """.ci/run in a copy of the files it reads; the programs it ran, in order (`failing` exits 1)."""
    (root / ".ci").mkdir()
    shutil.copy(REPO / ".ci" / "run", root / ".ci" / "run")
    shutil.copy(REPO / "README.md", root / "README.md")
    shims, log = root / "shims", root / "ran.log"
    shims.mkdir()
    for name in SHIMS:
        venv = 'if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && : > "$3/bin/activate"; fi\n'
        (shims / name).write_text(f'#!/bin/sh\necho {name} "$@" >> "{log}"\n'
                                  + ("exit 1\n" if name == failing else venv if name == "python3.11" else ""))
        (shims / name).chmod(0o755)
    env = os.environ | {"PATH": f"{shims}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", root / ".ci" / "run"], env=env, capture_output=True, text=True, timeout=60)
    return done.returncode, log.read_text().splitlines() if log.exists() else []


def test_ci_runs_the_readme_test_command_then_the_repro_check(tmp_path):
    code, ran = run_ci(tmp_path)
    assert code == 0 and ran == readme_test_steps() + [REPRO_CHECK]


@pytest.mark.parametrize("failing", ["python3.11", "pip", "pytest"])
def test_a_failing_step_fails_ci_at_once(tmp_path, failing):
    code, ran = run_ci(tmp_path, failing=failing)
    assert code != 0
    assert ran[-1].split()[0] == failing and REPRO_CHECK not in ran
