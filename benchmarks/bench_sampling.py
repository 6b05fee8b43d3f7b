"""Naive vs fast (cached) sampling, side by side in one run, on this machine.

For each batch size n it prints seconds for the naive sampler (one full
forward pass per sub-pixel), seconds for the fast sampler, their ratio, the
time of one full forward pass over the batch (the floor a cached sampler
approaches) and fast / forward.  Naive is run only up to --naive-max-n;
larger sizes print "skipped", never an estimate.  When both ran, the images
are compared (they must be identical).

    python benchmarks/bench_sampling.py                      # default model, random weights
    python benchmarks/bench_sampling.py --sizes 1,16,64,256 --naive-max-n 256
    python benchmarks/bench_sampling.py --checkpoint models/model.pt --textbook-n 16
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from pixelnet.checkpoints import load_model
from pixelnet.fast_sampling import sample_fast
from pixelnet.model import ModelConfig, build_model
from pixelnet.sampling import sample_naive, sampling_noise

REPO = Path(__file__).resolve().parents[1]
TEXTBOOK = REPO.parent / "shared" / "reference" / "textbook_pixelcnn.py"


def timed(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of `repeats` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def random_default_model(seed: int) -> tuple[torch.nn.Module, ModelConfig]:
    """ModelConfig()'s model (64 channels, 7 blocks, 7x7 then 3x3 kernels, 28x28, 256 levels) with random weights."""
    torch.manual_seed(seed)
    cfg = ModelConfig()
    return build_model(cfg).eval(), cfg


def textbook_naive_seconds(path: Path, n: int, cfg: ModelConfig) -> float:
    """The reference textbook sampler (one forward per pixel) on a random-weight model of the same size."""
    spec = importlib.util.spec_from_file_location("textbook_pixelcnn", path)
    tb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tb)
    with tempfile.TemporaryDirectory() as tmp:
        model = tb.PixelCNN(cfg.channels, cfg.blocks, cfg.levels)
        ckpt = Path(tmp) / "textbook.pt"
        torch.save({"state": model.state_dict(), "hidden": cfg.channels, "blocks": cfg.blocks, "levels": cfg.levels}, ckpt)
        args = argparse.Namespace(ckpt=str(ckpt), n=n, size=cfg.height, seed=0, out=str(Path(tmp) / "out.npy"))
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its own JSON line
            tb.sample(args)
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,16,64,256", help="comma-separated batch sizes")
    ap.add_argument("--naive-max-n", type=int, default=64, help="run naive only for n up to this")
    ap.add_argument("--checkpoint", type=Path, help="a PixelNet checkpoint (default: the default model, random weights)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs for fast and forward")
    ap.add_argument("--textbook-n", type=int, default=0, help="also time the textbook's naive sampler at this n")
    ap.add_argument("--textbook", type=Path, default=TEXTBOOK, help="path of textbook_pixelcnn.py")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.checkpoint:
        model, cfg = load_model(a.checkpoint)
        source = str(a.checkpoint)
    else:
        model, cfg = random_default_model(a.seed)
        source = "random weights"
    c, h, w = cfg.image_channels, cfg.height, cfg.width
    n_params = sum(p.numel() for p in model.parameters())
    print(f"# sampling benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"model: {cfg.arch}, {cfg.channels} channels, {cfg.blocks} blocks, kernels {cfg.first_kernel}/{cfg.kernel}, "
          f"norm {cfg.norm}, {c}x{h}x{w}, {cfg.levels} levels, {n_params:,} parameters ({source})\n")
    print("| n | naive s | fast s | naive / fast | forward s | fast / forward | identical |")
    print("|---:|---:|---:|---:|---:|---:|:---|")
    naive_by_n = {}
    for n in [int(s) for s in a.sizes.split(",")]:
        noise = sampling_noise(n, c, h, w, seed=a.seed)
        x = torch.randint(0, cfg.levels, (n, c, h, w), generator=torch.Generator().manual_seed(a.seed))
        with torch.no_grad():
            model(x)  # warm-up
            forward, _ = timed(lambda: model(x), a.repeats)
        fast, fast_images = timed(lambda: sample_fast(model, noise), a.repeats)
        if n <= a.naive_max_n:
            print(f"(running naive n={n} ...)", file=sys.stderr, flush=True)
            naive, naive_images = timed(lambda: sample_naive(model, noise), 1)
            naive_by_n[n] = naive
            cells = [f"{naive:.2f}", f"{fast:.3f}", f"{naive / fast:.0f}x",
                     "yes" if torch.equal(naive_images, fast_images) else "NO"]
        else:
            cells = ["skipped", f"{fast:.3f}", "-", "-"]
        print(f"| {n} | {cells[0]} | {cells[1]} | {cells[2]} | {forward:.3f} | {fast / forward:.1f} | {cells[3]} |",
              flush=True)
    if a.textbook_n:
        seconds = textbook_naive_seconds(a.textbook, a.textbook_n, cfg)
        ours = f"{naive_by_n[a.textbook_n]:.2f} s" if a.textbook_n in naive_by_n else "not run"
        print(f"\ntextbook naive sampler (../shared/reference), n={a.textbook_n}, random weights: {seconds:.2f} s "
              f"(PixelNet naive at the same n above: {ours})")


if __name__ == "__main__":
    main()
