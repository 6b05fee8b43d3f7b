"""Training throughput: the textbook PixelCNN vs PixelNet, side by side in one run, on this machine.

Every variant trains the same size of model (64 channels, 7 residual blocks,
28x28, 256 levels, batch 64, Adam) for one epoch over the same --images
mnist-5k digits, in its own fresh process, and reports images/s.  The
textbook is the in-project baseline, benchmarks/textbook.py: PixelNet's code
configured and run as the textbook runs (its loop, its loss, full masked
kernels, NCHW), checked against ../shared/reference/textbook_pixelcnn.py by
tests/test_textbook.py.  `reference` runs that shared file's own `train`,
when it sits beside the clone (--reference PATH), to show the two agree in
speed too.  The PixelNet rows add the throughput changes one at a time, so
each row's gain over the one above is that change's share:

    core      the model as the core issue left it: full k x k masked convs, NCHW, the loss on (B, levels, C, H, W)
    crop      masked convs use only the kernel rows at and above the centre (2x3 instead of 3x3, 4x7 instead of 7x7)
    cl        + channels-last activations
    rows      + the loss on a (sub-pixels, levels) view of the logits
    passive   + OpenMP threads that wait passively (OMP_WAIT_POLICY=PASSIVE, which `pixelnet` sets): PixelNet's default
    compile   + torch.compile of the loss and its backward (train.compile true); its compile time is shown apart

`textbook+passive` is the textbook with the same OpenMP setting, to show how
much of the gain that setting alone buys.  Every ratio is against `textbook`.

Two speeds per run: images per wall-clock second, and images per CPU-second
of the process (CPU time excludes the time other processes had the cores;
with --threads 1 it is the steadier measure on a shared machine).  Rounds
alternate the variants in a rotated order; each ratio is taken within a
round, against that round's textbook, and the table shows medians over rounds.
The first round of `compile` compiles cold (a fresh inductor cache); later
rounds reuse that cache, as a second training run on the machine would.

    python benchmarks/bench_training.py                 # 3 rounds, 1280 images, PyTorch's default threads
    python benchmarks/bench_training.py --threads 1 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference" / "textbook_pixelcnn.py"
BATCH = 64
VARIANTS = {
    "textbook": "the textbook as PixelNet code (benchmarks/textbook.py): its model, loop and loss",
    "reference": "../shared/reference/textbook_pixelcnn.py train, unmodified (if beside the clone)",
    "textbook+passive": "the textbook with OMP_WAIT_POLICY=PASSIVE",
    "core": "PixelNet's TrainStep, run as the textbook runs: full masked kernels, NCHW, loss on (B, levels, C, H, W)",
    "crop": "+ masked convs over the kernel rows at and above the centre only",
    "cl": "+ channels-last activations",
    "rows": "+ loss on (sub-pixels, levels) rows",
    "passive": "+ OMP_WAIT_POLICY=PASSIVE  [PixelNet default]",
    "compile": "+ torch.compile  [train.compile: true]",
}
PIXELNET = ["core", "crop", "cl", "rows", "passive", "compile"]  # cumulative, in this order
PASSIVE = {"textbook+passive", "passive", "compile"}
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/textbook.py, when run as a script


def reference_worker(data: Path, reference: Path) -> dict:
    """Call the shared reference's own train() on data; time it on the wall (as it does) and in CPU-seconds."""
    spec = importlib.util.spec_from_file_location("textbook_pixelcnn", reference)
    tb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tb)
    with tempfile.TemporaryDirectory() as tmp:
        args = argparse.Namespace(data=str(data), epochs=1, bs=BATCH, lr=1e-3, hidden=64, blocks=7, seed=0,
                                  levels=256, out=str(Path(tmp) / "textbook.pt"))
        out = io.StringIO()
        c0 = time.process_time()
        with contextlib.redirect_stdout(out):
            tb.train(args)
        cpu = time.process_time() - c0
    n = len(np.load(data))
    return {"img_per_s": json.loads(out.getvalue().strip().splitlines()[-1])["img_per_s"], "img_per_cpu_s": n / cpu}


def textbook_worker(data: Path) -> dict:
    """The in-project textbook's loop, one epoch over data, timed on the wall and in CPU-seconds."""
    from textbook import textbook_model, train_textbook

    model = textbook_model(seed=0)
    images = torch.from_numpy(np.load(data))[:, None]  # (N, 1, 28, 28) levels
    c0 = time.process_time()
    timing = train_textbook(model, images, epochs=1)
    return {"img_per_s": timing["img_per_s"], "img_per_cpu_s": len(images) / (time.process_time() - c0)}


def worker(variant: str, data: Path) -> dict:
    """Train one epoch of `variant` over data (N, 28, 28) uint8, timed over every step as the textbook times itself."""
    from textbook import _full_kernel_forward, textbook_config, textbook_loss

    from pixelnet.config import TrainConfig
    from pixelnet.model.build import build_model
    from pixelnet.model.layers import MaskedConv2d
    from pixelnet.model.likelihood import mean_nll_nats
    from pixelnet.training.loop import TrainStep

    level = PIXELNET.index(variant)
    if level < PIXELNET.index("crop"):
        MaskedConv2d.forward = _full_kernel_forward  # this process only
    torch.manual_seed(0)
    model = build_model(textbook_config())  # the textbook's size: 64 channels, 7 blocks, 3x3, 256 levels
    if level < PIXELNET.index("cl"):
        model.memory_format = torch.contiguous_format
    images = torch.from_numpy(np.load(data))[:, None]  # (N, 1, 28, 28) levels
    steps = len(images) // BATCH
    cfg = TrainConfig(batch_size=BATCH, lr=1e-3, lr_schedule="constant", warmup_fraction=0.0, ema_decay=0.0,
                      compile=level >= PIXELNET.index("compile"))
    step = TrainStep(model.train(), cfg, total_steps=steps,
                     loss=mean_nll_nats if level >= PIXELNET.index("rows") else textbook_loss)
    perm = torch.randperm(len(images))
    wall, cpu = [], []
    for b in range(steps):
        t, c = time.perf_counter(), time.process_time()
        step(images[perm[b * BATCH:(b + 1) * BATCH]]).item()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    skip = 1 if cfg.compile else 0  # the first step compiles: report the rest, and the compile time apart
    out = {"img_per_s": (steps - skip) * BATCH / sum(wall[skip:]), "img_per_cpu_s": (steps - skip) * BATCH / sum(cpu[skip:])}
    if cfg.compile:
        out["compile_s"] = wall[0] - statistics.median(wall[1:])
    return out


def run(cmd: list[str], env: dict[str, str]) -> dict:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1280, help="images per measurement (one epoch)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for every process (0: PyTorch's default)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="rows to run, comma-separated (textbook always)")
    ap.add_argument("--reference", type=Path, default=REFERENCE, help="the shared textbook script, for `reference`")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        if args.worker == "reference":
            result = reference_worker(args.data, args.reference)
        elif args.worker.startswith("textbook"):
            result = textbook_worker(args.data)
        else:
            result = worker(args.worker, args.data)
        print(json.dumps(result | {"threads": torch.get_num_threads()}))
        return
    variants = ["textbook"] + [v for v in args.variants.split(",") if v and v != "textbook"]
    if "reference" in variants and not args.reference.is_file():
        print(f"# no shared reference at {args.reference}: the `reference` row is left out", flush=True)
        variants.remove("reference")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")

    from pixelnet.data.sources import mnist_5k

    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        data = Path(tmp) / "digits.npy"
        n = args.images - args.images % BATCH
        digits = mnist_5k().train.images  # sorted by class: take a seeded random subset
        pick = np.random.default_rng(0).permutation(len(digits))[:n]
        np.save(data, digits[pick, :, :, 0])  # (N, 28, 28) uint8, 0..255 = 256 levels
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        results: dict[str, list[dict]] = {v: [] for v in variants}
        print(f"# {n} images x {args.rounds} rounds, batch {BATCH}, 64 channels, 7 blocks, 28x28, 256 levels; "
              f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads {args.threads or 'default'}", flush=True)
        for r in range(args.rounds):
            for v in variants[r % len(variants):] + variants[:r % len(variants)]:
                cmd = [sys.executable, __file__, "--worker", v, "--data", str(data), "--reference", str(args.reference)]
                results[v].append(run(cmd, env | ({"OMP_WAIT_POLICY": "PASSIVE"} if v in PASSIVE else {})))
            print(f"# round {r + 1} (load average {os.getloadavg()[0]:.1f}), images/s wall | per CPU-s: "
                  + ", ".join(f"{v} {results[v][-1]['img_per_s']:.1f} | {results[v][-1]['img_per_cpu_s']:.1f}"
                              for v in variants), flush=True)
    print_table(variants, results)


def print_table(variants: list[str], results: dict[str, list[dict]]) -> None:
    def column(v: str, key: str) -> tuple[float, float]:
        ours = [r[key] for r in results[v]]
        ratios = [a / b[key] for a, b in zip(ours, results["textbook"])]
        return statistics.median(ours), statistics.median(ratios)

    print()
    print(f"| {'variant':16} | {'what':84} | {'images/s':>8} | {'x textbook':>10} | {'images/CPU-s':>12} | {'x textbook':>10} |")
    print(f"|{'-' * 18}|{'-' * 86}|{'-' * 9}:|{'-' * 11}:|{'-' * 13}:|{'-' * 11}:|")
    for v in variants:
        (w, wr), (c, cr) = column(v, "img_per_s"), column(v, "img_per_cpu_s")
        print(f"| {v:16} | {VARIANTS[v]:84} | {w:8.1f} | {wr:10.2f} | {c:12.1f} | {cr:10.2f} |")
    if "compile" in results:
        print("\n" + compile_time(results["compile"]))


def compile_time(rounds: list[dict]) -> str:
    """The torch.compile variant's compile time: cold in round 1 (an empty inductor cache), then warm."""
    cs = [r["compile_s"] for r in rounds]
    warm = f"{statistics.median(cs[1:]):.1f} s" if len(cs) > 1 else "not measured (1 round)"
    return f"compile time: {cs[0]:.1f} s cold (round 1, an empty inductor cache), {warm} with the cache warm"


if __name__ == "__main__":
    main()
