"""What trained models do on their data: where the test NLL goes, and what a mixture's temperature does.

For each checkpoint, on --data's test split (a conditional model's NLL given the true label): the share of
the sub-pixels in each group, the group's mean bits and its contribution to the test bits/dim (the
contributions sum to it).  The groups are the background (level 0), the stroke cores (at least 250/255 of the
top level) and the edges between them: on MNIST at 256 levels 81%, 7% and 12% of the sub-pixels.

With --temperatures, for each checkpoint with a logistic-mixture head: the pipeline's sample scores
(confident fraction, label match, Fréchet distance) of --n samples (fast sampler, the classes in turn,
seed 0) at T = 1 and at each T, for three choices of what T scales: the component logits and the logistics'
scales (LogisticMixture's own, model/distributions.py), the scales only, the component logits only.

    python benchmarks/model_report.py --data PROCESSED_DIR RUN_A/model.pt RUN_B/model.pt
    python benchmarks/model_report.py --data PROCESSED_DIR RUN/model.pt --temperatures 1.2,0.8,0.6
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from pixelnet.checkpoint import load_model
from pixelnet.data.processed import load_split, read_manifest
from pixelnet.evaluation.quality import sample_quality
from pixelnet.model.distributions import LogisticMixture
from pixelnet.sampling import sample_fast, sampling_noise

GROUPS = {"background (0)": lambda v, top: v == 0, "cores (>= 250)": lambda v, top: v >= round(top * 250 / 255),
          "edges (between)": lambda v, top: (v > 0) & (v < round(top * 250 / 255))}


class Tempered(LogisticMixture):
    """A LogisticMixture whose temperature scales only what `scales` names: "components", "scales" or both."""

    def __init__(self, base: LogisticMixture, scales: set[str]) -> None:
        super().__init__(levels=base.levels, image_channels=base.image_channels, mixtures=base.mixtures)
        self.scales = scales

    def unpack(self, params: torch.Tensor, temperature: float = 1.0):
        log_pi, mu, log_scale, coeff = super().unpack(params)  # untempered
        if "components" in self.scales:  # log_softmax(log_pi / T) = log_softmax(logits / T): log_pi is logits - c
            log_pi = torch.log_softmax(log_pi / temperature, dim=-1)
        if "scales" in self.scales:
            log_scale = log_scale + math.log(temperature)
        return log_pi, mu, log_scale, coeff


def nll_row(path: Path, model, cfg, test) -> str:
    """One table row: the checkpoint's test bits/dim and each group's share, mean bits and contribution."""
    x = test.images.long()
    with torch.no_grad():
        nats = torch.cat([model.distribution.nll(model(xb, yb) if cfg.conditional else model(xb), xb, reduction="none")
                          for xb, yb in zip(x.split(100), test.labels.split(100))])  # pixel-major, as `values`
    bits = nats.double() / math.log(2)
    values = x.permute(0, 2, 3, 1).reshape(-1)
    cells = []
    for member in GROUPS.values():
        m = member(values, cfg.levels - 1)
        cells.append(f"{float(m.double().mean()):.3f}, {float(bits[m].mean()):.3f}, "
                     f"{float(bits[m].sum() / len(bits)):.4f}")
    return f"| {path} | {cfg.head} | {float(bits.mean()):.4f} | " + " | ".join(cells) + " |"


def temperature_table(path: Path, model, cfg, splits: dict, n_classes: int, temperatures: list[float],
                      n: int) -> None:
    """Sample scores at T = 1 and at each temperature, for each choice of what it scales."""
    labels = torch.arange(n) % cfg.n_classes if cfg.conditional else None
    noise = sampling_noise(n, cfg.image_channels, cfg.height, cfg.width, seed=0)
    base = model.distribution
    print(f"\n{path}: {n} samples each, seed 0\n")
    print("| T scales | T | confident | label match | Fréchet |\n|---|---:|---:|---:|---:|")
    choices = [("components and scales (PixelNet's)", {"components", "scales"}), ("scales only", {"scales"}),
               ("component logits only", {"components"})]
    for t in [1.0] + temperatures:
        for name, scales in choices[:1] if t == 1.0 else choices:
            model.distribution = Tempered(base, scales)
            images = sample_fast(model, noise, temperature=t, labels=labels)
            q = sample_quality(images, **splits, levels=cfg.levels, n_classes=n_classes, sample_labels=labels)
            match = f"{q['samples_label_match']:.1%}" if "samples_label_match" in q else "-"
            print(f"| {'any (T = 1)' if t == 1.0 else name} | {t:g} | {q['samples_confident_fraction']:.1%} | "
                  f"{match} | {q['samples_frechet_distance']:.1f} |", flush=True)
    model.distribution = base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the preprocessed data the models were trained on")
    ap.add_argument("checkpoints", type=Path, nargs="+")
    ap.add_argument("--temperatures", default="", help="comma-separated: also score a mixture's samples at these")
    ap.add_argument("--n", type=int, default=256, help="samples a temperature")
    a = ap.parse_args()
    manifest = read_manifest(a.data)
    splits = {s: load_split(a.data, s, manifest) for s in ("train", "val", "test")}
    models = [(path, *load_model(path)) for path in a.checkpoints]
    print("| checkpoint | head | test bits/dim given the label | "
          + " | ".join(f"{g}: share, bits, contributes" for g in GROUPS) + " |")
    print("|---|---|---:|" + "---:|" * len(GROUPS))
    for path, model, cfg in models:
        print(nll_row(path, model, cfg, splits["test"]), flush=True)
    temperatures = [float(t) for t in a.temperatures.split(",") if t]
    for path, model, cfg in models if temperatures else []:
        if cfg.head != "logistic_mixture":
            print(f"\n{path} has head {cfg.head}: the temperature table is for a logistic mixture")
            continue
        temperature_table(path, model, cfg, splits, len(manifest["classes"]), temperatures, a.n)


if __name__ == "__main__":
    main()
