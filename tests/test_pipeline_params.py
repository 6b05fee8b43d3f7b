"""params.yaml as the pipeline's tools write it: `dvc exp run -S` and the sections dvc.yaml depends on."""

from __future__ import annotations

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
