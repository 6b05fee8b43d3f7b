"""What the tests and the benchmarks share, so that neither imports the other (tests/test_layering.py).

    textbook.py  the textbook PixelCNN as a configuration of PixelNet's code, and the shared reference it stands for
    browser.py   `pixelnet serve`'s page served on loopback and driven in Debian's headless Chromium

Not part of the installed package: pytest puts the repository root on sys.path (pyproject.toml), and each
benchmark script puts it there itself.
"""
