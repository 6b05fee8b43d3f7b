"""The README's two pictures, remade from the baseline run: samples beside real digits, and the serve page.

After `dvc repro` (the pipeline on params.yaml), from the repository root:

    python benchmarks/readme_figures.py

- docs/images/samples_vs_real.png: evaluate's reports/evaluate/samples_vs_real.png, scaled to --width pixels;
- docs/images/serve.png: `pixelnet serve --model models/model.pt` in Debian's headless Chromium after
  Generate drew 16 images (seed 0), scaled likewise, through devtools/browser.py.  It needs chromium and
  chromium-driver (.ci/run installs them); without them only the first picture is made, and the script says why.

Both are PNGs of a few tens of kB, so git keeps them; rerun this when the defaults change.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools/, shared with the tests
from devtools import browser  # noqa: E402


def scaled(src: Path, dst: Path, width: int) -> None:
    img = Image.open(src).convert("RGB")
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.quantize(colors=128).save(dst, optimize=True)
    print(f"{dst}: {img.width}x{img.height}, {dst.stat().st_size / 1024:.0f} kB")


def page_screenshot(model_path: Path, metrics: Path, data: Path, dst: Path, width: int) -> None:
    why = browser.missing()
    if why:
        print(f"no {dst}: {why}")
        return
    from pixelnet.serve.main import page_app

    app = page_app(str(model_path), data=data, metrics=metrics)
    with browser.serving(app) as url, browser.chromium() as driver:
        driver.set_window_size(1100, 760)
        browser.generate(driver, url, n=16, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            shot = Path(tmp) / "page.png"
            driver.save_screenshot(str(shot))
            scaled(shot, dst, width)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=640, help="the pictures' width in pixels")
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    args = ap.parse_args()
    figure = Path("reports/evaluate/samples_vs_real.png")
    if not figure.is_file():
        raise SystemExit(f"error: {figure} is missing: run `dvc repro` first, and this from the repository root")
    scaled(figure, args.out / "samples_vs_real.png", args.width)
    # Relative paths: the page names the model as `pixelnet serve --model models/model.pt` does.
    page_screenshot(Path("models/model.pt"), Path("reports/evaluate/metrics.json"), Path("data/processed"),
                    args.out / "serve.png", args.width)


if __name__ == "__main__":
    main()
