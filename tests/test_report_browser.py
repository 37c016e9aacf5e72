"""report.html in a real browser: Debian's chromium (installed by `make test`) opens the file offline, every plot
renders with its lines, nothing reaches the network, model answers cannot inject markup, and a screenshot shows the plots."""

from __future__ import annotations

import io
import json
import math
import os

import pytest

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing; `make test` installs it with apt-get install chromium")
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

INJECTED = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"


def _write_run(run):
    """A pipeline folder by hand: GRPO metrics with a monitor alarm, DPO metrics, eval results with samples."""
    from alignkit.evaluate.winrate import mean_ci, win_rate

    grpo, dpo = run / "grpo", run / "dpo"
    grpo.mkdir(parents=True)
    dpo.mkdir()
    lines = []
    for step in range(1, 21):
        row = {"step": step, "reward": 0.1 * step, "kl/ref": 0.05 * step ** 1.5, "response/length": 20 + step,
               "loss": 1 / step, "hacking/length_corr": 0.04 * step, "hacking/repetition": 0.01 * step}
        if step % 5 == 0:
            row.update({"monitor/proxy": 0.1 * step, "monitor/gold": 0.5 - 0.01 * (step - 10) ** 2, "monitor/kl": 0.06 * step})
        lines.append(json.dumps(row))
    (grpo / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (grpo / "monitor.json").write_text(json.dumps({"checks": 4, "alarms": [{"step": 20, "alarm": "over-optimization: held-out gold fell"}],
                                                   "stopped": False, "best_step": 10, "best_dir": str(grpo / "best"), "hacking_warnings": 1}))
    (dpo / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.7 - 0.01 * s, "rewards/margin": 0.05 * s,
                                                            "rewards/accuracy": min(1, 0.5 + 0.02 * s)}) + "\n" for s in range(1, 31)))
    text = {"length_tokens": 21.0, "length_words": 15.0, "distinct_1": 0.4, "distinct_2": 0.7, "refusal_rate": 0.1, "repetition_rate": 0.02}
    models = {"sft": {"kl": 0.0, "gold": mean_ci([0.5, 0.6, 0.4]), **text},
              "grpo": {"kl": 3.2, "gold": mean_ci([0.7, 0.6, 0.5]), **text,
                       "win_rate": {"gold": win_rate([1, 1, 0.5, 0, 1, 1] * 5).as_dict()}},
              "dpo": {"kl": 1.1, "gold": mean_ci([0.6, 0.6, 0.5]), **text, "win_rate": {"gold": win_rate([1, 0, 0.5, 0] * 5).as_dict()}}}
    samples = [{"prompt": "What is 2 + 2?", "category": "arithmetic", "answers": {"sft": "4", "grpo": "2 + 2 = 4.", "dpo": INJECTED},
                "scores": {"sft": {"gold": 1.0}, "grpo": {"gold": 1.0}, "dpo": {"gold": -1.0}}}]
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(json.dumps({"reference": "sft", "prompts": 30, "models": models, "samples": samples}))


def test_report_opens_offline_and_its_plots_render(tmp_path):
    from PIL import Image

    from alignkit.evaluate.report import write_report

    run = tmp_path / "run"
    _write_run(run)
    page_path = write_report(run)
    requests = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("request", lambda request: requests.append(request.url))
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
        shot = page.screenshot(full_page=True)
        browser.close()
    assert all(url.startswith("file://") for url in requests), requests  # self-contained: no CDN, no fonts, no scripts
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    width, height = image.size
    pixels = image.load()
    blue = sum(1 for x in range(0, width, 2) for y in range(0, height, 2)
               if math.dist(pixels[x, y], (0x1F, 0x77, 0xB4)) < 40)  # the first series colour
    assert blue > 200  # the lines and dots were painted, not just laid out
