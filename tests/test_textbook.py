"""The in-project textbook baseline (devtools/textbook.py) agrees with the shared reference it stands for.

The reference, ../shared/reference/textbook_pixelcnn.py, sits beside a clone in
this project's workplace and CI, not inside the repository; the tests that run
it are skipped, saying so, where it is absent.  With the textbook's input scaling
(level / (levels - 1)) patched in, the two must be one network: the same
initial weights from the same seed, the same logits, and the same weights
after one epoch of their own training loops.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from devtools.textbook import REFERENCE, reference, sample_textbook, textbook_model, train_reference, train_textbook

SMALL = {"channels": 16, "blocks": 2}

pytestmark = pytest.mark.usefixtures("one_thread")
needs_reference = pytest.mark.skipif(not REFERENCE.is_file(), reason=f"the shared reference {REFERENCE} is not "
                                                                     "beside this clone")


@pytest.fixture(scope="module")
def tb():
    return reference()


@pytest.fixture
def textbook_scaling(monkeypatch):
    """PixelNet's model fed level / (levels - 1), as the textbook feeds its network."""
    monkeypatch.setattr("pixelnet.model.pixelcnn.scale_input", lambda x, levels: x.float() / (levels - 1))


def weights(state: dict) -> list[torch.Tensor]:
    return [v for k, v in state.items() if not k.endswith("mask")]  # the reference also saves its masks


@needs_reference
def test_same_seed_same_initial_weights(tb):
    torch.manual_seed(0)
    ref = tb.PixelCNN(SMALL["channels"], SMALL["blocks"], 256)
    ours = textbook_model(seed=0, **SMALL)
    a, b = weights(ref.state_dict()), weights(ours.state_dict())
    assert [t.shape for t in a] == [t.shape for t in b]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())


@needs_reference
def test_same_logits_with_the_textbook_input_scaling(tb, textbook_scaling):
    torch.manual_seed(0)
    ref = tb.PixelCNN(SMALL["channels"], SMALL["blocks"], 256)
    ours = textbook_model(seed=0, height=8, width=8, **SMALL)
    x = torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    for mode in ("train", "eval"):
        ref.train(mode == "train")
        ours.train(mode == "train")
        with torch.no_grad():
            assert torch.allclose(ours(x)[:, :, 0], ref(x.float() / 255), atol=1e-5), mode


@needs_reference
def test_one_epoch_of_each_loop_ends_at_the_same_weights(textbook_scaling, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (130, 8, 8), dtype=np.uint8)  # 2 full batches and 2 images
    np.save(tmp_path / "x.npy", images)
    train_reference(tmp_path / "x.npy", tmp_path / "ref.pt", **SMALL)
    ref = torch.load(tmp_path / "ref.pt", weights_only=True)["state"]
    ours = textbook_model(seed=0, height=8, width=8, **SMALL)
    train_textbook(ours, torch.from_numpy(images)[:, None], epochs=1)
    a, b = weights(ref), weights(ours.state_dict())
    assert all(torch.allclose(x.double(), y.double(), atol=1e-4) for x, y in zip(a, b))
    moved = textbook_model(seed=0, height=8, width=8, **SMALL).state_dict()
    assert not torch.allclose(weights(moved)[0], b[0])  # training changed them: the comparison means something


def test_textbook_sampler_draws_levels_pixel_by_pixel():
    model = textbook_model(seed=0, height=4, width=4, **SMALL)
    a, b = sample_textbook(model, 3, seed=5), sample_textbook(model, 3, seed=5)
    assert a.shape == (3, 1, 4, 4) and a.dtype == torch.uint8 and torch.equal(a, b)
