"""Time to quality at 256 levels: PixelNet's configuration against the textbook PixelCNN, side by side in one run.

Both train on the same mnist-5k split at 256 levels, one after the other in
this process, with the same threads:

- the textbook (benchmarks/textbook.py): constant lr 1e-3, batches of 64, a
  256-way softmax, unconditional.  It runs until it has done 5 epochs and
  passed the largest budget; its weights are kept at every epoch end.
- PixelNet: each --config (params.yaml plus overrides), trained by the
  pipeline's own `fit`, once per budget with the epochs that fit the budget
  at the speed measured so far (a one-epoch probe first), so that each run
  ends its learning-rate schedule inside its budget.

Clocks count training only (the loops' own epoch times); evaluation happens
after training, on the weights kept at every epoch end.  It reports:

- the training time each takes to reach the textbook's 5-epoch test bits/dim:
  the earliest epoch end at or below it, over the contender's budget runs;
- at each budget, test bits/dim and the pipeline's sample scores (256 samples,
  fast sampler, temperature 1, the classes in turn) of each: the textbook's
  weights at its last epoch end inside the budget (what stopping its
  constant-lr loop then gives), and PixelNet's run sized for the budget;
- images/s of each, and every run's test bits/dim per epoch.

Test bits/dim of a conditional model is that of the images alone,
-log sum_y p(y) p(x | y) (evaluation/nll.py), so it compares with the textbook's.

    python benchmarks/time_to_quality.py --budgets 2,5 \
        --config "data.levels=256 model.head=softmax" --config "data.levels=256 model.head=logistic_mixture"
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from pixelnet.config import load_params
from pixelnet.data.processed import load_split, read_manifest
from pixelnet.evaluation.nll import heldout_nll
from pixelnet.evaluation.quality import sample_quality
from pixelnet.model.build import build_model
from pixelnet.model.likelihood import class_prior
from pixelnet.sampling import sample_fast, sampling_noise
from pixelnet.stages.download import download
from pixelnet.stages.preprocess import preprocess
from pixelnet.stages.sample import sample_labels
from pixelnet.stages.train import make_deterministic, model_config_for
from pixelnet.training.loop import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/textbook.py, when run as a script
import textbook

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
SAMPLES = 256


class _Enough(Exception):
    """Raised from the textbook's epoch callback once it has trained long enough."""


def prepare(params, work: Path) -> Path:
    raw, data = work / "raw", work / f"processed-{params.data.levels}-{params.data.size}"
    if not raw.exists():
        download(params.data, out_dir=raw, cache_dir=work / "external")
    if not (data / "manifest.json").exists():
        preprocess(params.data, raw_dir=raw, out_dir=data)
    return data


def run_textbook(train_images: torch.Tensor, *, until_seconds: float, epochs_at_least: int) -> dict:
    """Train the textbook until both limits pass; its weights and training seconds at every epoch end."""
    model = textbook.textbook_model(seed=0)
    kept: list[tuple[int, float, dict]] = []

    def on_epoch(epoch: int, seconds: float) -> None:
        kept.append((epoch + 1, seconds, copy.deepcopy(model.state_dict())))
        if epoch + 1 >= epochs_at_least and seconds >= until_seconds:
            raise _Enough

    try:
        textbook.train_textbook(model, train_images, epochs=10_000, on_epoch=on_epoch)
    except _Enough:
        pass
    seen = kept[-1][0] * len(train_images)
    return {"model": model, "epochs": kept, "img_per_s": seen / kept[-1][1]}


def run_pixelnet(params, data: Path, *, epochs: int) -> dict:
    """Train params' model with the pipeline's loop for `epochs`; its validated weights at every epoch end."""
    params = replace(params, train=replace(params.train, epochs=epochs, max_minutes=None))
    make_deterministic(params.train.seed)
    manifest = read_manifest(data)
    model = build_model(model_config_for(params, manifest, data))
    kept: list[tuple[int, float, dict]] = []
    clock = [0.0]

    def on_epoch(record, validated) -> None:
        clock[0] += record.seconds  # training only: validation is outside the epoch's seconds
        kept.append((len(kept) + 1, clock[0], copy.deepcopy(validated.state_dict())))

    history = fit(model, load_split(data, "train", manifest), load_split(data, "val", manifest), params.train,
                  device=CPU, on_epoch=on_epoch)
    seen = sum(r.images_per_s * r.seconds for r in history)
    return {"model": model, "epochs": kept, "img_per_s": seen / clock[0]}


def holding(model, state: dict):
    """A copy of `model` holding the kept weights `state`, in eval mode."""
    model = copy.deepcopy(model)
    model.load_state_dict(state)
    return model.eval()


def marginal_bpd(model, *, train, test) -> float:
    """Test bits/dim of the images alone (for a conditional model, summed over the train split's classes)."""
    cfg = model.config
    prior = class_prior(train.labels, cfg.n_classes) if cfg.conditional else None
    return heldout_nll(model, test.images, batch_size=64, device=CPU, labels=test.labels, prior=prior)["test_bits_per_dim"]


def scores_of(model, *, splits: dict, n_classes: int, sample_cfg, seed: int = 0) -> dict:
    """Test bits/dim and the sample scores of `model`; splits holds the train, val and test splits."""
    cfg = model.config
    labels, _ = sample_labels(sample_cfg, cfg)
    noise = sampling_noise(sample_cfg.n, cfg.image_channels, cfg.height, cfg.width, seed=seed)
    images = sample_fast(model, noise, labels=labels)
    quality = sample_quality(images, **splits, levels=cfg.levels, n_classes=n_classes, sample_labels=labels)
    return {"test_bpd": marginal_bpd(model, train=splits["train"], test=splits["test"])} | {
        k: v for k, v in quality.items() if k.startswith(("samples_", "real_")) and "_class_" not in k}


def last_within(kept: list, seconds: float):
    inside = [k for k in kept if k[1] <= seconds]
    return inside[-1] if inside else None


def row(name: str, budget: str, epoch: int, seconds: float, img_s: float, s: dict) -> dict:
    return {"model": name, "budget": budget, "epochs": epoch, "train_s": seconds, "img_per_s": img_s} | s


def print_tables(result: dict) -> None:
    t = result["target"]
    print(f"\nTextbook, {t['epochs']} epochs: test {t['bpd']:.4f} bits/dim after {t['seconds']:.0f} s of training.")
    for name, reach in result["reach"].items():
        got = (f"{reach['seconds']:.0f} s (epoch {reach['epoch']} of the {reach['run']} run), "
               f"{reach['seconds'] / t['seconds']:.2f} of the textbook's time") if reach else "not within any budget"
        print(f"  {name} reaches it in {got}")
    print("\n| model | budget | epochs | train s | img/s | test bits/dim | confident | label match | Fréchet | classes/64 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        match = f"{r['samples_label_match']:.1%}" if "samples_label_match" in r else "-"
        print(f"| {r['model']} | {r['budget']} | {r['epochs']} | {r['train_s']:.0f} | {r['img_per_s']:.0f} | "
              f"{r['test_bpd']:.4f} | {r['samples_confident_fraction']:.1%} | {match} | "
              f"{r['samples_frechet_distance']:.1f} | {r['samples_classes_in_first_64']} |")
    r = result["rows"][-1]
    print(f"| real images (ceiling) | | | | | | {r['real_confident_fraction']:.1%} | | "
          f"{r['real_frechet_distance']:.1f} | {r['real_classes_in_first_64']} |")
    print("\nPer epoch (training seconds: test bits/dim):")
    for name, curve in result["curves"].items():
        print(f"  {name}: " + ", ".join(f"{s:.0f}s {b:.3f}" for s, b in curve))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", action="append", default=[],
                    help="a PixelNet contender: space-separated section.key=value overrides of params.yaml (repeatable)")
    ap.add_argument("--budgets", default="2,5,8", help="comma-separated training budgets in minutes")
    ap.add_argument("--textbook-epochs", type=int, default=5, help="the textbook epochs whose test bits/dim is the target")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pixelnet-ttq")
    ap.add_argument("--out", type=Path, default=Path("time_to_quality.json"))
    args = ap.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    contenders = {c: load_params(REPO / "params.yaml", c.split()) for c in args.config or [""]}
    if any(p.data.levels != 256 for p in contenders.values()):
        raise SystemExit("every --config must set data.levels=256: the benchmark is the textbook's task, 256 levels")
    args.work.mkdir(parents=True, exist_ok=True)
    data = prepare(next(iter(contenders.values())), args.work)
    manifest = read_manifest(data)
    splits = {s: load_split(data, s, manifest) for s in ("train", "val", "test")}
    train, test = splits["train"], splits["test"]
    score = functools.partial(scores_of, splits=splits, n_classes=len(manifest["classes"]),
                              sample_cfg=replace(load_params(REPO / "params.yaml").sample, n=SAMPLES, label=None))
    print(f"{torch.get_num_threads()} threads; {len(train.images)} train and {len(test.images)} test images")

    t0 = time.perf_counter()
    tb = run_textbook(train.images, until_seconds=60 * max(budgets), epochs_at_least=args.textbook_epochs)
    print(f"textbook: {len(tb['epochs'])} epochs, {tb['img_per_s']:.0f} images/s ({time.perf_counter() - t0:.0f} s)")
    runs: dict[str, dict[float, dict]] = {}
    for name, params in contenders.items():
        runs[name] = {}
        epoch_s = None
        for b in sorted(budgets):
            # An epoch's time comes from the first, shortest run (a one-epoch probe when there is none yet).
            if epoch_s is None:
                probe = run_pixelnet(params, data, epochs=1)
                epoch_s = probe["epochs"][-1][1]
            epochs = max(1, math.floor(60 * b / epoch_s * 0.97))  # 3% margin for the machine's noise
            runs[name][b] = probe if epochs == 1 else run_pixelnet(params, data, epochs=epochs)
            epoch_s = runs[name][b]["epochs"][-1][1] / len(runs[name][b]["epochs"])
        print(f"{name or 'params.yaml'}: {runs[name][max(budgets)]['img_per_s']:.0f} images/s "
              f"({time.perf_counter() - t0:.0f} s)")

    curves = {"textbook": [(s, textbook.bits_per_dim_textbook(holding(tb["model"], st), test.images))
                           for _, s, st in tb["epochs"]]}
    last = args.textbook_epochs - 1
    target = {"epochs": args.textbook_epochs, "bpd": curves["textbook"][last][1], "seconds": tb["epochs"][last][1]}
    reach = {}
    for name, by_budget in runs.items():
        hits = []
        for b, run in by_budget.items():
            curve = [(s, marginal_bpd(holding(run["model"], st), train=train, test=test)) for _, s, st in run["epochs"]]
            curves[f"{name or 'params.yaml'} ({b:g} min run)"] = curve
            hit = next(((k + 1, s) for k, (s, bpd) in enumerate(curve) if bpd <= target["bpd"]), None)
            if hit:
                hits.append({"epoch": hit[0], "seconds": hit[1], "run": f"{b:g} min"})
        reach[name or "params.yaml"] = min(hits, key=lambda h: h["seconds"]) if hits else None

    rows = []
    for b in budgets:
        k = last_within(tb["epochs"], 60 * b)
        if k is not None:
            rows.append(row("textbook", f"{b:g} min", k[0], k[1], tb["img_per_s"], score(holding(tb["model"], k[2]))))
        for name, by_budget in runs.items():
            run = by_budget[b]
            k = run["epochs"][-1]
            rows.append(row(f"pixelnet {name}".strip(), f"{b:g} min", k[0], k[1], run["img_per_s"],
                            score(holding(run["model"], k[2]))))
    result = {"configs": args.config, "threads": torch.get_num_threads(), "target": target, "reach": reach,
              "rows": rows, "curves": curves, "textbook_img_per_s": tb["img_per_s"]}
    args.out.write_text(json.dumps(result, indent=1))
    print_tables(result)


if __name__ == "__main__":
    main()
