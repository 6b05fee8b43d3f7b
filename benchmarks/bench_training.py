"""Training speed, lever by lever, side by side in one run: against the textbook PixelCNN or the machine's peak.

Each row adds one lever to the row above it, so each row's gain over the one above is that lever's share.
`--model textbook` (the default) trains the textbook's model (64 channels, 7 residual blocks, 256-way softmax,
unconditional, batch 64, Adam at 1e-3: devtools/textbook.py) and starts from the textbook itself:

    textbook   the textbook's loop, model and loss as PixelNet code (devtools/textbook.py)
    reference  ../shared/reference/textbook_pixelcnn.py's own train(), unmodified (where it sits beside the clone)
    core       PixelNet's TrainStep computing as the textbook: full masked kernels, NCHW, loss on (B, levels, C, H, W)
    crop       + masked convs over only the kernel rows at and above the centre
    cl         + channels-last activations
    rows       + the loss on a (sub-pixels, levels) view of the logits: PixelNet's step
    compile    + torch.compile of the loss and its backward (train.compile: true)

`--model params` trains params.yaml's model and train section (with --set overrides; class-conditional)
under the train stage's deterministic settings:

    before     fp32, NCHW, batch 32, OMP_WAIT_POLICY=PASSIVE
    omp        + OpenMP's own wait policy (PixelNet sets none)
    cl         + channels-last activations
    bf16       + bf16 autocast, the heads and the loss in fp32 (train.precision: auto where the CPU has native bf16)
    batch64    + batch 64
    compile    + torch.compile of the loss and its backward

Every row trains one epoch over the same --images mnist-5k digits (28x28, or their centre --size) at
--levels, in a fresh process (OpenMP reads its wait policy once), and every step is timed, as the textbook
times itself, but a compiled row's first: its compile time is shown apart, cold in round 1 (an empty inductor
cache), then warm.  Rounds run the rows in rotated order; ratios are against the same round's first row; the
table shows medians over rounds.  images/CPU-s counts the process's CPU time, the steadier measure on a
shared machine.  GFLOP/s is one forward and backward pass's FLOPs (torch.utils.flop_counter) at the row's
images/s, against a 1024^3 matmul in the row's precision measured in this run.  `--profile ROW` prints where
that row's step spends its time instead.

    python benchmarks/bench_training.py --rounds 3
    python benchmarks/bench_training.py --model params --rounds 3 --images 640
    python benchmarks/bench_training.py --model params --profile bf16
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(REPO))  # devtools/, shared with the tests
from devtools.machine import describe  # noqa: E402
from devtools.textbook import (REFERENCE, textbook_config, textbook_loss, textbook_model, train_reference,  # noqa: E402
                               train_textbook)

# Each chain: its first row's settings, then each row's lever (what it adds, its changes to the row above).
TEXTBOOK = {"textbook_kernels": True, "channels_last": False, "textbook_loss": True, "precision": "fp32",
            "batch": 64, "compile": False, "passive": False}
PARAMS = {"textbook_kernels": False, "channels_last": False, "textbook_loss": False, "precision": "fp32",
          "batch": 32, "compile": False, "passive": True}
CHAINS = {
    "textbook": (TEXTBOOK, {
        "textbook": ("the textbook's loop, model and loss as PixelNet code (devtools/textbook.py)", {}),
        "reference": ("../shared/reference/textbook_pixelcnn.py's train(), unmodified", {}),
        "core": ("PixelNet's TrainStep: full masked kernels, NCHW, loss on (B, levels, C, H, W)", {}),
        "crop": ("+ masked convs over the kernel rows at and above the centre only", {"textbook_kernels": False}),
        "cl": ("+ channels-last activations", {"channels_last": True}),
        "rows": ("+ loss on (sub-pixels, levels) rows: PixelNet's step", {"textbook_loss": False}),
        "compile": ("+ torch.compile (train.compile: true)", {"compile": True}),
    }),
    "params": (PARAMS, {
        "before": ("params.yaml's step in fp32, NCHW, batch 32, OMP_WAIT_POLICY=PASSIVE", {}),
        "omp": ("+ OpenMP's own wait policy (PixelNet sets none)", {"passive": False}),
        "cl": ("+ channels-last activations", {"channels_last": True}),
        "bf16": ("+ bf16 autocast, heads and loss in fp32", {"precision": "bf16"}),
        "batch64": ("+ batch 64", {"batch": 64}),
        "compile": ("+ torch.compile (train.compile: true)", {"compile": True}),
    }),
}
GROUPS = {  # profiler operator name fragment -> kind of work, first match wins; the rest is elementwise
    "convolution": "convolutions (forward and backward)",
    "batch_norm": "BatchNorm (forward and backward)",
    "weight_norm": "weight normalization (forward and backward)",
    "log_softmax": "the loss", "nll_loss": "the loss", "softplus": "the loss", "log_sigmoid": "the loss",
    "expm1": "the loss",
    "Optimizer": "the optimizers and the EMA", "_foreach": "the optimizers and the EMA",
    "lerp": "the optimizers and the EMA",
    "mm": "matmuls (Muon's orthogonalization, attention)",
    "copy_": "copies and dtype casts", "_to_copy": "copies and dtype casts", "clone": "copies and dtype casts",
}


def settings(chain: str, row: str) -> dict:
    """A row's settings: its chain's first row's, with every lever down to `row` applied."""
    first, rows = CHAINS[chain]
    out = dict(first)
    for name, (_, change) in rows.items():
        out |= change
        if name == row:
            return out
    raise KeyError(row)


def build(a: argparse.Namespace, s: dict):
    """The row's TrainStep over its model, from params.yaml with the row's settings."""
    from pixelnet.config import load_params
    from pixelnet.model import ModelConfig
    from pixelnet.model.build import build_model
    from pixelnet.stages.train import make_deterministic
    from pixelnet.training.loop import TrainStep

    train = [f"train.batch_size={s['batch']}", f"train.precision={s['precision']}",
             f"train.compile={str(s['compile']).lower()}"]
    if a.model == "textbook":  # the textbook's Adam at a constant 1e-3, nothing else
        params = load_params(REPO / "params.yaml", train + [
            "train.optimizer=adam", "train.lr=0.001", "train.beta1=0.9", "train.beta2=0.999", "train.weight_decay=0",
            "train.lr_schedule=constant", "train.warmup_fraction=0", "train.ema_decay=0", "train.shift=0"])
        if s["textbook_kernels"]:
            model = textbook_model(seed=0, levels=a.levels, height=a.size, width=a.size)  # full kernels, NCHW
        else:
            torch.manual_seed(0)
            model = build_model(textbook_config(levels=a.levels, height=a.size, width=a.size))
    else:
        params = load_params(REPO / "params.yaml", [f"data.levels={a.levels}", *a.set, *train])
        make_deterministic(params.train.seed)
        model = build_model(ModelConfig.for_data(params.model, levels=a.levels, image_channels=1, height=a.size,
                                                 width=a.size, n_classes=10))
    model.memory_format = torch.channels_last if s["channels_last"] else torch.contiguous_format
    if s["textbook_loss"]:  # TrainStep's loss is the distribution's NLL: make it the textbook's
        model.distribution.nll = lambda out, x, reduction: textbook_loss(out, x)
    return TrainStep(model.train(), params.train, total_steps=10_000)  # the schedule's shape does not change speed


def batches(a: argparse.Namespace, batch: int, steps: int):
    """`steps` batches (images, labels or None) of the saved digits, in a seeded order, cycling over them."""
    images, labels = torch.load(a.data / "digits.pt")
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    per_epoch = len(images) // batch
    for b in range(steps):
        idx = perm[b % per_epoch * batch:(b % per_epoch + 1) * batch]
        yield images[idx], (labels[idx] if a.model == "params" else None)


def worker(a: argparse.Namespace, row: str) -> dict:
    """One epoch of `row`: images per wall-clock second and per CPU-second (and a compiled row's compile time)."""
    if row == "reference":
        c0 = time.process_time()
        out = train_reference(a.data / "digits.npy", a.data / "reference.pt", levels=a.levels)
        return {"img_per_s": out["img_per_s"], "img_per_cpu_s": a.images / (time.process_time() - c0)}
    if row == "textbook":
        images, _ = torch.load(a.data / "digits.pt")
        model = textbook_model(seed=0, levels=a.levels, height=a.size, width=a.size)
        c0 = time.process_time()
        out = train_textbook(model, images, epochs=1)
        return {"img_per_s": out["img_per_s"], "img_per_cpu_s": a.images / (time.process_time() - c0)}
    s = settings(a.model, row)
    steps = a.images // s["batch"]
    if s["compile"] and steps < 2:
        raise SystemExit(f"{row} needs 2 batches or more: its first compiles (--images {2 * s['batch']} at least)")
    step = build(a, s)
    wall, cpu = [], []
    for x, y in batches(a, s["batch"], steps):
        t, c = time.perf_counter(), time.process_time()
        step(x, y).item()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    skip = 1 if s["compile"] else 0
    n = (steps - skip) * s["batch"]
    out = {"img_per_s": n / sum(wall[skip:]), "img_per_cpu_s": n / sum(cpu[skip:])}
    if s["compile"]:
        out["compile_s"] = wall[0] - statistics.median(wall[1:])
    return out


def profile(a: argparse.Namespace, row: str, warmup: int = 3, steps: int = 6) -> None:
    """Print where `row`'s step spends its time, by kind of work, over `steps` steps after `warmup`."""
    from torch.profiler import profile as profiler

    s = settings(a.model, row)
    step = build(a, s)
    feed = batches(a, s["batch"], warmup + steps)
    for _ in range(warmup):
        step(*next(feed))
    with profiler() as prof:
        t = time.perf_counter()
        for _ in range(steps):
            step(*next(feed)).item()
        wall = (time.perf_counter() - t) / steps
    totals: dict[str, float] = {}
    for e in prof.key_averages():
        if e.key.startswith(("aten::", "Optimizer")) and e.self_cpu_time_total > 0:
            group = next((g for frag, g in GROUPS.items() if frag in e.key), "elementwise (activations, gates, adds, "
                                                                            "pads, fills)")
            totals[group] = totals.get(group, 0.0) + e.self_cpu_time_total / 1e6 / steps
    totals["Python, autograd and dispatch (the rest of the wall time)"] = wall - sum(totals.values())
    print(f"# {describe()}\n\n{a.model} {row}: {wall * 1e3:.0f} ms a step of {s['batch']} images "
          f"({s['batch'] / wall:.1f} images/s under the profiler)\n")
    print("| work | ms a step | share |\n|---|---:|---:|")
    for g, v in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {g} | {v * 1e3:.1f} | {v / wall:.0%} |")


def gflop_per_image(a: argparse.Namespace, s: dict) -> float:
    """FLOPs of one forward and backward pass, per image (torch.utils.flop_counter; a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    step = build(a, s | {"compile": False})
    x, y = next(batches(a, 8, 1))
    with FlopCounterMode(display=False) as counter:
        step.loss_of(x, y).backward()
    return counter.get_total_flops() / 8 / 1e9


def matmul_peak(dtype: torch.dtype, n: int = 1024, reps: int = 10) -> float:
    """GFLOP/s of an n^3 matmul in `dtype`, best case for this CPU."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def save_digits(a: argparse.Namespace) -> None:
    """--images mnist-5k training digits (a seeded pick, centre --size x --size): 0..255 for the reference, levels
    and labels for the rest."""
    from pixelnet.data.preprocess import quantize
    from pixelnet.data.sources import mnist_5k

    digits = mnist_5k().train  # sorted by class
    pick = np.random.default_rng(0).permutation(len(digits.images))[:a.images]
    top = (digits.images.shape[1] - a.size) // 2
    raw = np.ascontiguousarray(digits.images[pick, top:top + a.size, top:top + a.size, 0])  # (N, size, size) uint8
    np.save(a.data / "digits.npy", raw)
    torch.save((quantize(torch.from_numpy(raw)[:, None], a.levels), torch.from_numpy(digits.labels[pick]).long()),
               a.data / "digits.pt")


def run(cmd: list[str], env: dict[str, str]) -> dict:
    """A worker process; its last stdout line, as JSON."""
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="textbook", choices=list(CHAINS), help="which chain of levers")
    ap.add_argument("--images", type=int, default=1280, help="images a row a round (one epoch; a multiple of 64)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--levels", type=int, default=256)
    ap.add_argument("--size", type=int, default=28, help="the digits' centre size x size (28: whole)")
    ap.add_argument("--rows", help="rows to run, comma-separated (the chain's first always; default: all)")
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for every row (0: PyTorch's default)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="--model params: a params.yaml override (repeatable), e.g. model.channels=64")
    ap.add_argument("--profile", metavar="ROW", help="print where ROW's step spends its time instead of the table")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        if a.profile:
            profile(a, a.worker)
        else:
            print(json.dumps(worker(a, a.worker)))
        return
    a.images -= a.images % 64
    names = list(CHAINS[a.model][1])
    rows = [names[0]] + [r for r in (a.rows.split(",") if a.rows else names) if r and r != names[0]]
    if a.profile in ("textbook", "reference"):
        raise SystemExit(f"--profile core: it computes as {a.profile} does, through the step the profile names")
    unknown = set(rows + ([a.profile] if a.profile else [])) - set(names)
    if unknown or a.images < 64:
        raise SystemExit(f"--images must be 64 or more; rows of --model {a.model}: {', '.join(names)} "
                         f"(unknown: {', '.join(sorted(unknown)) or 'none'})")
    if "reference" in rows and not REFERENCE.is_file():
        print(f"# no shared reference at {REFERENCE}: the reference row is left out", flush=True)
        rows.remove("reference")
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        a.data = Path(tmp)
        save_digits(a)
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        env["TORCHINDUCTOR_CACHE_DIR"] = str(a.data / "inductor")  # round 1 compiles cold, as on a new machine
        if a.threads:
            env["OMP_NUM_THREADS"] = str(a.threads)

        def command(row: str) -> tuple[list[str], dict[str, str]]:
            cmd = [sys.executable, __file__, "--worker", row, "--data", str(a.data), "--model", a.model,
                   "--images", str(a.images), "--levels", str(a.levels), "--size", str(a.size),
                   *[f"--set={o}" for o in a.set]]
            return cmd, env | ({"OMP_WAIT_POLICY": "PASSIVE"} if settings(a.model, row)["passive"] else {})

        if a.profile:
            cmd, row_env = command(a.profile)
            subprocess.run(cmd + ["--profile", a.profile], env=row_env, check=True)
            return
        print(f"# {describe()}", flush=True)
        precisions = {settings(a.model, r)["precision"] for r in rows}
        peaks = {p: matmul_peak(torch.bfloat16 if p == "bf16" else torch.float32) for p in sorted(precisions)}
        print("# matmul 1024^3 peak: " + ", ".join(f"{p} {v:.0f} GFLOP/s" for p, v in peaks.items()), flush=True)
        gflop = {r: gflop_per_image(a, settings(a.model, r)) for r in rows}
        results: dict[str, list[dict]] = {r: [] for r in rows}
        for k in range(a.rounds):
            for r in rows[k % len(rows):] + rows[:k % len(rows)]:
                results[r].append(run(*command(r)))
            print(f"# round {k + 1} (load average {os.getloadavg()[0]:.1f}), images/s: "
                  + ", ".join(f"{r} {results[r][-1]['img_per_s']:.1f}" for r in rows), flush=True)
    print_table(a, rows, results, gflop, peaks)


def print_table(a: argparse.Namespace, rows: list[str], results: dict[str, list[dict]], gflop: dict[str, float],
                peaks: dict[str, float]) -> None:
    first = rows[0]

    def median_and_ratio(r: str, key: str) -> tuple[float, float]:
        ours = [x[key] for x in results[r]]
        return statistics.median(ours), statistics.median(x / f[key] for x, f in zip(ours, results[first]))

    print(f"\n{a.images} images a row, {a.rounds} rounds, {a.size}x{a.size}, {a.levels} levels; medians over rounds, "
          f"ratios against the same round's {first}\n")
    print(f"| row | what | images/s | x {first} | images/CPU-s | x {first} | GFLOP/s | % of matmul peak |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        (w, wr), (c, cr) = median_and_ratio(r, "img_per_s"), median_and_ratio(r, "img_per_cpu_s")
        precision = settings(a.model, r)["precision"]
        rate = w * gflop[r]
        print(f"| {r} | {CHAINS[a.model][1][r][0]} | {w:.1f} | {wr:.2f} | {c:.1f} | {cr:.2f} | {rate:.0f} | "
              f"{rate / peaks[precision]:.0%} ({precision}) |")
    print("\nGFLOP an image, forward and backward (torch.utils.flop_counter): "
          + ", ".join(f"{r} {gflop[r]:.2f}" for r in rows))
    if "compile" in results:
        cs = [x["compile_s"] for x in results["compile"]]
        warm = f"{statistics.median(cs[1:]):.1f} s" if len(cs) > 1 else "not measured (1 round)"
        print(f"compile time: {cs[0]:.1f} s cold (round 1, an empty inductor cache), {warm} with the cache warm")


if __name__ == "__main__":
    main()
