"""dvc.yaml and params.yaml: each stage's params sections; params as `dvc exp run -S` writes them.

The stages' source deps are checked against what each stage's process loaded in tests/test_pipeline.py.
"""

from __future__ import annotations

import yaml

from pixelnet.config import SECTIONS, load_params
from tests.conftest import REPO


def test_exponent_floats_as_dvc_writes_them_are_numbers(tmp_path):
    path = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text()  # DVC's ruamel writes 0.00001 as 1e-05
    text = text.replace("  lr: 0.02 ", "  lr: 1e-05 ", 1).replace("  temperature: 1.0\n", "  temperature: 5E-1\n", 1)
    path.write_text(text)
    params = load_params(path, ["evaluate.batch_size=3", "train.seed=7"])
    assert params.train.lr == 1e-05 and params.sample.temperature == 0.5 and params.train.seed == 7
    assert load_params(path, ["train.lr=3e-4"]).train.lr == 3e-4


def test_each_stage_depends_on_its_own_params_sections_only():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    wanted = {"download": {"data"}, "preprocess": {"data"}, "validate": {"data"}, "train": {"model", "train"},
              "sample": {"sample"}, "complete": {"complete"}, "evaluate": {"evaluate"}}
    assert set(stages) == set(wanted)
    for name, stage in stages.items():
        assert {p.split(".")[0] for p in stage["params"]} == wanted[name], name


def test_every_params_section_is_some_stages_dependency():
    """A section no stage depends on would change nothing that DVC re-runs: its changes would go unseen."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    depended = {p.split(".")[0] for stage in stages.values() for p in stage["params"]}
    assert sorted(set(SECTIONS) - depended) == []
