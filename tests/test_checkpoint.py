"""Checkpoint schemas: what is stored, and the migration that loads every older schema.

tests/fixtures/checkpoints_v1/ holds checkpoints of schema 1, one per architecture, written by
`save_checkpoint` at commit 04dd2c6 (before the masked models' layers got names), with the images
`sample_fast` drew from each then (`expected.pt`, noise seed 1, 4 images, labels 0, 1, 2, 0 for the
conditional Gated PixelCNN).  Loading them through the migration must give the same model: the same
forward pass and the same samples.
"""

from __future__ import annotations

import pytest
import torch

from pixelnet.checkpoint import MIGRATIONS, SCHEMA_VERSION, load_model, read_checkpoint, save_checkpoint
from pixelnet.errors import PixelNetError
from pixelnet.model.build import build_model
from pixelnet.sampling import sample_fast, sampling_noise
from tests.conftest import REPO, model_config

FIXTURES = REPO / "tests" / "fixtures" / "checkpoints_v1"
ARCHS = ["pixelcnn", "gated", "pixelcnnpp"]


@pytest.fixture(scope="module")
def expected() -> dict:
    return torch.load(FIXTURES / "expected.pt", weights_only=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_schema_1_checkpoint_loads_as_the_model_it_was(arch, expected):
    assert torch.load(FIXTURES / f"{arch}.pt", weights_only=True)["schema_version"] == 1
    model, cfg = load_model(FIXTURES / f"{arch}.pt")
    assert cfg.arch == arch
    labels = torch.arange(4) % 3 if cfg.conditional else None
    with torch.no_grad():
        zeros = torch.zeros(2, cfg.image_channels, 5, 5, dtype=torch.long)
        out = model(zeros) if labels is None else model(zeros, labels[:2])
    torch.testing.assert_close(out, expected[arch]["forward_zeros"], rtol=0, atol=1e-5)  # threads round differently
    samples = sample_fast(model, sampling_noise(4, cfg.image_channels, 5, 5, seed=1), labels=labels)
    assert torch.equal(samples, expected[arch]["samples"])


def test_the_migration_renames_the_masked_models_layers_and_fills_old_defaults():
    old = torch.load(FIXTURES / "pixelcnn.pt", weights_only=True)
    assert "blocks.0.body.4.weight" in old["state_dict"] and "head.3.weight" in old["state_dict"]
    for key in ("head", "norm", "conditional"):  # a schema-1 checkpoint written before these keys existed
        del old["config"][key]
    new = MIGRATIONS[1](old)
    assert new["schema_version"] == 2
    assert "blocks.0.conv_mid.weight" in new["state_dict"] and "head.out.weight" in new["state_dict"]
    assert "blocks.0.norm_mid.running_var" in new["state_dict"]
    assert (new["config"]["head"], new["config"]["norm"], new["config"]["conditional"]) == ("softmax", "batch", False)
    assert not {"resnet_layers", "resolutions", "dropout", "mixtures"} & set(new["config"])  # pixelcnn does not read them


def test_a_schema_1_checkpoint_may_hold_keys_its_architecture_ignored(tmp_path, expected):
    """Schema 1 let a PixelCNN++ config carry a changed `blocks`, which it never read: the migration drops it."""
    old = torch.load(FIXTURES / "pixelcnnpp.pt", weights_only=True)
    old["config"]["blocks"] = 12
    torch.save(old, tmp_path / "m.pt")
    model, cfg = load_model(tmp_path / "m.pt")
    assert cfg.blocks == 7  # the default: not read by PixelCNN++
    samples = sample_fast(model, sampling_noise(4, 1, 5, 5, seed=1))
    assert torch.equal(samples, expected["pixelcnnpp"]["samples"])


def test_schema_2_pixelcnnpp_gets_the_layers_it_was_written_with():
    """A schema-2 PixelCNN++ predates activation, init and attention: it had the concatenated ELU, no attention."""
    old = MIGRATIONS[1](torch.load(FIXTURES / "pixelcnnpp.pt", weights_only=True))
    assert old["schema_version"] == 2 and "activation" not in old["config"]
    new = MIGRATIONS[2](old)
    assert new["schema_version"] == 3
    assert (new["config"]["activation"], new["config"]["init"], new["config"]["attention"]) == (
        "concat_elu", "default", False)
    assert "activation" not in MIGRATIONS[2](MIGRATIONS[1](torch.load(FIXTURES / "gated.pt", weights_only=True)))["config"]


@pytest.mark.parametrize("arch", ARCHS)
def test_a_checkpoint_stores_only_the_keys_its_architecture_reads(tmp_path, arch):
    cfg = model_config(arch=arch, norm="weight" if arch == "pixelcnnpp" else "batch")
    save_checkpoint(build_model(cfg), cfg, tmp_path / "m.pt")
    stored = read_checkpoint(tmp_path / "m.pt")
    assert stored["schema_version"] == SCHEMA_VERSION
    assert ("blocks" in stored["config"]) == (arch != "pixelcnnpp")
    assert ("resolutions" in stored["config"]) == (arch == "pixelcnnpp")
    assert "mixtures" not in stored["config"]  # a softmax head
    assert load_model(tmp_path / "m.pt")[1] == cfg


def test_an_unknown_or_broken_schema_is_a_clean_error(tmp_path):
    ckpt = torch.load(FIXTURES / "pixelcnn.pt", weights_only=True)
    torch.save(ckpt | {"schema_version": 99}, tmp_path / "future.pt")
    with pytest.raises(PixelNetError, match="schema 99, this PixelNet reads 1, 2, 3: retrain the model"):
        read_checkpoint(tmp_path / "future.pt")
    del ckpt["config"]["arch"]
    torch.save(ckpt, tmp_path / "broken.pt")
    with pytest.raises(PixelNetError, match="has checkpoint schema 1 but not its layout"):
        read_checkpoint(tmp_path / "broken.pt")
