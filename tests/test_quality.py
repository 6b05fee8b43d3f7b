"""Sample-quality scores: the Fréchet distance, the class entropy, the classifier, and evaluate's use of them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pixelnet.data.processed import Split
from pixelnet.evaluation.quality import class_entropy_bits, frechet_distance, sample_quality, train_classifier
from pixelnet.stages.evaluate import sample_scores


def toy(n: int, seed: int) -> Split:
    """8x8, 4 levels, class k bright in quarter k, plus noise: easy to classify."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    x = torch.randint(0, 2, (n, 1, 8, 8), generator=gen, dtype=torch.uint8)
    for i, k in enumerate(labels.tolist()):
        r, c = divmod(k, 2)
        x[i, 0, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = 3
    return Split(x, labels)


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    cov = a @ a.T + np.eye(5)
    mu = rng.normal(size=5)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)
    # Diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    m1, m2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    assert frechet_distance(m1, np.diag(s1), m2, np.diag(s2)) == pytest.approx(5.0 + 1.0 + 1.0)
    b = rng.normal(size=(5, 5))
    cov2 = b @ b.T
    assert frechet_distance(mu, cov, 0 * mu, cov2) == pytest.approx(frechet_distance(0 * mu, cov2, mu, cov))


def test_class_entropy():
    assert class_entropy_bits(np.arange(40) % 4, 4) == pytest.approx(2.0)
    assert class_entropy_bits(np.zeros(10, dtype=int), 4) == 0.0
    assert class_entropy_bits(np.array([0, 0, 1, 1]), 10) == pytest.approx(1.0)


def test_classifier_learns_and_repeats_exactly():
    train = toy(128, 0)
    a = train_classifier(train.images, train.labels, levels=4, n_classes=4, epochs=3, seed=3)
    b = train_classifier(train.images, train.labels, levels=4, n_classes=4, epochs=3, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    test = toy(64, 1)
    with torch.no_grad():
        accuracy = (a(test.images.float() / 3).argmax(1) == test.labels).float().mean()
    assert accuracy > 0.9


def test_real_images_score_near_the_ceiling_and_noise_does_not():
    train, val, test = toy(256, 0), toy(64, 1), toy(64, 2)
    real = sample_quality(toy(32, 3).images, train=train, val=val, test=test, levels=4, n_classes=4)
    noise = torch.randint(0, 4, (32, 1, 8, 8), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    junk = sample_quality(noise, train=train, val=val, test=test, levels=4, n_classes=4)
    assert real["quality_real_source"] == "val" and real["quality_n"] == real["quality_real_n"] == 32
    assert real["samples_confident_fraction"] > 0.8 and real["real_confident_fraction"] > 0.8
    assert real["samples_class_entropy_bits"] > 1.8 and real["samples_classes_in_first_64"] == 4
    assert junk["samples_frechet_distance"] > 5 * real["samples_frechet_distance"]
    assert junk["samples_confident_fraction"] < real["samples_confident_fraction"]
    assert real["quality_max_entropy_bits"] == pytest.approx(math.log2(4))


def test_unlabelled_data_is_skipped_with_a_note(tmp_path):
    samples = np.zeros((4, 1, 8, 8), dtype=np.uint8)
    out = sample_scores(samples, data_dir=tmp_path, manifest={"labeled": False, "classes": ["all"]},
                        test=toy(4, 0), levels=4)
    assert list(out) == ["quality_note"] and "skipped" in out["quality_note"]
