"""The speedrun: quality per unit of compute, candidate configs against a pinned baseline, side by side in one run.

Each config is params.yaml plus `section.key=value` overrides, named `NAME=overrides` (or a preset name:
`baseline-2026-12` is the default run as it was on 2026-12-04, every model and train key pinned, so the
comparison stays valid as params.yaml moves; `default` is params.yaml as it is).  Every (config, seed) trains
in a fresh process with the pipeline's own `fit` on the mnist-5k split, then reports:

- FLOPs: GFLOP an image, forward and backward (torch.utils.flop_counter), x images trained;
- the validation bits/dim at every epoch end, against training seconds and training FLOPs (`curves`);
- test bits/dim of the final weights (the images alone: -log sum_y p(y) p(x | y) for a conditional model);
- with --samples, the pipeline's sample scores (256 samples, fast sampler, T = 1, the classes in turn).

Levers are chosen on the validation column; the test column is reported, never tuned on.  Runs go
--jobs at a time, each with --threads threads: the FLOP columns do not depend on that, the seconds do,
so compare seconds only between rows of one invocation with the same --jobs and --threads.

    python benchmarks/speedrun.py --config baseline-2026-12 --config "b2=train.beta2=0.9995" \
        --seeds 0,1 --epochs 3 --jobs 2 --threads 1 --out reports/speedrun/screen.jsonl
    python benchmarks/speedrun.py --table reports/speedrun/screen.jsonl
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # devtools/, shared with the tests
from devtools.machine import describe  # noqa: E402

PARAMS = REPO / "params.yaml"  # what the configs' overrides apply to (--params)

# The default run of 2026-12-04 (issue 21's choice, 1.126 test bits/dim): every model and train key it reads.
BASELINE = ("model.arch=pixelcnnpp model.channels=32 model.norm=auto model.head=auto model.mixtures=10 "
            "model.resnet_layers=1 model.resolutions=3 model.dropout=0.0 model.conditional=auto "
            "train.epochs=10 train.batch_size=32 train.optimizer=adam train.lr=0.003 train.beta1=0.9 train.beta2=0.999 "
            "train.weight_decay=0.0 train.shift=0 train.lr_schedule=cosine train.warmup_fraction=0.05 "
            "train.ema_decay=0.999")
PRESETS = {"baseline-2026-12": BASELINE, "default": ""}


def parse_config(spec: str, epochs: int | None = None) -> tuple[str, str, bool]:
    """'NAME=overrides', 'NAME=PRESET:overrides' or a preset's name -> (name, overrides, whether they fix epochs).

    With `epochs`, train.epochs=epochs goes after the preset's keys and before the config's own, which win.
    """
    name, sep, own = spec.partition("=")
    preset = ""
    if not sep or "." in name or " " in name:
        if spec not in PRESETS:
            raise SystemExit(f"--config {spec!r}: write NAME=overrides (e.g. \"b2=train.beta2=0.9995\"), "
                             f"NAME=PRESET:overrides, or a preset ({', '.join(PRESETS)})")
        preset, own = PRESETS[spec], ""
    elif own.partition(":")[0] in PRESETS:
        base, _, own = own.partition(":")
        preset = PRESETS[base]
    length = f"train.epochs={epochs}" if epochs else ""
    return name, " ".join(part for part in (preset, length, own) if part), "train.epochs=" in own or bool(epochs)


def prepare(work: Path, levels: int, params_path: Path = PARAMS) -> Path:
    from pixelnet.config import load_params
    from pixelnet.stages.download import download
    from pixelnet.stages.preprocess import preprocess

    params = load_params(params_path, [f"data.levels={levels}"])
    raw, data = work / "raw", work / f"processed-{levels}"
    if not raw.exists():
        download(params.data, out_dir=raw, cache_dir=work / "external")
    if not (data / "manifest.json").exists():
        preprocess(params.data, raw_dir=raw, out_dir=data)
    return data


def gflop_per_image(model, cfg, x, labels) -> float:
    """Forward and backward GFLOP of one image (torch.utils.flop_counter; a multiply-add is 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pixelnet.training.loop import TrainStep

    step = TrainStep(model, cfg, total_steps=1)
    with FlopCounterMode(display=False) as counter:
        step.loss_of(x, labels).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x) / 1e9


def run_one(name: str, overrides: str, seed: int, *, data: Path, samples: bool, tflop: float | None = None,
            fixed_epochs: bool = False, test_curve: bool = False, params_path: Path = PARAMS,
            limit: int | None = None) -> dict:
    """Train one config with one seed in this process; its row.

    With `tflop` (and unless the config fixes its epochs), train.epochs is the whole number of epochs closest to
    that many training TFLOPs.  The curve holds, at every epoch end, the validation bits/dim and the test bits/dim
    given the label (one forward pass of the test split); with `test_curve` also the test bits/dim of the images
    alone (a conditional model's marginal: a forward pass per class).
    """
    import copy

    import torch

    from pixelnet.config import load_params
    from pixelnet.data.processed import load_split, read_manifest
    from pixelnet.evaluation.nll import heldout_nll
    from pixelnet.model.build import build_model
    from pixelnet.model.likelihood import class_prior
    from pixelnet.stages.train import make_deterministic, model_config_for
    from pixelnet.training.loop import fit

    params = load_params(params_path, overrides.split() + [f"train.seed={seed}"])
    manifest = read_manifest(data)
    splits = {s: load_split(data, s, manifest) for s in ("train", "val", "test")}
    if limit:  # a smoke run: the first `limit` images of each split
        splits = {k: type(v)(v.images[:limit], v.labels[:limit]) for k, v in splits.items()}
    cpu = torch.device("cpu")
    make_deterministic(seed)
    model = build_model(model_config_for(params, manifest, data))
    mcfg = model.config
    n_train = len(splits["train"].images)
    probe = splits["train"].images[:8]
    gflop = gflop_per_image(copy.deepcopy(model), params.train, probe,
                            splits["train"].labels[:8] if mcfg.conditional else None)
    if tflop and not fixed_epochs:
        epochs = max(1, round(tflop * 1e3 / (gflop * n_train)))
        params = params.replace(train=params.train.replace(epochs=epochs))
    make_deterministic(seed)
    model = build_model(mcfg)
    curve, clock = [], [0.0]

    prior = class_prior(splits["train"].labels, mcfg.n_classes) if mcfg.conditional else None

    def test_bpd(m) -> float:
        return heldout_nll(m, splits["test"].images, batch_size=64, device=cpu, labels=splits["test"].labels,
                           prior=prior)["test_bits_per_dim"]

    def on_epoch(record, validated) -> None:
        clock[0] += record.seconds  # training only: validation and the curve's test NLL are outside it
        images = record.step * params.train.batch_size
        # One pass over the test split: the NLL given the label, and with --curves the marginal from the same call.
        r = heldout_nll(validated, splits["test"].images, batch_size=64, device=cpu, labels=splits["test"].labels,
                        prior=prior if test_curve else None)
        curve.append({"epoch": record.epoch, "train_s": clock[0], "tflop": images * gflop / 1e3,
                      "val_bpd": record.val_bpd, "train_bpd": record.train_bpd,
                      "test_bpd_given_label": r.get("test_bits_per_dim_given_label", r["test_bits_per_dim"])}
                     | ({"test_bpd": r["test_bits_per_dim"]} if test_curve else {}))

    t0 = time.perf_counter()
    history = fit(model, splits["train"], splits["val"], params.train, device=cpu, on_epoch=on_epoch)
    wall = time.perf_counter() - t0
    images = history[-1].step * params.train.batch_size
    row = {"name": name, "overrides": overrides, "seed": seed, "machine": describe(),
           "threads": torch.get_num_threads(), "gflop_per_image": gflop, "images": images, "epochs": len(history),
           "n_train": n_train,
           "tflop": images * gflop / 1e3, "train_s": clock[0], "wall_s": wall,
           "parameters": sum(p.numel() for p in model.parameters()),
           "val_bpd": history[-1].val_bpd, "test_bpd": test_bpd(model), "curve": curve}
    if samples:
        row |= sample_scores(model, params, splits, n_classes=len(manifest["classes"]))
    return row


def sample_scores(model, params, splits: dict, *, n_classes: int) -> dict:
    from pixelnet.evaluation.quality import sample_quality
    from pixelnet.sampling import sample_fast, sample_labels, sampling_noise

    cfg = model.config
    sample_cfg = params.sample.replace(n=256, label=None, temperature=1.0, seed=0)
    labels, _ = sample_labels(sample_cfg, cfg)
    noise = sampling_noise(sample_cfg.n, cfg.image_channels, cfg.height, cfg.width, seed=0)
    t0 = time.perf_counter()
    images = sample_fast(model, noise, labels=labels)
    seconds = time.perf_counter() - t0
    quality = sample_quality(images, **splits, levels=cfg.levels, n_classes=n_classes, sample_labels=labels)
    keep = ("samples_confident_fraction", "samples_label_match", "samples_frechet_distance",
            "samples_classes_in_first_64", "real_confident_fraction", "real_frechet_distance")
    return {k: quality[k] for k in keep if k in quality} | {"sample_s": seconds}


def launch(job: tuple[str, str, bool, int], args) -> dict:
    """One (config, seed) in a fresh process with --threads threads; its row."""
    name, overrides, fixed, seed = job
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, __file__, "--one", json.dumps([name, overrides, fixed, seed]), "--work", str(args.work),
           "--params", str(args.params)] + (["--limit", str(args.limit)] if args.limit else []) + [
           "--levels", str(args.levels)] + (["--samples"] if args.samples else []) + (
               ["--tflop", str(args.tflop)] if args.tflop else []) + (["--curves"] if args.curves else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        return {"name": name, "overrides": overrides, "seed": seed, "error": done.stderr.strip().splitlines()[-3:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict], baseline: str = "baseline-2026-12") -> str:
    """One line per config: the seeds' mean (and spread) of each figure, and test bits/dim against the baseline's."""
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        if "error" in r:
            print(f"{r['name']} seed {r['seed']} failed: {' / '.join(r['error'])}", file=sys.stderr)
            continue
        by_name.setdefault(r["name"], []).append(r)

    def mean(rs, key):
        vals = [r[key] for r in rs if r.get(key) is not None]
        return statistics.fmean(vals) if vals else float("nan")

    def spread(rs, key) -> str:  # max - min over the seeds; "-" for one seed
        vals = [r[key] for r in rs if r.get(key) is not None]
        return f"{max(vals) - min(vals):.4f}" if len(vals) > 1 else "-"

    base = mean(by_name.get(baseline, []), "test_bpd")

    def vs_base(rs) -> str:  # "-" where the rows hold no baseline run
        return "-" if base != base else f"{mean(rs, 'test_bpd') - base:+.4f}"
    lines = ["| config | seeds | GFLOP/img | epochs | TFLOP | train s | img/s | val bpd | spread | test bpd | "
             "vs baseline | confident | label match | Fréchet | classes/64 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, rs in by_name.items():
        def pct(key):
            return f"{mean(rs, key):.1%}" if any(key in r for r in rs) else "-"

        def num(key, fmt):
            return format(mean(rs, key), fmt) if any(key in r for r in rs) else "-"

        img_s = sum(r["images"] for r in rs) / sum(r["train_s"] for r in rs)
        lines.append(
            f"| {name} | {','.join(str(r['seed']) for r in rs)} | {mean(rs, 'gflop_per_image'):.3f} | "
            f"{mean(rs, 'epochs'):.0f} | {mean(rs, 'tflop'):.1f} | {mean(rs, 'train_s'):.0f} | {img_s:.0f} | "
            f"{mean(rs, 'val_bpd'):.4f} | {spread(rs, 'val_bpd')} | {mean(rs, 'test_bpd'):.4f} | "
            f"{vs_base(rs)} | {pct('samples_confident_fraction')} | "
            f"{pct('samples_label_match')} | {num('samples_frechet_distance', '.1f')} | "
            f"{num('samples_classes_in_first_64', '.0f')} |")
    real = [r for r in rows if "real_confident_fraction" in r]
    if real:
        lines.append(f"| real digits (ceiling) | | | | | | | | | | | {real[-1]['real_confident_fraction']:.1%} | | "
                     f"{real[-1]['real_frechet_distance']:.1f} | 10 |")
    lines += [f"\nmachine: {m}" for m in sorted({r["machine"] for r in rows if "machine" in r})]
    return "\n".join(lines)


def curves(rows: list[dict]) -> str:
    """Bits/dim at each epoch end (validation; test given the label; test of the images alone where measured),
    against training seconds and TFLOP."""
    out = ["| config | seed | epoch | train s | TFLOP | val bpd | test bpd given label | test bpd |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        for c in r.get("curve", []):
            given = f"{c['test_bpd_given_label']:.4f}" if "test_bpd_given_label" in c else "-"
            test = f"{c['test_bpd']:.4f}" if "test_bpd" in c else "-"
            out.append(f"| {r['name']} | {r['seed']} | {c['epoch']} | {c['train_s']:.0f} | {c['tflop']:.2f} | "
                       f"{c['val_bpd']:.4f} | {given} | {test} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", action="append", default=[], help="NAME=overrides, or a preset name (repeatable)")
    ap.add_argument("--seeds", default="0", help="comma-separated train.seed values, each config run once per seed")
    ap.add_argument("--epochs", type=int, help="set train.epochs for every config that does not set it itself")
    ap.add_argument("--tflop", type=float, help="size each run's epochs to about this many training TFLOPs "
                    "(the epochs the overrides set win)")
    ap.add_argument("--levels", type=int, default=256)
    ap.add_argument("--samples", action="store_true", help="also draw 256 samples and score them")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process")
    ap.add_argument("--threads", type=int, default=0, help="threads a run (0: the cores / jobs)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pixelnet-speedrun")
    ap.add_argument("--out", type=Path, default=Path("speedrun.jsonl"), help="rows are appended here")
    ap.add_argument("--table", type=Path, help="print the tables of this file's rows and stop")
    ap.add_argument("--curves", action="store_true", help="print the per-epoch curves, and measure the test bits/dim "
                    "of the images alone at every epoch end too (outside the training clock)")
    ap.add_argument("--params", type=Path, default=PARAMS, help="the params file the overrides apply to")
    ap.add_argument("--limit", type=int, help="use only the first N images of each split (a smoke test)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.params = args.params.resolve()
    if args.table:
        rows = [json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]
        print(table(rows))
        if args.curves:
            print("\n" + curves(rows))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    data = prepare(args.work, args.levels, args.params)
    if args.one:
        name, overrides, fixed, seed = json.loads(args.one)
        print(json.dumps(run_one(name, overrides, seed, data=data, samples=args.samples, tflop=args.tflop,
                                 fixed_epochs=fixed, test_curve=args.curves, params_path=args.params,
                                 limit=args.limit)))
        return
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    configs = [parse_config(c, args.epochs) for c in args.config or ["baseline-2026-12", "default"]]
    jobs = [(n, o, f, int(s)) for s in args.seeds.split(",") for n, o, f in configs]
    print(f"{len(jobs)} runs, {args.jobs} at a time, {args.threads} threads each", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for row in pool.map(lambda j: launch(j, args), jobs):
            rows.append(row)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{row['name']} seed {row['seed']}: " + (f"test {row['test_bpd']:.4f} val {row['val_bpd']:.4f} "
                  f"{row['tflop']:.1f} TFLOP {row['train_s']:.0f} s" if "error" not in row else str(row["error"])),
                  file=sys.stderr)
    print(table(rows))
    if args.curves:
        print("\n" + curves(rows))


if __name__ == "__main__":
    main()
