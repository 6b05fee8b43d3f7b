"""`pixelnet serve`'s latency with the browser in the loop: click Generate -> first row on screen -> all done.

Serves a checkpoint (default: the pipeline's models/model.pt) on loopback, opens the page in Debian's
headless Chromium, clicks Generate for n images, and reads the page's own timings (performance.now()
at the click, at the first row painted and at the last event).  The first round warms up the process;
the table shows every round and the median of the rest.

    python benchmarks/bench_serve.py                          # n = 16, 5 rounds
    python benchmarks/bench_serve.py --model models:/pixelnet@champion --n 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests/browser.py
from tests import browser  # noqa: E402  (the driver the browser tests use)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/model.pt")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    why = browser.missing()
    if why:
        raise SystemExit(f"cannot run the browser: {why}")
    import torch

    from pixelnet.checkpoint import load_model
    from pixelnet.command import model_file
    from pixelnet.serve.app import create_app

    with model_file(args.model) as path:
        model, config = load_model(path)
    app = create_app(model, config, facts={"source": args.model})
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), model {args.model}: {config.arch}, {config.channels} channels, "
          f"{config.blocks} blocks, {config.image_channels}x{config.height}x{config.width}, {config.levels} levels; "
          f"n = {args.n}; load average {os.getloadavg()[0]:.1f}")
    rows = []
    with browser.serving(app) as url, browser.chromium() as driver:
        for r in range(args.rounds):
            result = browser.generate(driver, url, n=args.n, seed=r)
            assert result["rows"] == [config.height] * args.n, result
            rows.append((result["first_row_ms"], result["done_ms"]))
    print("\n| round | click -> first row on screen | click -> all images done |")
    print("|---:|---:|---:|")
    for r, (first, done) in enumerate(rows):
        print(f"| {r + 1}{' (warm-up)' if r == 0 else ''} | {first / 1000:.3f} s | {done / 1000:.3f} s |")
    rest = rows[1:] or rows
    print(f"| median of rounds 2-{len(rows)} | {statistics.median(f for f, _ in rest) / 1000:.3f} s | "
          f"{statistics.median(d for _, d in rest) / 1000:.3f} s |")


if __name__ == "__main__":
    main()
