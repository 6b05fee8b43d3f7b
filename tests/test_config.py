"""params.yaml is the one home of every default: loading needs every key, and the config classes hold no values."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pixelnet.config import ONLY_FOR, SECTIONS, UNREAD, ModelParams, applies, defaults, load_params
from pixelnet.errors import ConfigError
from pixelnet.model import ModelConfig
from tests.conftest import REPO

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
KEYS = [(section, key) for section, values in PARAMS.items() for key in values]


@pytest.mark.parametrize("section", list(SECTIONS))
def test_each_section_of_params_yaml_sets_exactly_the_config_fields_which_have_no_defaults(section):
    fields = SECTIONS[section].model_fields
    assert set(PARAMS[section]) == set(fields)
    assert all(f.is_required() for f in fields.values())


def test_defaults_are_the_repository_params_and_replace_checks_its_changes():
    assert defaults() == load_params(REPO / "params.yaml")
    assert defaults().train.replace(epochs=2).epochs == 2 and defaults().train.epochs == PARAMS["train"]["epochs"]
    with pytest.raises(ConfigError, match="train.lr must be in"):
        defaults().train.replace(lr=2.0)
    with pytest.raises(ConfigError, match="unknown parameter train.epoch; valid keys in train are: .*epochs"):
        defaults().train.replace(epoch=2)
    with pytest.raises(ConfigError, match="train.compile must be true or false, got 'yes'"):
        defaults().train.replace(compile="yes")


@pytest.mark.parametrize("section, key", KEYS, ids=[f"{s}.{k}" for s, k in KEYS])
def test_a_missing_key_is_an_error_naming_it(tmp_path, section, key):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    del params[section][key]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=rf"missing parameter\(s\) {section}\.{key}: params.yaml must set every key"):
        load_params(path)


def test_a_missing_section_names_each_of_its_keys(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    del params["complete"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="complete.images, complete.per_image, complete.rows"):
        load_params(path)


def test_missing_key_through_the_cli_is_one_clean_line(tmp_path, run_cli):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    del params["sample"]["temperature"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    result = run_cli("sample", "--params", path, "--model", tmp_path / "m.pt", "--out", tmp_path / "out")
    assert result.code == 2 and "Traceback" not in result.err
    assert "missing parameter(s) sample.temperature" in result.err and str(path) in result.err


def test_a_model_config_is_its_params_for_the_data():
    cfg = ModelConfig.for_data(defaults().model, levels=4, image_channels=1, height=8, width=8, n_classes=10)
    assert (cfg.levels, cfg.conditional, cfg.n_classes) == (4, True, 10)
    assert cfg.model_dump().items() >= defaults().model.replace(conditional=True, norm="weight").model_dump().items()


def test_the_resume_fingerprint_hashes_what_training_loaded_and_only_that(tmp_path):
    """The training code in the fingerprint is the source of the modules loaded for training (sys.modules)."""
    script = (
        "import sys, json\n"
        "import pixelnet.stages.train\n"
        "from pixelnet.stages.train import loaded_source_files, training_code_sha256\n"
        "before = training_code_sha256()\n"
        "import pixelnet.tracking.runs\n"  # MLflow logging, loaded by train --mlflow: not training code
        "after_tracking = training_code_sha256()\n"
        "import pixelnet.sampling.fast\n"  # a module training never loads: changes what was loaded, so the hash
        "print(json.dumps([before, after_tracking, training_code_sha256(),"
        " [str(f) for f in loaded_source_files()]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
    import json

    before, after_tracking, after_sampling, files = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == after_tracking != after_sampling
    names = {str(f).split("src/pixelnet/")[-1] for f in files}
    assert {"stages/train.py", "training/loop.py", "training/optim.py", "model/pixelcnn.py"} <= names


def test_a_checkpoint_without_a_data_fact_is_a_clean_error_naming_it(tmp_path, run_cli):
    import torch

    from pixelnet.checkpoint import SCHEMA_VERSION, save_checkpoint
    from pixelnet.model.build import build_model
    from tests.conftest import model_config

    cfg = model_config()
    save_checkpoint(build_model(cfg), cfg, tmp_path / "m.pt")
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    del ckpt["config"]["levels"]
    assert ckpt["schema_version"] == SCHEMA_VERSION
    torch.save(ckpt, tmp_path / "m.pt")
    result = run_cli("sample", "--params", REPO / "params.yaml", "--model", tmp_path / "m.pt", "--out", tmp_path / "o")
    assert result.code == 2 and "Traceback" not in result.err
    assert f"checkpoint {tmp_path / 'm.pt'} holds a model config this PixelNet cannot use (missing parameter(s) " \
           "model.levels)" in result.err


@pytest.mark.parametrize("override, message", [
    ("model.blocks=12", "model.blocks is for arch pixelcnn and gated: arch pixelcnnpp with head softmax "
                        "does not read it, so it must keep its default 7, got 12 (the keys this model reads: arch, "
                        "channels, norm, head, resnet_layers, resolutions, dropout, activation, init, attention, "
                        "conditional)"),
    ("model.head=softmax model.mixtures=5", "model.mixtures is for head logistic_mixture"),
])
def test_a_model_key_the_chosen_model_does_not_read_is_refused(tmp_path, run_cli, override, message):
    """A changed value the model would ignore is an error naming the keys that apply, not a silent no-op."""
    sets = [w for o in override.split() for w in ("-S", o)]
    result = run_cli("train", "--params", REPO / "params.yaml", *sets, "--data", tmp_path / "none",
                     "--model", tmp_path / "m.pt", "--reports", tmp_path / "reports")
    assert result.code == 2 and "Traceback" not in result.err
    assert message in result.err and "params.yaml" in result.err
    assert not (tmp_path / "m.pt").exists()


def test_every_model_key_applies_to_some_model_and_params_yaml_suits_each():
    """ONLY_FOR names real keys, architectures and heads, its unread values are params.yaml's, and params.yaml's
    model section is valid for every arch and head."""
    from typing import get_args

    archs = set(get_args(ModelParams.model_fields["arch"].annotation))
    heads = set(get_args(ModelParams.model_fields["head"].annotation)) - {"auto"}
    assert all(set(readers) <= archs or set(readers) <= heads for readers, _ in ONLY_FOR.values())
    assert UNREAD == {key: PARAMS["model"][key] for key in ONLY_FOR}  # the reference dvc exp run -S cannot edit
    for arch in archs:
        for head in heads:
            assert defaults().model.replace(arch=arch, head=head).head == head
            assert {k for k in ONLY_FOR if applies(k, arch=arch, head=head)} == {
                k for k, (readers, _) in ONLY_FOR.items() if arch in readers or head in readers}
        assert applies("channels", arch=arch, head="auto")
