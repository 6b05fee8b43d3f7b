"""The fast sampler's refusals and the CLI's sampling methods; its exactness is tests/test_conformance.py's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pixelnet.checkpoint import save_checkpoint
from pixelnet.sampling import sample_naive, sampling_noise
from pixelnet.sampling.fast import sample_fast
from tests.conftest import random_model as conftest_random_model
from tests.conftest import write_params

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def random_model(**overrides) -> torch.nn.Module:
    return conftest_random_model(sharpen=8.0, **{"width": 6, **overrides})


def test_models_without_a_fast_form_or_in_train_mode_are_refused():
    model = random_model()
    with pytest.raises(ValueError, match="eval mode"):
        sample_fast(model.train(), sampling_noise(1, 1, 5, 6, seed=0))

    class Other(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    with pytest.raises(ValueError, match="no fast sampler for Other"):
        sample_fast(Other(), sampling_noise(1, 1, 5, 6, seed=0))


def tiny_checkpoint(tmp_path):
    model = random_model(levels=4, first_kernel=3, kernel=3, blocks=1)
    save_checkpoint(model, model.config, tmp_path / "model.pt")
    params = tmp_path / "params.yaml"
    write_params(params, "sample: {n: 3, temperature: 1.0, seed: 5}\n")
    return model, params


def test_cli_sample_uses_the_fast_method_by_default(tmp_path, run_cli):
    model, params = tiny_checkpoint(tmp_path)
    result = run_cli("sample", "--model", tmp_path / "model.pt", "--out", tmp_path / "fast", "--params", params)
    assert result.code == 0, result.err
    info = json.loads((tmp_path / "fast" / "sample.json").read_text())
    assert info["method"] == "fast"
    expected = sample_naive(model, sampling_noise(3, 1, 5, 6, seed=5))
    assert np.array_equal(np.load(tmp_path / "fast" / "samples.npy"), expected.numpy())


def test_cli_sample_naive_method_gives_the_same_images(tmp_path, run_cli):
    _, params = tiny_checkpoint(tmp_path)
    for method, flag in (("naive", ["--method", "naive"]), ("fast", ["-S", "sample.method=fast"])):
        result = run_cli("sample", "--model", tmp_path / "model.pt", "--out", tmp_path / method, "--params", params, *flag)
        assert result.code == 0, result.err
        assert json.loads((tmp_path / method / "sample.json").read_text())["method"] == method
    assert np.array_equal(np.load(tmp_path / "naive" / "samples.npy"), np.load(tmp_path / "fast" / "samples.npy"))
