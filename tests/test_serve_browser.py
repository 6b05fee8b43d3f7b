"""The page in a real browser: Debian's headless Chromium loads it, clicks Generate, and every image is drawn."""

from __future__ import annotations

import pytest

from devtools import browser
from pixelnet.serve.app import create_app
from tests.conftest import random_model

pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))


def test_the_page_draws_every_row_of_every_image():
    model = random_model(conditional=True, n_classes=3, levels=4, height=6, width=6, blocks=1, sharpen=4.0)
    app = create_app(model, model.config, facts={"source": "test.pt"})
    with browser.serving(app) as url, browser.chromium() as driver:
        result = browser.generate(driver, url, n=5, seed=2)
        assert result["images"] == 5 and result["rows"] == [6] * 5, result
        assert result["first_row_ms"] is not None and result["first_row_ms"] <= result["done_ms"]
        assert result["status"].startswith("done") and sum(result["lit"]) > 0  # drawn, not blank
        facts = driver.find_element("id", "facts").text
        assert "4 levels" in facts and "class-conditional" in facts
