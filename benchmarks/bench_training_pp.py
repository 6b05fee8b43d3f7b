"""PixelCNN++ training throughput, lever by lever, side by side in one run, against the machine's own peak.

The model is params.yaml's (PixelCNN++ at its default size, class-conditional)
on 28x28 mnist-5k digits at --levels (256 by default), trained by the
pipeline's own `TrainStep` under the train stage's deterministic settings.
Each row adds one lever to the row above it, so each row's gain over the one
above is that lever's share:

    before     the step as issue 21 found it: fp32, NCHW, batch 32, OMP_WAIT_POLICY=PASSIVE
    omp        + OpenMP's own wait policy (a short spin, then sleep) instead of PASSIVE's immediate sleep
    cl         + channels-last activations (the fp32 levers end here: a CPU without native bf16 stops here)
    bf16       + bfloat16 autocast (the heads and the loss stay float32: model/layers.py in_float32)
    batch64    + batch 64
    compile    + torch.compile of the loss and its backward (the compile time is shown apart)

Every row runs in a fresh process (OpenMP reads its wait policy once).  Rounds
run the rows in a rotated order, each ratio is taken against the same round's
`before`, and the table shows medians over rounds.  GFLOP/s counts the
multiply-adds of one forward and backward pass (torch.utils.flop_counter) at
the row's images/s; the peak is a 2048^3 matmul measured in this run, in each
precision.

    python benchmarks/bench_training_pp.py                       # 3 rounds of 640 images a row
    python benchmarks/bench_training_pp.py --rows before,bf16 --rounds 5
    python benchmarks/bench_training_pp.py --profile before      # where one row's step spends its time
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_training's run(), when run as a script
from bench_training import compile_time, run  # noqa: E402  (run: a worker process, its last stdout line as JSON)

ROWS = {  # name: (what it adds, its settings); every row keeps the settings of the rows above it
    "before": ("the step as issue 21 found it: fp32, NCHW, batch 32, OMP_WAIT_POLICY=PASSIVE",
               {"precision": "fp32", "channels_last": False, "batch": 32, "compile": False, "passive": True}),
    "omp": ("+ OpenMP's default wait policy (PixelNet's default since issue 21)", {"passive": False}),
    "cl": ("+ channels-last activations (PixelCNNPP.memory_format; not the default: slower here)", {"channels_last": True}),
    "bf16": ("+ bf16 autocast, heads and loss in fp32 (train.precision: auto on this CPU)", {"precision": "bf16"}),
    "batch64": ("+ batch 64", {"batch": 64}),
    "compile": ("+ torch.compile of the loss and its backward (train.compile: true)", {"compile": True}),
}
FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


def settings(row: str) -> dict:
    out: dict = {}
    for name, (_, change) in ROWS.items():
        out |= change
        if name == row:
            return out
    raise KeyError(row)


def build(levels: int, s: dict):
    """params.yaml's model for 28x28 digits at `levels`, conditional on 10 classes, and its TrainStep."""
    from pixelnet.config import TrainConfig, load_params
    from pixelnet.model import ModelConfig
    from pixelnet.model.build import build_model
    from pixelnet.stages.train import make_deterministic
    from pixelnet.training.loop import TrainStep

    make_deterministic(0)
    params = load_params(REPO / "params.yaml")
    model = build_model(ModelConfig.for_data(params.model, levels=levels, image_channels=1, height=28, width=28,
                                             n_classes=10)).train()
    model.memory_format = torch.channels_last if s["channels_last"] else torch.contiguous_format
    cfg = TrainConfig(batch_size=s["batch"], precision=s["precision"], compile=s["compile"], ema_decay=params.train.ema_decay)
    return model, TrainStep(model, cfg, total_steps=10_000)


def batches(images: torch.Tensor, labels: torch.Tensor, batch: int):
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    for b in range(len(images) // batch):
        idx = perm[b * batch:(b + 1) * batch]
        yield images[idx], labels[idx]


def gflop_per_image(levels: int, s: dict) -> float:
    """Multiply-adds x 2 of one forward and backward pass, per image (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, step = build(levels, s | {"compile": False})
    x = torch.randint(0, levels, (8, 1, 28, 28), dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter:
        step.loss_of(x, torch.arange(8) % 10).backward()
    return counter.get_total_flops() / 8 / 1e9


def worker(row: str, data: Path, levels: int) -> dict:
    s = settings(row)
    images, labels = torch.load(data)
    model, step = build(levels, s)
    wall, cpu, first = [], [], None
    for x, y in batches(images, labels, s["batch"]):
        t, c = time.perf_counter(), time.process_time()
        step(x, y).item()
        if first is None:
            first = time.perf_counter() - t
            continue  # the first step allocates (and compiles): reported apart
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    n = len(wall) * s["batch"]
    out = {"img_per_s": n / sum(wall), "img_per_cpu_s": n / sum(cpu), "threads": torch.get_num_threads()}
    if s["compile"]:
        out["compile_s"] = first - statistics.median(wall)
    return out


def profile_worker(row: str, data: Path, levels: int, steps: int = 6) -> None:
    """Print where `row`'s step spends its time, grouped by kind of work."""
    from torch.profiler import profile

    s = settings(row)
    images, labels = torch.load(data)
    _, step = build(levels, s)
    feed = batches(images, labels, s["batch"])
    for _ in range(3):
        step(*next(feed))
    with profile() as prof:
        t = time.perf_counter()
        for _ in range(steps):
            step(*next(feed)).item()
        wall = (time.perf_counter() - t) / steps
    groups = {  # operator name fragment -> group, first match wins
        "convolution": "convolutions (forward and backward)",
        "weight_norm": "weight normalization (forward and backward)",
        "copy_": "copies and dtype casts", "_to_copy": "copies and dtype casts", "clone": "copies and dtype casts",
        "Adam": "Adam and the EMA", "_foreach": "Adam and the EMA", "lerp": "Adam and the EMA",
        "log_softmax": "the loss (mixture NLL)", "softplus": "the loss (mixture NLL)", "expm1": "the loss (mixture NLL)",
        "log_sigmoid": "the loss (mixture NLL)", "where": "the loss (mixture NLL)",
    }
    elementwise = "elementwise (concat-ELU, gates, adds, pads, fills)"
    totals: dict[str, float] = {}
    for e in prof.key_averages():
        if e.key.startswith(("aten::", "Optimizer")) and e.self_cpu_time_total > 0:
            group = next((g for frag, g in groups.items() if frag in e.key), elementwise)
            totals[group] = totals.get(group, 0.0) + e.self_cpu_time_total / 1e6 / steps
    totals["Python, autograd and dispatch (the rest of the wall time)"] = wall - sum(totals.values())
    print(f"\n{row}: {wall * 1e3:.0f} ms a step of {s['batch']} images ({s['batch'] / wall:.1f} images/s under the "
          "profiler)\n")
    print("| work | ms a step | share |\n|---|---:|---:|")
    for g, v in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {g} | {v * 1e3:.1f} | {v / wall:.0%} |")


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def machine() -> str:
    from pixelnet.training.precision import cpu_flags

    name = next((line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    flags = ", ".join(f"{f} {'yes' if f in cpu_flags() else 'no'}" for f in FLAGS)
    return (f"{name}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads; {flags}; torch {torch.__version__} "
            f"(ATen CPU capability {torch.backends.cpu.get_cpu_capability()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=640, help="images a row a round (one pass over them)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--levels", type=int, default=256)
    ap.add_argument("--rows", default=",".join(ROWS), help="rows to run, comma-separated (`before` always)")
    ap.add_argument("--profile", metavar="ROW", help="print one row's profile instead of the table")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker and args.profile:
        profile_worker(args.worker, args.data, args.levels)
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.data, args.levels)))
        return
    rows = ["before"] + [r for r in args.rows.split(",") if r and r != "before"]
    unknown = set(rows + ([args.profile] if args.profile else [])) - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")

    from pixelnet.data.sources import mnist_5k
    from pixelnet.data.preprocess import quantize

    digits = mnist_5k().train
    pick = torch.randperm(len(digits.images), generator=torch.Generator().manual_seed(0))[:args.images + 64]
    images = quantize(torch.from_numpy(digits.images[pick.numpy(), :, :, 0])[:, None], args.levels)
    labels = torch.from_numpy(digits.labels[pick.numpy()]).long()
    with tempfile.TemporaryDirectory(prefix="bench-training-pp-") as tmp:
        data = Path(tmp) / "digits.pt"
        torch.save((images, labels), data)
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")  # the first compile is cold, as on a new machine
        if args.profile:
            cmd = [sys.executable, __file__, "--worker", args.profile, "--data", str(data), "--levels", str(args.levels),
                   "--profile", args.profile]
            subprocess.run(cmd, env=env | ({"OMP_WAIT_POLICY": "PASSIVE"} if settings(args.profile)["passive"] else {}),
                           check=True)
            return
        print(f"# {machine()}", flush=True)
        peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
        print(f"# matmul 2048^3 peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s", flush=True)
        gflop = {r: gflop_per_image(args.levels, settings(r)) for r in rows}
        results: dict[str, list[dict]] = {r: [] for r in rows}
        for k in range(args.rounds):
            for r in rows[k % len(rows):] + rows[:k % len(rows)]:
                cmd = [sys.executable, __file__, "--worker", r, "--data", str(data), "--levels", str(args.levels)]
                results[r].append(run(cmd, env | ({"OMP_WAIT_POLICY": "PASSIVE"} if settings(r)["passive"] else {})))
            print(f"# round {k + 1} (load average {os.getloadavg()[0]:.1f}): "
                  + ", ".join(f"{r} {results[r][-1]['img_per_s']:.1f}" for r in rows), flush=True)
    print_table(rows, results, gflop, peaks, args)


def print_table(rows: list[str], results: dict[str, list[dict]], gflop: dict[str, float], peaks: dict[str, float],
                args: argparse.Namespace) -> None:
    def median_and_ratio(r: str, key: str) -> tuple[float, float]:
        ours = [x[key] for x in results[r]]
        return statistics.median(ours), statistics.median(a / b[key] for a, b in zip(ours, results["before"]))

    print(f"\n{args.images} images a row, {args.rounds} rounds, {args.levels} levels; medians over rounds, ratios "
          "against the same round's `before`\n")
    print("| row | what | images/s | x before | images/CPU-s | x before | GFLOP/s | % of matmul peak |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        (w, wr), (c, cr) = median_and_ratio(r, "img_per_s"), median_and_ratio(r, "img_per_cpu_s")
        rate = w * gflop[r]
        peak = peaks[settings(r)["precision"]]
        print(f"| {r} | {ROWS[r][0]} | {w:.1f} | {wr:.2f} | {c:.1f} | {cr:.2f} | {rate:.0f} | "
              f"{rate / peak:.0%} ({settings(r)['precision']}) |")
    print(f"\n{statistics.median(gflop.values()):.2f} GFLOP an image, forward and backward (torch.utils.flop_counter)")
    if "compile" in results:
        print(compile_time(results["compile"]))


if __name__ == "__main__":
    main()
