"""Sample quality as seen by a small classifier trained on the train split only.

A likelihood can be good while the samples are loose strokes, so evaluate also asks a seeded CNN what it sees:
the share of images it classifies with p >= 0.9, the entropy of its predicted classes, the Fréchet distance of
its penultimate features to the test split's (as FID), and the classes among the first 64.  `sample_quality`
scores the samples and, as the ceiling, as many real held-out images (val, else train), both against the test
split: a reference holding the real images themselves would pull their distance towards zero.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

CONFIDENT = 0.9
FEATURES = 64


class Classifier(nn.Module):
    """Two conv + pool stages, then a FEATURES-wide layer whose activations are the Fréchet features."""

    def __init__(self, in_channels: int, n_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7), nn.Flatten(),  # (B, 32 * 7 * 7) whatever the image size
            nn.Linear(32 * 49, FEATURES), nn.ReLU(),
        )
        self.out = nn.Linear(FEATURES, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


def to_input(images: torch.Tensor, levels: int) -> torch.Tensor:
    """uint8 levels (N, C, H, W) -> floats in [0, 1]."""
    return images.float() / (levels - 1)


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, *, levels: int, n_classes: int,
    epochs: int = 6, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
) -> Classifier:
    """Fit a Classifier to (images, labels) with Adam; returns it in eval mode."""
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    model = Classifier(images.shape[1], n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = max(1, len(images) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * batches)
    x_all = to_input(images, levels)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(images), generator=order)
        for b in range(batches):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            loss = F.cross_entropy(model(x_all[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: Classifier, images: torch.Tensor, *, levels: int, batch_size: int = 512):
    """(probabilities (N, classes), features (N, FEATURES)) as float64 numpy arrays."""
    probs, feats = [], []
    for start in range(0, len(images), batch_size):
        f = model.features(to_input(images[start:start + batch_size], levels))
        feats.append(f.double())
        probs.append(torch.softmax(model.out(f).double(), dim=1))
    return torch.cat(probs).numpy(), torch.cat(feats).numpy()


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), the Fréchet distance between N(mu1, S1) and N(mu2, S2).

    tr((S1 S2)^(1/2)) is the sum of sqrt(eigenvalues of S1^(1/2) S2 S1^(1/2)), a symmetric PSD matrix: no complex
    round-off, as a general matrix square root (scipy's sqrtm) gives.
    """
    w, v = np.linalg.eigh((cov1 + cov1.T) / 2)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^(1/2), negative rounding noise clipped
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(r @ cov2 @ r), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


def class_entropy_bits(predicted: np.ndarray, n_classes: int) -> float:
    counts = np.bincount(predicted, minlength=n_classes)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def quality_scores(
    model: Classifier, images: torch.Tensor, reference: tuple[np.ndarray, np.ndarray], *, levels: int, n_classes: int
) -> dict[str, float]:
    """The scores of images (N, C, H, W) levels; reference is the (mean, covariance) of the reference features."""
    probs, feats = predict(model, images, levels=levels)
    predicted = probs.argmax(axis=1)
    return {
        "confident_fraction": float((probs.max(axis=1) >= CONFIDENT).mean()),
        "class_entropy_bits": class_entropy_bits(predicted, n_classes),
        "frechet_distance": frechet_distance(*gaussian(feats), *reference),
        "classes_in_first_64": int(len(np.unique(predicted[:64]))),
    }


def label_agreement(model: Classifier, samples: torch.Tensor, labels: torch.Tensor, *, levels: int,
                    n_classes: int) -> dict[str, float]:
    """For class-conditional samples: how often the classifier recognizes each sample as the label it was drawn for."""
    predicted = predict(model, samples, levels=levels)[0].argmax(axis=1)
    labels = labels.numpy()
    out = {"samples_label_match": float((predicted == labels).mean())}
    for k in range(n_classes):
        if (labels == k).any():
            out[f"samples_label_match_class_{k}"] = float((predicted[labels == k] == k).mean())
    return out


def sample_quality(
    samples: torch.Tensor, *, train, val, test, levels: int, n_classes: int, seed: int = 0,
    sample_labels: torch.Tensor | None = None,
) -> dict[str, float | int | str]:
    """Flat metrics: `samples_*` and `real_*` scores, the classifier's test accuracy, n and the real images' source.

    train, val, test: labelled `Split`s.  The real images are len(samples) drawn at random (seeded; a split may be
    sorted by class) from val when it has that many, else from train.
    """
    classifier = train_classifier(train.images, train.labels, levels=levels, n_classes=n_classes, seed=seed)
    probs, test_feats = predict(classifier, test.images, levels=levels)
    reference = gaussian(test_feats)
    n = len(samples)
    source = "val" if len(val.images) >= n else "train"
    pool = (val if source == "val" else train).images
    real = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]]
    out: dict[str, float | int | str] = {
        "classifier_test_accuracy": float((probs.argmax(axis=1) == test.labels.numpy()).mean()),
        "quality_n": n,
        "quality_real_n": len(real),
        "quality_real_source": source,
        "quality_max_entropy_bits": math.log2(n_classes),
    }
    for prefix, imgs in (("samples", samples), ("real", real)):
        scores = quality_scores(classifier, imgs, reference, levels=levels, n_classes=n_classes)
        out.update({f"{prefix}_{k}": v for k, v in scores.items()})
    if sample_labels is not None:
        out.update(label_agreement(classifier, samples, sample_labels, levels=levels, n_classes=n_classes))
    return out


def format_table(metrics: dict) -> str:
    """The samples' scores beside the real images' ceiling, as lines of text."""
    rows = [("confident (p >= 0.9)", "confident_fraction", "{:.1%}"),
            ("class entropy, bits", "class_entropy_bits", "{:.2f}"),
            ("Fréchet distance to test", "frechet_distance", "{:.2f}"),
            ("classes in first 64", "classes_in_first_64", "{}")]
    lines = [f"{'':26}{'samples':>10}{'real (' + str(metrics['quality_real_source']) + ')':>12}"]
    for label, key, fmt in rows:
        lines.append(f"{label:26}{fmt.format(metrics['samples_' + key]):>10}{fmt.format(metrics['real_' + key]):>12}")
    lines.append(f"n = {metrics['quality_n']} samples, {metrics['quality_real_n']} real; classifier test accuracy "
                 f"{metrics['classifier_test_accuracy']:.1%}; max entropy {metrics['quality_max_entropy_bits']:.2f} bits")
    return "\n".join(lines)
