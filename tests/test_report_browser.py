"""report.html in a real browser: Debian's chromium (installed by `make test`) opens the file offline, every matplotlib
chart renders at a real size with its lines, the console stays free of errors, nothing reaches the network, model answers
cannot inject markup, and a screenshot (in tmp_path) shows the plots."""

from __future__ import annotations

import io
import math
import os

import pytest

from test_report_plots import write_run  # the hand-written run folder

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing; `make test` installs it with apt-get install chromium")
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright


def test_report_opens_offline_and_its_plots_render(tmp_path):
    from PIL import Image

    from alignkit.evaluate.report import write_report

    run = tmp_path / "run"
    write_run(run)
    page_path = write_report(run)
    requests, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("request", lambda request: requests.append(request.url))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(page_path.resolve().as_uri())
        page.wait_for_load_state("load")
        charts = page.locator("svg.chart")
        # GRPO: reward, held-out, KL, length, loss, hacking; DPO: reward (margin), loss, accuracy; the win-rate chart
        assert charts.count() == 10
        for i in range(charts.count()):
            box = charts.nth(i).bounding_box()
            assert box and box["width"] > 200 and box["height"] > 100
        lines = page.locator("svg.chart .series")
        assert lines.count() >= 12
        for i in range(lines.count()):  # every drawn line has extent on screen
            box = lines.nth(i).bounding_box()
            assert box and box["width"] > 1, i
        assert page.locator(".alarm-mark").count() == 2  # the alarm at step 20 on the held-out and KL plots
        assert page.locator("text=over-optimization: held-out gold fell").count() == 1
        assert page.title() != "pwned" and page.locator("table.answers img").count() == 0  # answers are text, not markup
        shot = page.screenshot(path=tmp_path / "report.png", full_page=True)
        browser.close()
    assert not errors, errors
    assert all(url.startswith("file://") for url in requests), requests  # self-contained: no CDN, no fonts, no scripts
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    width, height = image.size
    pixels = image.load()
    blue = sum(1 for x in range(0, width, 2) for y in range(0, height, 2)
               if math.dist(pixels[x, y], (0x1F, 0x77, 0xB4)) < 40)  # the first series colour
    assert blue > 200  # the lines and dots were painted, not just laid out
