"""Where a model's test NLL goes: bits per sub-pixel on background, stroke cores and stroke edges.

On MNIST at 256 levels, 81% of the sub-pixels are 0 (background), 7% are
>= 250 (stroke cores) and 12% are the grey edges in between.  For each
checkpoint this prints each group's share of the sub-pixels, its mean bits
and its contribution to the test bits/dim (the contributions sum to it), each
sub-pixel's NLL given the true label for a conditional model.

    python benchmarks/nll_breakdown.py --data PROCESSED_DIR RUN_A/model.pt RUN_B/model.pt
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from pixelnet.checkpoint import load_model
from pixelnet.data.processed import load_split, read_manifest

GROUPS = {"background (0)": lambda v, top: v == 0, "cores (>= 250)": lambda v, top: v >= round(top * 250 / 255),
          "edges (between)": lambda v, top: (v > 0) & (v < round(top * 250 / 255))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="preprocessed data (its test split)")
    ap.add_argument("checkpoints", type=Path, nargs="+")
    args = ap.parse_args()
    test = load_split(args.data, "test", read_manifest(args.data))
    x = test.images.long()
    print("| checkpoint | head | test bits/dim given the label | " + " | ".join(f"{g}: share, bits, contributes" for g in GROUPS) + " |")
    print("|---|---|---:|" + "---:|" * len(GROUPS))
    for path in args.checkpoints:
        model, cfg = load_model(path)
        with torch.no_grad():
            nats = torch.cat([model.distribution.nll(model(xb, yb) if cfg.conditional else model(xb), xb, reduction="none")
                              for xb, yb in zip(x.split(100), test.labels.split(100))])  # pixel-major, as x below
        bits = nats.double() / math.log(2)
        values = x.permute(0, 2, 3, 1).reshape(-1)
        cells = []
        for member in GROUPS.values():
            m = member(values, cfg.levels - 1)
            cells.append(f"{float(m.double().mean()):.3f}, {float(bits[m].mean()):.3f}, {float(bits[m].sum() / len(bits)):.4f}")
        print(f"| {path} | {cfg.head} | {float(bits.mean()):.4f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
