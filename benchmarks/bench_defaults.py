"""Time to quality: train candidate configs on mnist-5k and score them, to choose params.yaml's defaults.

Each config is params.yaml plus `section.key=value` overrides.  For each one
this runs the pipeline's own stage functions (preprocess, train, sample,
evaluate's scores) in a scratch directory and appends one JSON line to
--out; at the end it prints the table of every line in --out, so several
invocations (e.g. in parallel, one config each) build one table.

    python benchmarks/bench_defaults.py --config "data.levels=2 train.epochs=10" --config "data.levels=4"
    python benchmarks/bench_defaults.py --table-only --out reports/defaults.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pixelnet.checkpoint import load_model
from pixelnet.config import load_params
from pixelnet.data.processed import load_split, read_manifest
from pixelnet.evaluation.nll import heldout_nll
from pixelnet.evaluation.quality import sample_quality
from pixelnet.model.likelihood import class_prior
from pixelnet.stages.download import download
from pixelnet.stages.preprocess import preprocess
from pixelnet.stages.sample import sample
from pixelnet.stages.train import train

REPO = Path(__file__).resolve().parents[1]


def measure(overrides: list[str], *, params_path: Path, work: Path, temperatures: list[float]) -> list[dict]:
    """Train once with `overrides`; sample and score once per temperature (params.yaml's if none given)."""
    params = load_params(params_path, overrides)
    raw, data = work / "raw", work / f"processed-{params.data.levels}-{params.data.size}"
    if not raw.exists():
        download(params.data, out_dir=raw, cache_dir=work / "external")
    if not (data / "manifest.json").exists():
        preprocess(params.data, raw_dir=raw, out_dir=data)
    run = Path(tempfile.mkdtemp(dir=work))
    t0 = time.perf_counter()
    trained = train(params, data_dir=data, model_path=run / "model.pt", reports_dir=run / "train")
    train_s = time.perf_counter() - t0
    model, mcfg = load_model(run / "model.pt")
    manifest = read_manifest(data)
    test = load_split(data, "test", manifest)
    prior = class_prior(load_split(data, "train", manifest).labels, mcfg.n_classes) if mcfg.conditional else None
    nll = heldout_nll(model, test.images, batch_size=64, device=torch.device("cpu"), labels=test.labels, prior=prior)
    rows = []
    for t in temperatures or [params.sample.temperature]:
        out = run / f"sample-t{t}"
        info = sample(replace(params.sample, temperature=t), model_path=run / "model.pt", out_dir=out)
        samples = torch.from_numpy(np.load(out / "samples.npy"))
        labels = torch.from_numpy(np.load(out / "labels.npy"))
        scores = sample_quality(samples, train=load_split(data, "train", manifest), val=load_split(data, "val", manifest),
                                test=test, levels=mcfg.levels, n_classes=len(manifest["classes"]),
                                sample_labels=labels if mcfg.conditional else None)
        rows.append({"config": " ".join(overrides + [f"sample.temperature={t}"]), "train_minutes": train_s / 60,
                     "epochs": trained["epochs"], "budget_bound": trained["budget_bound"],
                     "images_per_s": trained["images_per_s"], "val_bpd": trained["val_bits_per_dim"],
                     "test_bpd": nll["test_bits_per_dim"], "levels": mcfg.levels,
                     "sample_seconds": info["sample_seconds"], "run_dir": str(run)} | scores)
    return rows


def print_table(lines: list[dict]) -> None:
    print(f"| {'config':58} | train min | epochs | img/s | test bits/dim | confident | label match | entropy | "
          f"Fréchet | classes/64 |")
    print(f"|{'-' * 60}|----------:|-------:|------:|--------------:|----------:|------------:|--------:|--------:|"
          f"-----------:|")
    for r in lines:
        match = f"{r['samples_label_match']:.1%}" if "samples_label_match" in r else "-"
        print(f"| {r['config']:58} | {r['train_minutes']:9.1f} | {r['epochs']:6d} | {r['images_per_s']:5.0f} | "
              f"{r['test_bpd']:13.3f} | {r['samples_confident_fraction']:9.1%} | {match:>11} | "
              f"{r['samples_class_entropy_bits']:7.2f} | {r['samples_frechet_distance']:7.1f} | "
              f"{r['samples_classes_in_first_64']:10d} |")
    for levels in sorted({r["levels"] for r in lines}):
        r = [r for r in lines if r["levels"] == levels][-1]
        print(f"| {'real images (ceiling), levels ' + str(levels):58} | {'':9} | {'':6} | {'':5} | {'':13} | "
              f"{r['real_confident_fraction']:9.1%} | {'':11} | {r['real_class_entropy_bits']:7.2f} | "
              f"{r['real_frechet_distance']:7.1f} | {r['real_classes_in_first_64']:10d} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", action="append", default=[], help="space-separated section.key=value overrides")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pixelnet-defaults")
    ap.add_argument("--out", type=Path, default=Path("defaults.jsonl"))
    ap.add_argument("--temperatures", default="", help="comma-separated sample temperatures to score each trained model at")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for config in [] if args.table_only else args.config:
        temperatures = [float(t) for t in args.temperatures.split(",") if t]
        rows = measure(config.split(), params_path=args.params, work=args.work, temperatures=temperatures)
        with args.out.open("a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    print_table([json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else [])


if __name__ == "__main__":
    main()
