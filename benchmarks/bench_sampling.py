"""Naive vs fast (cached) sampling, side by side in one run, on this machine.

For each batch size n it prints seconds for the naive sampler (one full
forward pass per sub-pixel), seconds for the fast sampler, their ratio, the
time of one full forward pass over the batch (the floor a cached sampler
approaches) and fast / forward.  Naive is run only up to --naive-max-n;
larger sizes print "skipped", never an estimate.  When both ran, the images
are compared (they must be identical).

    python benchmarks/bench_sampling.py                      # the textbook's model size, random weights
    python benchmarks/bench_sampling.py --sizes 1,16,64,256 --naive-max-n 256
    python benchmarks/bench_sampling.py --checkpoint models/model.pt --textbook-n 16
    python benchmarks/bench_sampling.py --config "model.arch=pixelcnnpp" --sizes 64   # params.yaml's model, 28x28

--config builds params.yaml's model section with the given overrides for the
default data's shape (28x28 gray, 10 classes; `data.levels` 256 unless set),
random weights; with --image-channels 3 it is RGB.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/textbook.py, when run as a script
from textbook import sample_textbook, textbook_config, textbook_model  # noqa: E402

from pixelnet.checkpoint import load_model  # noqa: E402
from pixelnet.config import load_params  # noqa: E402
from pixelnet.model import ModelConfig  # noqa: E402
from pixelnet.model.build import build_model  # noqa: E402
from pixelnet.sampling import sample_fast, sample_naive, sampling_noise  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of `repeats` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def random_textbook_size_model(seed: int, head: str = "softmax") -> tuple[torch.nn.Module, ModelConfig]:
    """The textbook's model size (64 channels, 7 blocks, 7x7 then 3x3 kernels, 28x28, 256 levels), random weights."""
    torch.manual_seed(seed)
    cfg = dataclasses.replace(textbook_config(), head=head)
    return build_model(cfg).eval(), cfg


def random_params_model(overrides: str, seed: int, image_channels: int) -> tuple[torch.nn.Module, ModelConfig]:
    """params.yaml's model with `overrides` (space-separated section.key=value) for 28x28 images, random weights."""
    words = overrides.split()
    if not any(w.startswith("data.levels=") for w in words):
        words.append("data.levels=256")
    params = load_params(REPO / "params.yaml", words)
    torch.manual_seed(seed)
    cfg = ModelConfig.for_data(params.model, levels=params.data.levels, image_channels=image_channels, height=28,
                               width=28, n_classes=10)
    return build_model(cfg).eval(), cfg


def textbook_naive_seconds(n: int, seed: int) -> float:
    """The textbook's naive sampler (benchmarks/textbook.py: one forward per pixel) on its own random-weight model."""
    model = textbook_model(seed=seed)
    t0 = time.perf_counter()
    sample_textbook(model, n, seed=seed)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,16,64,256", help="comma-separated batch sizes")
    ap.add_argument("--naive-max-n", type=int, default=64, help="run naive only for n up to this")
    ap.add_argument("--checkpoint", type=Path, help="a PixelNet checkpoint (default: the default model, random weights)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs for fast and forward")
    ap.add_argument("--textbook-n", type=int, default=0, help="also time the textbook's naive sampler at this n")
    ap.add_argument("--head", default="softmax", choices=["softmax", "logistic_mixture"],
                    help="the random-weight model's output distribution (a checkpoint has its own)")
    ap.add_argument("--config", help="params.yaml's model with these overrides, e.g. \"model.arch=pixelcnnpp\"")
    ap.add_argument("--image-channels", type=int, default=1, choices=[1, 3], help="with --config: gray or RGB")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.checkpoint:
        model, cfg = load_model(a.checkpoint)
        source = str(a.checkpoint)
    elif a.config is not None:
        model, cfg = random_params_model(a.config, a.seed, a.image_channels)
        source = f"random weights, params.yaml with {a.config}"
    else:
        model, cfg = random_textbook_size_model(a.seed, a.head)
        source = "random weights"
    c, h, w = cfg.image_channels, cfg.height, cfg.width
    n_params = sum(p.numel() for p in model.parameters())
    print(f"# sampling benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    shape = (f"{cfg.resnet_layers} gated ResNet layers a block, {cfg.resolutions} resolutions" if cfg.arch == "pixelcnnpp"
             else f"{cfg.blocks} blocks, kernels {cfg.first_kernel}/{cfg.kernel}")
    print(f"model: {cfg.arch}, {cfg.channels} channels, {shape}, norm {cfg.norm}, head {cfg.head}, {c}x{h}x{w}, "
          f"{cfg.levels} levels, conditional {cfg.conditional}, {n_params:,} parameters ({source})\n")
    print("| n | naive s | fast s | naive / fast | forward s | fast / forward | identical |")
    print("|---:|---:|---:|---:|---:|---:|:---|")
    naive_by_n = {}
    for n in [int(s) for s in a.sizes.split(",")]:
        noise = sampling_noise(n, c, h, w, seed=a.seed)
        x = torch.randint(0, cfg.levels, (n, c, h, w), generator=torch.Generator().manual_seed(a.seed))
        labels = torch.arange(n) % cfg.n_classes if cfg.conditional else None  # the classes in turn
        with torch.no_grad():
            forward_pass = (lambda: model(x)) if labels is None else (lambda: model(x, labels))
            forward_pass()  # warm-up
            forward, _ = timed(forward_pass, a.repeats)
        fast, fast_images = timed(lambda: sample_fast(model, noise, labels=labels), a.repeats)
        if n <= a.naive_max_n:
            print(f"(running naive n={n} ...)", file=sys.stderr, flush=True)
            naive, naive_images = timed(lambda: sample_naive(model, noise, labels=labels), 1)
            naive_by_n[n] = naive
            cells = [f"{naive:.2f}", f"{fast:.3f}", f"{naive / fast:.0f}x",
                     "yes" if torch.equal(naive_images, fast_images) else "NO"]
        else:
            cells = ["skipped", f"{fast:.3f}", "-", "-"]
        print(f"| {n} | {cells[0]} | {cells[1]} | {cells[2]} | {forward:.3f} | {fast / forward:.1f} | {cells[3]} |",
              flush=True)
    if a.textbook_n:
        seconds = textbook_naive_seconds(a.textbook_n, a.seed)
        ours = f"{naive_by_n[a.textbook_n]:.2f} s" if a.textbook_n in naive_by_n else "not run"
        print(f"\ntextbook naive sampler (benchmarks/textbook.py), n={a.textbook_n}, random weights: {seconds:.2f} s "
              f"(PixelNet naive at the same n above: {ours})")


if __name__ == "__main__":
    main()
