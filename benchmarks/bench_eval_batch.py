"""Forward-pass (evaluation) speed against batch size: why evaluate.batch_size and the validation batch are 64.

Times the test NLL of --images random binarized 28x28 images under the
default model (64 channels, 7 blocks of 5x5, class-conditional, weights as
initialized: speed does not depend on them), once given the labels (one
forward pass per image) and once marginalized over the 10 classes (ten),
at each batch size, in rotated order over --rounds rounds; medians.

    python benchmarks/bench_eval_batch.py
    python benchmarks/bench_eval_batch.py --batches 16,64,256 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `pixelnet` runs; before torch loads OpenMP

import torch  # noqa: E402

from pixelnet.model import ModelConfig  # noqa: E402
from pixelnet.model.build import build_model  # noqa: E402
from pixelnet.model.likelihood import marginal_nll_nats, total_nll_nats  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=500, help="the size of mnist-5k's test split")
    ap.add_argument("--batches", default="16,32,64,128,256,500")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="pixelcnn", kernel=5, head="softmax", norm="batch", conditional=True, levels=2, image_channels=1, height=28, width=28,
                                    n_classes=10)).eval()
    images = torch.randint(0, 2, (args.images, 1, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (args.images,))
    prior, cpu = torch.full((10,), 0.1), torch.device("cpu")
    batches = [int(b) for b in args.batches.split(",")]
    given: dict[int, list[float]] = {b: [] for b in batches}
    marginal: dict[int, list[float]] = {b: [] for b in batches}
    for r in range(args.rounds):
        for b in batches[r % len(batches):] + batches[:r % len(batches)]:
            t0 = time.perf_counter()
            total_nll_nats(model, images, batch_size=b, device=cpu, labels=labels)
            given[b].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            marginal_nll_nats(model, images, prior=prior, batch_size=b, device=cpu)
            marginal[b].append(time.perf_counter() - t0)
    base = statistics.median(marginal[batches[0]])
    print(f"# {args.images} images, threads {torch.get_num_threads()}, medians of {args.rounds} rounds")
    print(f"| batch | given the label, s | marginal over 10 classes, s | marginal images/s | x batch {batches[0]} |")
    print("|---:|---:|---:|---:|---:|")
    for b in batches:
        g, m = statistics.median(given[b]), statistics.median(marginal[b])
        print(f"| {b} | {g:.2f} | {m:.2f} | {10 * args.images / m:.0f} | {base / m:.2f} |")


if __name__ == "__main__":
    main()
