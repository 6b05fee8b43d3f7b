"""Inference speed of one model, side by side in one run: naive vs fast sampling, the forward pass, the page.

For each batch size n it prints seconds for the naive sampler (one full forward pass per sub-pixel), seconds
for the fast sampler, their ratio, the time of one full forward pass over the batch (the floor a cached
sampler approaches, and what evaluate's test NLL runs a batch at a time: its images/s against n is why
evaluate.batch_size is 64) and fast / forward.  Each sampler runs only up to its --*-max-n; larger sizes print
"skipped", never an estimate.  When both ran, the images are compared (they must be identical).  --page N
also serves the model as `pixelnet serve` does and times its page in headless Chromium (devtools/browser.py),
from the click on Generate to the first row on screen and to the last image done, N images a round.

The model: the textbook's size (devtools/textbook.py: 64 channels, 7 blocks, 7x7 then 3x3 kernels, 28x28,
256 levels, unconditional), random weights; or --config, params.yaml's model with `section.key=value`
overrides for data.size x data.size images at data.levels (256 unless set), 10 classes, random weights
(--image-channels 3: RGB); or a trained --checkpoint.

    python benchmarks/bench_sampling.py --sizes 1,16,64,256 --naive-max-n 64 --textbook-n 16
    python benchmarks/bench_sampling.py --config "" --sizes 1,64                     # params.yaml's model
    python benchmarks/bench_sampling.py --config "" --sizes 16,32,64,128,256 --naive-max-n 0 --fast-max-n 0
    python benchmarks/bench_sampling.py --checkpoint models/model.pt --sizes 16 --page 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # devtools/, shared with the tests
from devtools import browser  # noqa: E402
from devtools.machine import describe  # noqa: E402
from devtools.textbook import sample_textbook, textbook_config, textbook_model  # noqa: E402

from pixelnet.checkpoint import load_model  # noqa: E402
from pixelnet.config import load_params  # noqa: E402
from pixelnet.model import ModelConfig  # noqa: E402
from pixelnet.model.build import build_model  # noqa: E402
from pixelnet.sampling import sample_fast, sample_naive, sampling_noise  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of `repeats` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def random_textbook_size_model(seed: int, head: str) -> tuple[torch.nn.Module, ModelConfig]:
    """The textbook's model size, random weights, with `head`."""
    torch.manual_seed(seed)
    cfg = textbook_config().replace(head=head)
    return build_model(cfg).eval(), cfg


def random_params_model(overrides: str, seed: int, image_channels: int) -> tuple[torch.nn.Module, ModelConfig]:
    """params.yaml's model with `overrides` (space-separated section.key=value), random weights."""
    words = overrides.split()
    if not any(w.startswith("data.levels=") for w in words):
        words.append("data.levels=256")
    params = load_params(REPO / "params.yaml", words)
    torch.manual_seed(seed)
    size = params.data.size
    cfg = ModelConfig.for_data(params.model, levels=params.data.levels, image_channels=image_channels, height=size,
                               width=size, n_classes=10)
    return build_model(cfg).eval(), cfg


def page_rounds(model: torch.nn.Module, cfg: ModelConfig, source: str, n: int, rounds: int) -> None:
    """Print the page's own timings (performance.now() at the click, first row painted, last event) a round."""
    from pixelnet.serve.app import create_app

    why = browser.missing()
    if why:
        raise SystemExit(f"--page: cannot run the browser: {why}")
    times = []
    with browser.serving(create_app(model, cfg, facts={"source": source})) as url, browser.chromium() as driver:
        for r in range(rounds + 1):
            result = browser.generate(driver, url, n=n, seed=r)
            if result["rows"] != [cfg.height] * n:
                raise SystemExit(f"the page drew {result['rows']} rows, not {cfg.height} for each of {n} images")
            times.append((result["first_row_ms"] / 1000, result["done_ms"] / 1000))
    print(f"\nthe page (`pixelnet serve` in headless Chromium), {n} images a round:\n")
    print("| round | click -> first row on screen, s | click -> all images done, s |\n|---:|---:|---:|")
    for r, (first, done) in enumerate(times):
        print(f"| {r}{' (warm-up)' if r == 0 else ''} | {first:.3f} | {done:.3f} |")
    print(f"| median of rounds 1-{rounds} | {statistics.median(f for f, _ in times[1:]):.3f} | "
          f"{statistics.median(d for _, d in times[1:]):.3f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,16,64,256", help="comma-separated batch sizes")
    ap.add_argument("--naive-max-n", type=int, default=64, help="run naive only for n up to this")
    ap.add_argument("--fast-max-n", type=int, default=10**9, help="run fast only for n up to this")
    ap.add_argument("--checkpoint", type=Path, help="a PixelNet checkpoint (default: random weights)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs for fast and forward; page rounds")
    ap.add_argument("--textbook-n", type=int, default=0, help="also time the textbook's naive sampler at this n")
    ap.add_argument("--head", default="softmax", choices=["softmax", "logistic_mixture"],
                    help="the textbook-size model's output distribution")
    ap.add_argument("--config", help="params.yaml's model with these overrides, e.g. \"model.channels=64\"")
    ap.add_argument("--image-channels", type=int, default=1, choices=[1, 3], help="with --config: gray or RGB")
    ap.add_argument("--page", type=int, default=0, metavar="N", help="also time the page drawing N images (<= 64)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.checkpoint:
        model, cfg = load_model(a.checkpoint)
        source = str(a.checkpoint)
    elif a.config is not None:
        model, cfg = random_params_model(a.config, a.seed, a.image_channels)
        source = f"random weights, params.yaml with {a.config!r}"
    else:
        model, cfg = random_textbook_size_model(a.seed, a.head)
        source = "random weights"
    c, h, w = cfg.image_channels, cfg.height, cfg.width
    shape = (f"{cfg.resnet_layers} gated ResNet layers a block, {cfg.resolutions} resolutions"
             if cfg.arch == "pixelcnnpp" else f"{cfg.blocks} blocks, kernels {cfg.first_kernel}/{cfg.kernel}")
    print(f"# sampling benchmark, {time.strftime('%Y-%m-%d %H:%M')}; {describe()}")
    print(f"model: {cfg.arch}, {cfg.channels} channels, {shape}, norm {cfg.norm}, head {cfg.head}, {c}x{h}x{w}, "
          f"{cfg.levels} levels, conditional {cfg.conditional}, {sum(p.numel() for p in model.parameters()):,} "
          f"parameters ({source})\n")
    print("| n | naive s | fast s | naive / fast | forward s | forward images/s | fast / forward | identical |")
    print("|---:|---:|---:|---:|---:|---:|---:|:---|")
    naive_by_n = {}
    for n in [int(s) for s in a.sizes.split(",")]:
        noise = sampling_noise(n, c, h, w, seed=a.seed)
        x = torch.randint(0, cfg.levels, (n, c, h, w), generator=torch.Generator().manual_seed(a.seed))
        labels = torch.arange(n) % cfg.n_classes if cfg.conditional else None  # the classes in turn
        with torch.no_grad():
            forward_pass = (lambda: model(x)) if labels is None else (lambda: model(x, labels))
            forward_pass()  # warm-up
            forward, _ = timed(forward_pass, a.repeats)
        fast, fast_images = timed(lambda: sample_fast(model, noise, labels=labels), a.repeats) if (
            n <= a.fast_max_n) else (None, None)
        naive, naive_images = None, None
        if n <= a.naive_max_n:
            print(f"(running naive n={n} ...)", file=sys.stderr, flush=True)
            naive, naive_images = timed(lambda: sample_naive(model, noise, labels=labels), 1)
            naive_by_n[n] = naive
        same = "-" if naive is None or fast is None else "yes" if torch.equal(naive_images, fast_images) else "NO"
        print(f"| {n} | {'skipped' if naive is None else f'{naive:.2f}'} | "
              f"{'skipped' if fast is None else f'{fast:.3f}'} | {'-' if same == '-' else f'{naive / fast:.0f}x'} | "
              f"{forward:.3f} | {n / forward:.0f} | {'-' if fast is None else f'{fast / forward:.1f}'} | {same} |",
              flush=True)
    if a.textbook_n:
        model_tb = textbook_model(seed=a.seed)
        t0 = time.perf_counter()
        sample_textbook(model_tb, a.textbook_n, seed=a.seed)
        seconds = time.perf_counter() - t0
        ours = f"{naive_by_n[a.textbook_n]:.2f} s" if a.textbook_n in naive_by_n else "not run"
        print(f"\ntextbook naive sampler (devtools/textbook.py), n={a.textbook_n}, random weights: {seconds:.2f} s "
              f"(PixelNet naive at the same n above: {ours})")
    if a.page:
        page_rounds(model, cfg, source, a.page, a.repeats)


if __name__ == "__main__":
    main()
