"""PixelNet on a CUDA GPU: one prepared script that runs every GPU check in turn and prints its tables.

    PYTHONPATH=src python benchmarks/bench_gpu.py --data data/processed --out gpu-run
    PYTHONPATH=src python benchmarks/bench_gpu.py --device cpu --smoke --data data/processed --out /tmp/smoke

--data is a preprocessed data directory (`pixelnet preprocess`: the default run's 256-level digits).  The
script needs only torch, typer, pandas, tqdm and pyyaml: the stages run without --mlflow, and nothing it runs
imports mlflow, dvc, great-expectations or mlxtend.  Each part runs in a process of its own under its own time
limit, within --minutes in all; everything each part prints, errors included, goes to one log,
OUT/bench_gpu.log, and its tables to the screen as well.  The parts (PARTS; each function's docstring says
what it measures): pipeline, nccl, throughput, sampling, quality, utilization.  docs/gpu.md says how to read
each table.

--smoke runs every part at a tiny size (an 8-filter model, 64 images, a few steps) to check the script
itself, in well under a minute on a CPU (tests/test_bench_gpu.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pixelnet.config import Params, load_params
from pixelnet.data.processed import load_split, read_manifest
from pixelnet.model import ModelConfig
from pixelnet.model.build import build_model
from pixelnet.model.likelihood import mean_nll_nats
from pixelnet.preset import preset_overrides
from pixelnet.sampling import sample_fast, sample_naive, sampling_noise
from pixelnet.stages.train import make_deterministic, model_config_for
from pixelnet.training import loop
from pixelnet.training.loop import rng_state

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "pipeline" / "presets" / "cifar10.yaml"


@dataclass(frozen=True)
class Sizes:
    """How big each part runs: the real sizes, or --smoke's tiny ones."""
    model: tuple[str, ...]  # overrides of params.yaml for the runs on --data
    preset: tuple[str, ...]  # overrides on top of the CIFAR-10 preset (throughput, sampling)
    image: tuple[int, int, int]  # the preset-size images, (C, H, W)
    images: int | None  # the first images of each split of --data (None: all)
    batches: tuple[int, ...]  # throughput's batch sizes, the preset's first
    compile: bool  # throughput's torch.compile rows
    samples: int
    naive_rows: int  # rows the naive sampler draws
    row_seconds: float  # throughput's timed seconds a row


FULL = Sizes(model=(), preset=(), image=(3, 32, 32), images=None, batches=(96, 192, 384), compile=True, samples=64,
             naive_rows=2, row_seconds=3.0)
SMOKE = Sizes(model=("model.channels=8", "train.epochs=2", "sample.n=4"),
              preset=("model.channels=8", "model.resnet_layers=1", "model.resolutions=2"), image=(3, 8, 8), images=64,
              batches=(4, 8), compile=False, samples=4, naive_rows=1, row_seconds=0.2)
# Each part's own limit in seconds; together about 8 minutes, --minutes' default.
LIMITS = {"pipeline": 100, "nccl": 50, "throughput": 150, "sampling": 70, "quality": 70, "utilization": 40}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def header(*columns: str) -> None:
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns), flush=True)


def row(*cells) -> None:
    """A table row, printed at once: a part that its time limit stops keeps the rows it finished."""
    print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def error(e: Exception) -> str:
    return f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def env() -> dict:
    """The parts' and stages' environment: pixelnet from src/, and cuBLAS ready for deterministic algorithms."""
    paths = [str(REPO / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return os.environ | {"PYTHONPATH": os.pathsep.join(paths),
                         "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8")}


def run(cmd: list, timeout: float, *, stdout, stderr, own_group: bool = False) -> tuple[int | None, float]:
    """A command's exit code (None when its time limit stopped it) and seconds.

    At the limit it gets SIGTERM (torchrun passes it to its workers, which run in sessions of their own), then
    SIGKILL 10 s later.  With own_group (the driver's parts) the signals go to its whole process group: the
    stages a part runs, and torchrun, are in the part's group.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], env=env(), stdout=stdout, stderr=stderr,
                            start_new_session=own_group)
    send = (lambda sig: os.killpg(proc.pid, sig)) if own_group else proc.send_signal
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
        send(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait()
    return code, time.perf_counter() - t0


def pipeline_command(cmd: list, timeout: float) -> tuple[str | None, float]:
    """Run a stage (or torchrun of one): None if it succeeded, else what went wrong; and its seconds.

    A failure's last lines of stderr go to this part's stderr, and so to the log.
    """
    with tempfile.TemporaryFile("w+") as err:
        code, seconds = run(cmd, timeout, stdout=subprocess.DEVNULL, stderr=err)
        err.seek(0)
        lines = err.read().splitlines()
    if code == 0:
        return None, seconds
    print("\n".join(lines[-30:]), file=sys.stderr, flush=True)
    last = lines[-1] if lines else "no output"
    return (f"killed at its limit of {timeout:.0f} s" if code is None else f"FAILED (exit {code}): {last}"), seconds


def stage_command(name: str, *args, overrides: list[str]) -> list:
    return [sys.executable, "-m", f"pixelnet.stages.{name}", "--params", REPO / "params.yaml", *args,
            *[w for o in overrides for w in ("-S", o)]]


def train_result(reports: Path) -> str:
    m = json.loads((reports / "metrics.json").read_text())
    t = json.loads((reports / "timing.json").read_text())
    return (f"{m['epochs']} epochs, {m['steps']} steps, {m['precision']}, val {m['val_bits_per_dim']:.4f} bits/dim, "
            f"{t['images_per_s']:.0f} images/s")


def digits_model(data: Path, overrides: list[str]):
    """params.yaml's model with `overrides` for the images of `data`, seeded random weights."""
    params = load_params(REPO / "params.yaml", overrides)
    torch.manual_seed(0)
    return build_model(model_config_for(params, read_manifest(data), data))


def preset_params(sizes: Sizes) -> Params:
    """params.yaml with the CIFAR-10 preset and --smoke's overrides."""
    return load_params(REPO / "params.yaml", [*preset_overrides(PRESET), *sizes.preset])


def preset_config(sizes: Sizes):
    """The CIFAR-10 preset's model (with --smoke's overrides) for (C, H, W) images of 256 levels, unconditional."""
    params = preset_params(sizes)
    c, h, w = sizes.image
    return ModelConfig.for_data(params.model, levels=256, image_channels=c, height=h, width=w, n_classes=0)


# ---- the parts: each prints its tables ----

def part_pipeline(a, sizes: Sizes) -> None:
    """The train and sample stages as dvc.yaml runs them (less --mlflow and --validation), on --data."""
    work = a.work
    train = stage_command("train", "--data", a.data, "--model", work / "model.pt", "--reports", work / "train",
                          "--state", work / "model.state.pt",
                          overrides=[*sizes.model, f"train.device={a.device}", "train.epochs=2"])
    header("stage", "seconds", "result")
    problem, seconds = pipeline_command(train, a.limit * 0.6)
    row("train", f"{seconds:.1f}", problem or train_result(work / "train"))
    if problem:
        return
    if importlib.util.find_spec("PIL") is None:
        row("sample", "-", "not run: Pillow is missing (the stage writes grid.png); the sampling part runs the "
                           "samplers themselves")
        return
    sample = stage_command("sample", "--model", work / "model.pt", "--out", work / "sample",
                           overrides=list(sizes.model))
    problem, seconds = pipeline_command(sample, a.limit * 0.3)  # on CUDA where there is one: select_device("auto")
    if problem is None:
        info = json.loads((work / "sample" / "sample.json").read_text())
        timing = json.loads((work / "sample" / "timing.json").read_text())
        problem = f"{info['n']} images ({info['method']}) in {timing['sample_seconds']:.2f} s of sampling"
    row("sample", f"{seconds:.1f}", problem)


def part_nccl(a, sizes: Sizes) -> None:
    """torchrun: the train stage on every GPU (2 or more; gloo with 2 processes on a CPU), and one rank's group."""
    gpus = torch.cuda.device_count() if a.device == "cuda" else 0
    if gpus != 1:
        processes = gpus or 2
        batch = processes * math.ceil(32 / processes)  # every rank an equal share
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", processes,
               *stage_command("train", "--data", a.data, "--model", a.work / "model.pt", "--reports",
                              a.work / "train", overrides=[*sizes.model, f"train.device={a.device}", "train.epochs=1",
                                                           f"train.batch_size={batch}"])[1:]]
        header("processes", "backend", "seconds", "result")
        problem, seconds = pipeline_command(cmd, a.limit * 0.6)
        row(processes, "nccl" if gpus else "gloo", f"{seconds:.1f}", problem or train_result(a.work / "train"))
        print()
    if gpus <= 1:
        one_rank_group(torch.device("cuda", 0) if gpus else torch.device("cpu"), a.data, sizes)


def one_rank_group(device: torch.device, data: Path, sizes: Sizes) -> None:
    """A process group of one rank (NCCL on a GPU, gloo on a CPU) through each collective and wrapper training uses
    (distributed.py): with one GPU, the NCCL path that torchrun cannot start."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(s.getsockname()[1]))
    backend = "nccl" if cuda else "gloo"
    header(f"a one-rank {backend} group", "seconds", "result")

    def check(name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            result = fn()
            sync(device)
        except Exception as e:  # noqa: BLE001  (the row says what failed; the next checks still run)
            result = error(e)
        row(name, f"{time.perf_counter() - t0:.2f}", result)

    def ddp_steps() -> str:
        model = digits_model(data, ["model.arch=pixelcnn", "model.norm=batch", *sizes.model]).to(device)
        net = nn.SyncBatchNorm.convert_sync_batchnorm(model) if cuda else model  # as Dist.wrap: SyncBatchNorm on CUDA
        ddp = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
        step = loop.TrainStep(ddp, load_params(REPO / "params.yaml").train, total_steps=100, module=model)
        cfg = model.config
        x = torch.randint(0, cfg.levels, (32, cfg.image_channels, cfg.height, cfg.width), dtype=torch.uint8,
                          device=device)
        labels = torch.arange(32, device=device) % cfg.n_classes if cfg.conditional else None
        losses = [step(x, labels) for _ in range(10)]
        return f"ok: loss {losses[0].item():.3f} -> {losses[-1].item():.3f} nats/dim in 10 steps"

    t = torch.ones(4, device=device)
    gathered = [None]
    check("init_process_group", lambda: torch_dist.init_process_group(backend, world_size=1, rank=0) or "ok")
    check("all_reduce (Dist.mean)", lambda: torch_dist.all_reduce(t) or f"ok: {t.tolist()}")
    check("broadcast (Dist.agree, Dist.share)", lambda: torch_dist.broadcast(t, src=0) or "ok")
    check("all_gather_object of rng_state (Dist.gather)",
          lambda: torch_dist.all_gather_object(gathered, rng_state(device)) or "ok")
    check("DDP" + (" + SyncBatchNorm" if cuda else "") + ", 10 TrainSteps", ddp_steps)
    check("barrier", lambda: (torch_dist.barrier(device_ids=[device.index]) if cuda else torch_dist.barrier()) or "ok")
    torch_dist.destroy_process_group()


def part_throughput(a, sizes: Sizes) -> None:
    """Training images/s at the CIFAR-10 preset's size: precision, torch.compile, deterministic algorithms, batch."""
    device, cfg = torch.device(a.device), preset_config(sizes)
    torch.utils.deterministic.fill_uninitialized_memory = False  # as the train stage (make_deterministic)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    x = torch.randint(0, 256, (2, *sizes.image), dtype=torch.uint8, device=device)
    with FlopCounterMode(display=False) as flops:
        mean_nll_nats(model.distribution, model(x), x).backward()
    per_image = flops.get_total_flops() / 2  # forward and backward, float32, eager
    print(f"model: {cfg.channels} filters, {cfg.resnet_layers} ResNet layers, {cfg.resolutions} resolutions, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters; {per_image / 1e9:.1f} GFLOP an image "
          "(forward + backward, torch.utils.flop_counter); random images; each row a fresh model and TrainStep\n")
    first, largest = sizes.batches[0], sizes.batches[-1]
    rows = ([(p, False, det, first) for det in (True, False) for p in ("fp32", "bf16")]
            + [("bf16", False, False, b) for b in sizes.batches[1:]]
            + [("bf16", True, det, first) for det in (False, True)] + [("bf16", True, False, largest)])
    header("precision", "compile", "deterministic", "batch", "images/s", "ms/step", "TFLOP/s", "first step s",
           "peak GiB")
    for precision, compiled, deterministic, batch in rows:
        cells = [precision, "yes" if compiled else "no", "on" if deterministic else "off", batch]
        if compiled and not sizes.compile:
            row(*cells, "skipped in --smoke: compiling outlasts its budget", "", "", "", "")
            continue
        try:
            r = train_speed(cfg, device, sizes, precision=precision, compiled=compiled, deterministic=deterministic,
                            batch=batch)
            row(*cells, f"{r['images_per_s']:.0f}", f"{r['ms']:.1f}", f"{r['images_per_s'] * per_image / 1e12:.1f}",
                f"{r['first']:.1f}", r["peak"])
        except Exception as e:  # noqa: BLE001  (the row says what failed; the next rows still run)
            row(*cells, error(e), "", "", "", "")


def train_speed(cfg, device: torch.device, sizes: Sizes, *, precision: str, compiled: bool, deterministic: bool,
                batch: int) -> dict:
    """TrainStep's speed (the preset's Adam and EMA) on one batch, timed for row_seconds after two warm-up steps."""
    torch.use_deterministic_algorithms(deterministic)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    train_cfg = preset_params(sizes).train.replace(batch_size=batch, precision=precision, compile=compiled)
    step = loop.TrainStep(model, train_cfg, total_steps=10**6)
    x = torch.randint(0, 256, (batch, *sizes.image), dtype=torch.uint8, device=device)
    t0 = time.perf_counter()
    step(x)  # under compile, this step compiles
    sync(device)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    step(x)
    sync(device)
    n = max(3, min(1000, round(sizes.row_seconds / (time.perf_counter() - t0))))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step(x)
    sync(device)
    seconds = time.perf_counter() - t0
    peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}" if device.type == "cuda" else "-"
    return {"images_per_s": n * batch / seconds, "ms": 1000 * seconds / n, "first": first, "peak": peak}


def part_sampling(a, sizes: Sizes) -> None:
    """64 preset-size images: the fast sampler against naive, which draws a few rows (extrapolated to all)."""
    device, cfg = torch.device(a.device), preset_config(sizes)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).eval()
    c, h, w = sizes.image
    noise = sampling_noise(sizes.samples, c, h, w, seed=0)
    k = sizes.naive_rows
    print(f"{sizes.samples} images of {c}x{h}x{w}, the preset's model ({cfg.channels} filters, {cfg.resnet_layers} "
          "ResNet layers), random weights, temperature 1; the samplers return on the host, so the times include "
          "the device's work\n")
    sample_fast(model, noise[:1], progress=lambda rows: itertools.islice(rows, 1))  # warm-up: kernels, cuDNN
    t0 = time.perf_counter()
    fast = sample_fast(model, noise)
    fast_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = sample_naive(model, noise, progress=lambda rows: itertools.islice(rows, k))  # its first k rows only
    naive_s = time.perf_counter() - t0
    differ = int((naive[:, :, :k] != fast[:, :, :k]).sum())
    header("sampler", "rows drawn", "seconds", f"seconds for all {h} rows", f"first {k} rows against naive's")
    row("fast", h, f"{fast_s:.2f}", f"{fast_s:.2f}", "identical" if differ == 0 else f"{differ} sub-pixels differ")
    row("naive", k, f"{naive_s:.2f}", f"{naive_s * h / k:.1f} (extrapolated: x{h / k:g})", "-")


def part_quality(a, sizes: Sizes) -> None:
    """Bits/dim against seconds of training: the default run's model and train params on --data, fp32 and bf16."""
    device, data = torch.device(a.device), a.data
    params = load_params(REPO / "params.yaml", list(sizes.model))
    manifest = read_manifest(data)
    train, val = load_split(data, "train", manifest), load_split(data, "val", manifest)
    precisions = ["fp32"] + (["bf16"] if device.type == "cpu" or torch.cuda.is_bf16_supported() else [])
    budget = a.limit * 0.8 / len(precisions) / 60  # train.max_minutes of each run: it stops between epochs
    print(f"{len(train.images)} training images of {data}; train.max_minutes {budget:.2f} a run; seconds: "
          "training and validation so far\n")
    header("precision", "epoch", "steps", "seconds", "train bits/dim", "val bits/dim")
    val_bpd = {}
    for precision in precisions:
        make_deterministic(params.train.seed)  # as the train stage: the same initial weights for both
        model = build_model(model_config_for(params, manifest, data))

        def epoch_row(record, _model, precision=precision) -> None:
            val_bpd[precision, record.step] = record.val_bpd
            row(precision, record.epoch, record.step, f"{record.elapsed_seconds:.1f}", f"{record.train_bpd:.4f}",
                f"{record.val_bpd:.4f}")

        loop.fit(model, train, val, params.train.replace(precision=precision, max_minutes=budget), device=device,
                 on_epoch=epoch_row)
    both = sorted(step for p, step in val_bpd if p == "bf16" and ("fp32", step) in val_bpd)
    if both:
        step = both[-1]
        print(f"\nbf16 - fp32 at step {step}: {val_bpd['bf16', step] - val_bpd['fp32', step]:+.4f} bits/dim "
              "(validation)")


def part_utilization(a, sizes: Sizes) -> None:
    """How busy the device is in `fit` and in the preset-size step, and how often fit waits for the device."""
    device = torch.device(a.device)
    params = load_params(REPO / "params.yaml", list(sizes.model))
    train, val = load_split(a.data, "train"), load_split(a.data, "val")
    model = digits_model(a.data, list(sizes.model))
    print(f"busy: {Busy(device).method}\n")
    header("workload", "steps", "busy", "host syncs")
    busy, original = Busy(device), loop.TrainStep.__call__
    loop.TrainStep.__call__ = busy.around(original)  # a measuring probe on fit's step
    try:
        with busy, counting_syncs(device) as syncs:
            history = loop.fit(model, train, val, params.train.replace(epochs=1), device=device)
    finally:
        loop.TrainStep.__call__ = original
    steps = history[-1].step
    synced = ("n/a on a CPU" if syncs is None else
              f"{len(syncs)} ({len(syncs) / steps:.2f} a step: loss reads, validation, data moves)")
    row("fit: the default run's model on --data, 1 epoch", steps, busy.result(), synced)

    cfg = preset_config(sizes)
    torch.manual_seed(0)
    step = loop.TrainStep(build_model(cfg).to(device).train(), preset_params(sizes).train.replace(precision="bf16"),
                          total_steps=10**6)
    x = torch.randint(0, 256, (sizes.batches[0], *sizes.image), dtype=torch.uint8, device=device)
    step(x)  # warm-up
    busy = Busy(device)
    timed = busy.around(step)
    with busy:
        for _ in range(20):
            timed(x)
    row(f"TrainStep alone: the preset's size, bf16, batch {sizes.batches[0]}", 20, busy.result(), "-")


@contextmanager
def counting_syncs(device: torch.device) -> Iterator[list | None]:
    """The host's waits for a CUDA device inside the block (torch.cuda's sync debug mode), as a list of warnings;
    None on a CPU, where nothing waits."""
    if device.type != "cuda":
        yield None
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode("default")
            caught[:] = [w for w in caught if "synchroniz" in str(w.message)]


class Busy:
    """How busy the device is while a `with` block runs.

    With pynvml installed: NVML's utilization (torch.cuda.utilization), sampled every 20 ms.  Without: the device
    time inside the steps wrapped by `around`, between CUDA events, over the device time from the first step's
    start to the last one's end (gaps inside a step count as busy, so it is an upper bound).  On a CPU: the
    process's CPU time over wall time and threads.
    """
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.nvml = device.type == "cuda" and importlib.util.find_spec("pynvml") is not None
        self.method = ("NVML utilization, sampled every 20 ms" if self.nvml else
                       "CUDA events: device time inside the steps / device time from the first step's start to the "
                       "last one's end (an upper bound)" if device.type == "cuda" else
                       "CPU time of the process / (wall time x threads)")
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.samples: list[int] = []
        self.stop = threading.Event()

    def around(self, fn):
        """`fn` with CUDA events recorded around each call (when they are the measure)."""
        if self.device.type != "cuda" or self.nvml:
            return fn

        def timed(*args, **kwargs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*args, **kwargs)
            end.record()
            self.events.append((start, end))
            return out
        return timed

    def __enter__(self) -> Busy:
        sync(self.device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        if self.nvml:
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.02):
            self.samples.append(torch.cuda.utilization(self.device))

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.stop.set()
        if self.nvml:
            self.sampler.join()

    def result(self) -> str:
        if self.nvml:
            return f"{np.mean(self.samples):.0f}% ({len(self.samples)} samples)"
        if self.device.type == "cuda":
            inside = sum(start.elapsed_time(end) for start, end in self.events)
            return f"{100 * inside / self.events[0][0].elapsed_time(self.events[-1][1]):.0f}%"
        return f"{100 * self.cpu / (self.wall * torch.get_num_threads()):.0f}%"


PARTS = {"pipeline": part_pipeline, "nccl": part_nccl, "throughput": part_throughput, "sampling": part_sampling,
         "quality": part_quality, "utilization": part_utilization}


# ---- the driver: each part in a process of its own, under its own limit ----

def machine(device: str) -> str:
    """The hardware and software every figure in the log was measured on."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
               platform.machine())
    lines = [f"CPU: {cpu}, {os.cpu_count()} cores; torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"cuDNN {torch.backends.cudnn.version()}, Python {platform.python_version()}"]
    for i in range(torch.cuda.device_count() if device == "cuda" else 0):
        p = torch.cuda.get_device_properties(i)
        lines.append(f"GPU {i}: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
                     f"{p.multi_processor_count} SMs")
    has = lambda module: "yes" if importlib.util.find_spec(module) else "no"  # noqa: E731
    return "\n".join([*lines, f"pynvml: {has('pynvml')}, Pillow: {has('PIL')}"])


def smoke_data(data: Path, dest: Path, n: int) -> Path:
    """The first n images of each split of `data`, for --smoke (its manifest says so; the hashes are the full set's)."""
    dest.mkdir(parents=True)
    manifest = read_manifest(data)
    for split, info in manifest["splits"].items():
        for kind in ("images", "labels"):
            np.save(dest / f"{split}_{kind}.npy", np.load(data / f"{split}_{kind}.npy")[:n])
        info["count"] = min(n, info["count"])
    manifest["subset"] = f"the first {n} images of each split of {data}"
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def drive(a) -> None:
    """Run the parts in turn, each in its own process under min(its limit, the time left); log everything."""
    a.out.mkdir(parents=True, exist_ok=True)
    log_path = a.out / "bench_gpu.log"
    deadline = time.monotonic() + 60 * a.minutes
    with tempfile.TemporaryDirectory() as tmp, log_path.open("w") as log:
        def say(text: str, *, screen: bool = True) -> None:
            log.write(text + "\n")
            log.flush()
            if screen:
                print(text, flush=True)

        say(f"# bench_gpu, {time.strftime('%Y-%m-%d %H:%M')}, --device {a.device}{' --smoke' if a.smoke else ''}\n"
            f"{machine(a.device)}")
        sizes = SMOKE if a.smoke else FULL
        data = smoke_data(a.data, Path(tmp) / "data", sizes.images) if sizes.images else a.data
        for name in a.parts.split(","):
            say(f"\n## {name}: {PARTS[name].__doc__}\n")
            limit = min(LIMITS[name], deadline - time.monotonic())
            if limit < 10:
                say("skipped: the time for all parts (--minutes) is spent")
                continue
            cmd = [sys.executable, __file__, "--part", name, "--device", a.device, "--data", data,
                   "--work", Path(tmp) / name, "--limit", f"{limit:.0f}"] + (["--smoke"] if a.smoke else [])
            with (Path(tmp) / f"{name}.out").open("w+") as out, (Path(tmp) / f"{name}.err").open("w+") as err:
                code, seconds = run(cmd, limit, stdout=out, stderr=err, own_group=True)
                out.seek(0)
                err.seek(0)
                say(out.read().rstrip())
                errors = err.read()
            status = ("ok" if code == 0 else f"killed at its limit: the rows above are those it finished"
                      if code is None else f"FAILED (exit {code})")
            say(f"\n[{name}: {status}; {seconds:.0f} s of its {limit:.0f}]")
            if errors.strip():
                say(f"--- {name}'s stderr ---\n{errors.rstrip()}\n--- end of {name}'s stderr ---", screen=code != 0)
        say(f"\nthe log: {log_path}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a preprocessed data directory: the 256-level digits")
    ap.add_argument("--out", type=Path, help="the directory for bench_gpu.log")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--smoke", action="store_true", help="every part at a tiny size, to check the script")
    ap.add_argument("--minutes", type=float, default=8.0, help="the time limit of all parts together")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    ap.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)  # one part, in the driver's child process
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.part is not None:
        if a.smoke:
            torch.set_num_threads(1)  # tiny models gain nothing from threads
        PARTS[a.part](a, SMOKE if a.smoke else FULL)
        return
    if a.out is None:
        ap.error("--out is required")
    unknown = set(a.parts.split(",")) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts {', '.join(sorted(unknown))}: choose from {', '.join(PARTS)}")
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda, but torch sees no CUDA device: --device cpu --smoke checks the script on a CPU")
    drive(a)


if __name__ == "__main__":
    main()
