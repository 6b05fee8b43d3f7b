"""Which parameters a logistic mixture's temperature should scale: sample scores of one trained model per choice.

`LogisticMixture` (model/distributions.py) divides the component logits by T
and multiplies the logistics' scales by T.  This scores that choice against
scaling only the scales or only the component logits, at several T, on one
trained mixture checkpoint: 256 samples each (fast sampler, the classes in
turn, seed 0), by the pipeline's classifier.

    python benchmarks/bench_temperature.py --checkpoint RUN/model.pt --data PROCESSED_DIR --temperatures 1.2,0.8,0.6
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="a model trained with model.head: logistic_mixture")
    ap.add_argument("--data", type=Path, required=True, help="the preprocessed data it was trained on")
    ap.add_argument("--temperatures", default="1.2,0.8,0.6")
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    model, cfg = load_model(args.checkpoint)
    if cfg.head != "logistic_mixture":
        raise SystemExit(f"{args.checkpoint} has head {cfg.head}: this compares a mixture's temperatures")
    manifest = read_manifest(args.data)
    train, val, test = (load_split(args.data, s, manifest) for s in ("train", "val", "test"))
    labels = torch.arange(args.n) % cfg.n_classes if cfg.conditional else None
    noise = sampling_noise(args.n, cfg.image_channels, cfg.height, cfg.width, seed=0)
    base = model.distribution
    print(f"{args.checkpoint}: {args.n} samples each, seed 0\n")
    print("| T scales | T | confident | label match | Fréchet |")
    print("|---|---:|---:|---:|---:|")
    choices = [("components and scales (PixelNet's)", {"components", "scales"}), ("scales only", {"scales"}),
               ("component logits only", {"components"})]
    for t in [1.0] + [float(v) for v in args.temperatures.split(",") if v]:
        for name, scales in choices[:1] if t == 1.0 else choices:
            model.distribution = Tempered(base, scales)
            images = sample_fast(model, noise, temperature=t, labels=labels)
            q = sample_quality(images, train=train, val=val, test=test, levels=cfg.levels,
                               n_classes=len(manifest["classes"]), sample_labels=labels)
            match = f"{q['samples_label_match']:.1%}" if "samples_label_match" in q else "-"
            print(f"| {'any (T = 1)' if t == 1.0 else name} | {t:g} | {q['samples_confident_fraction']:.1%} | {match} | "
                  f"{q['samples_frechet_distance']:.1f} |", flush=True)
    model.distribution = base


if __name__ == "__main__":
    main()
