"""Driving `pixelnet serve`'s page in Debian's headless Chromium, for the serve tests and the benchmarks.

`serving(app)` runs the app with uvicorn on a free loopback port in a thread;
`chromium()` starts the system Chromium through its ChromeDriver (Selenium),
with the flags this closed-network machine needs; `generate(driver, url, n)`
clicks Generate on the page and returns what the page itself measured
(window.pixelnet: ms from the click to the first row on screen, and to done).
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000"]


def missing() -> str | None:
    """Why the browser cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"{path} is not installed (apt-get install chromium chromium-driver; .ci/run does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the dev extra in requirements.lock)"
    return None


@contextmanager
def serving(app) -> Iterator[str]:
    """The app on http://127.0.0.1:PORT in a background thread; stopped on exit."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start within 30 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def chromium() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    profile = tempfile.mkdtemp(prefix="pixelnet-chromium-")
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    opts.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def generate(driver, url: str, *, n: int = 16, seed: int = 0, timeout: float = 60) -> dict:
    """Open the page, set n and seed, click Generate, wait for done; the page's own timings (ms) and rows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    for field, value in (("n", n), ("seed", seed)):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(str(value))
    driver.find_element(By.ID, "generate").click()
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return window.pixelnet && window.pixelnet.done"))
    return driver.execute_script("""
        const cvs = [...document.querySelectorAll('#samples canvas')];
        const lit = cvs.map(cv => { const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
                                   let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; return s; });
        return {first_row_ms: window.pixelnet.firstRow, done_ms: window.pixelnet.done, images: cvs.length,
                rows: cvs.map(cv => +cv.dataset.rows), lit: lit, status: document.getElementById('status').textContent};
    """)
