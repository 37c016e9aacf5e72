"""report.html's charts (matplotlib, inline SVG), read back as XML: every chart has a title and both axis labels,
tick labels that do not repeat, integer steps, no float noise on a flat or tiny series, a legend when it draws
several lines; the page keeps every chart, alarm mark and section, and stays small."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from alignkit.evaluate.plots import flat_limits, interval_chart, line_chart
from alignkit.evaluate.report import build_report, write_report

INJECTED = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
NS = {"svg": "http://www.w3.org/2000/svg"}


def write_run(run):
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
    # DPO: a loss stuck at log 2 (the old chart printed "0.693" on all five ticks), a margin of float noise around 0
    (dpo / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.6931471805599453, "rewards/margin": 1.11e-05 * (-1) ** s * (s % 3),
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


# ---------------------------------------------------------------- reading a chart back

def _text(el) -> str:
    return "".join(el.itertext()).strip()


def chart(svg: str) -> dict:
    """The parts of one chart a reader sees: title, axis labels, tick labels per axis, legend entries, line count."""
    root = ET.fromstring(svg)
    assert root.get("class") == "chart"
    one = lambda cls: [_text(el) for el in root.iter() if el.get("class") == cls]  # noqa: E731
    legend = [el for el in root.iter() if el.get("class") == "legend"]
    return {"title": one("title"), "x_label": one("x-label"), "y_label": one("y-label"), "x_ticks": one("xtick"),
            "y_ticks": one("ytick"), "offset": "".join(one("y-offset")), "series": len(one("series")),
            "alarms": len(one("alarm-mark")), "legend": [_text(t) for el in legend for t in el.iter("{%s}text" % NS["svg"])]}


def charts_of(page: str) -> list[dict]:
    return [chart(svg) for svg in re.findall(r"<svg\b.*?</svg>", page, flags=re.S)]


def as_number(label: str) -> float:
    return float(label.replace("\N{MINUS SIGN}", "-").replace("%", "").replace(",", ""))


def assert_readable(c: dict, step_axis: bool = True) -> None:
    assert len(c["title"]) == 1 and c["title"][0], c
    assert len(c["x_label"]) == 1 and c["x_label"][0], c
    assert len(c["y_label"]) == 1 and c["y_label"][0], c
    for axis in ("x_ticks", "y_ticks"):
        ticks = c[axis]
        assert len(ticks) >= 2 and all(ticks), c
        assert len(set(ticks)) == len(ticks), f"repeated tick labels on {axis}: {ticks}"
        assert not any(re.search(r"\de", t) for t in ticks), f"raw scientific notation on {axis}: {ticks}"
    if step_axis:  # a line chart over steps: integer steps, and a legend when the lines need telling apart
        assert all(as_number(t) == int(as_number(t)) for t in c["x_ticks"]), c["x_ticks"]
        if c["series"] + (c["alarms"] > 0) > 1:
            assert c["legend"], f"{c['title']}: {c['series']} lines and no legend"


# ---------------------------------------------------------------- single charts

def test_flat_series_gets_a_small_symmetric_range_and_distinct_ticks():
    assert flat_limits([0.693] * 5) == pytest.approx((0.693 * 0.95, 0.693 * 1.05))
    assert flat_limits([0.0, 0.0]) == (-0.05, 0.05)
    assert flat_limits([0.693, 0.693 + 1e-12]) is not None  # float noise is flat too
    assert flat_limits([0.69, 0.70]) is None
    c = chart(line_chart("Loss", {"loss": [(s, 0.6931471805599453) for s in range(1, 9)]}, ylabel="loss"))
    assert_readable(c)
    assert c["title"] == ["Loss"] and c["x_label"] == ["optimizer step"] and c["y_label"] == ["loss"]
    values = [as_number(t) for t in c["y_ticks"]]
    assert min(values) < 0.6931 < max(values)  # the value sits inside the band, not on its edge
    assert not c["legend"]  # one line: its name is the y label


def test_tiny_values_print_short_ticks_with_the_scale_once():
    values = [1.11e-05, -1.11e-05, 2.2e-05, -1.11e-05, 0.0, 1.11e-05]
    svg = line_chart("KL", {"kl/ref": [(s, v) for s, v in enumerate(values, 1)]}, ylabel="kl/ref (nats per answer)")
    c = chart(svg)
    assert_readable(c)
    assert "1.11e-05" not in svg and "1.11e" not in svg.replace("\N{MINUS SIGN}", "-")
    assert all(len(t) <= 5 for t in c["y_ticks"]), c["y_ticks"]  # "−1.0", "0.5": the 1e-5 goes above the axis once
    assert c["offset"].replace("\N{MINUS SIGN}", "-") == "1e-5"


def test_step_axis_ticks_are_integers_even_for_few_steps():
    for steps in ([1, 2], [3], range(0, 8), range(1000, 1004), range(0, 200_001, 10_000)):
        c = chart(line_chart("Reward", {"reward": [(s, 0.1 * i) for i, s in enumerate(steps)]}, ylabel="reward"))
        assert c["x_label"] == ["optimizer step"] and c["x_ticks"], list(steps)
        assert all(as_number(t) == int(as_number(t)) for t in c["x_ticks"]), (list(steps), c["x_ticks"])
        assert len(set(c["x_ticks"])) == len(c["x_ticks"])


def test_several_series_and_alarms_get_a_legend():
    series = {"monitor/proxy": [(5, 0.5), (10, 1.0), (15, 1.5)], "monitor/gold": [(5, 0.3), (10, 0.5), (15, 0.4)]}
    c = chart(line_chart("Held-out", series, ylabel="score", marks=[15]))
    assert_readable(c)
    assert c["series"] == 2 and c["alarms"] == 1
    assert c["legend"] == ["monitor/proxy", "monitor/gold", "monitor alarm"]


def test_win_rate_chart_reads_in_percent():
    c = chart(interval_chart("Win rate against sft", [("grpo vs sft (gold)", 0.8, 0.6, 0.9), ("dpo vs sft (gold)", 0.4, 0.2, 0.6)]))
    assert_readable(c, step_axis=False)
    assert c["x_ticks"] == ["0%", "25%", "50%", "75%", "100%"]
    assert c["y_ticks"] == ["grpo vs sft (gold)", "dpo vs sft (gold)"] and c["series"] == 2  # rows named on the axis, no legend


def test_names_are_text_not_markup_or_mathtext():
    rows = [("<b>m</b> $\\frac$ vs sft & co (gold)", 0.5, 0.4, 0.6), ("$x^2$ vs sft (gold)", 0.6, 0.5, 0.7)]
    svg = interval_chart("Win rate against <sft>", rows)
    c = chart(svg)
    assert c["y_ticks"] == [label for label, *_ in rows] and c["title"] == ["Win rate against <sft>"]
    assert "<b>" not in svg and "<sft>" not in svg


def test_empty_series_draw_nothing():
    assert line_chart("Loss", {"loss": [(1, float("nan"))]}, ylabel="loss") == ""
    assert interval_chart("Win", []) == ""


# ---------------------------------------------------------------- the page

def test_report_page_keeps_every_chart_readable_and_small(tmp_path):
    run = tmp_path / "run"
    write_run(run)
    page = write_report(run).read_text()
    assert page == build_report(run)  # deterministic: rebuilding changes nothing
    charts = charts_of(page)
    titles = [c["title"][0] for c in charts]
    # the win rates; GRPO: reward, held-out, KL, length, loss, hacking; DPO: reward (margin), loss, accuracy
    assert titles == ["Win rate against sft (95% CI; ties count half)",
                      "Reward (training proxy)", "Held-out: proxy vs gold", "KL to the reference", "Answer length", "Loss",
                      "Reward hacking", "Reward (training proxy)", "Loss", "Accuracy"]
    for c in charts:
        assert_readable(c, step_axis=not c["title"][0].startswith("Win rate"))
    by_title = {(i > 6, t): c for i, (t, c) in enumerate(zip(titles, charts))}
    assert by_title[False, "Held-out: proxy vs gold"]["alarms"] == 1 and by_title[False, "KL to the reference"]["alarms"] == 1
    assert by_title[False, "KL to the reference"]["legend"] == ["kl/ref", "monitor/kl", "monitor alarm"]
    assert by_title[False, "KL to the reference"]["y_label"] == ["KL (nats per answer)"]
    assert by_title[True, "Reward (training proxy)"]["y_label"] == ["rewards/margin"]  # one metric: named on its axis
    assert by_title[True, "Loss"]["y_ticks"] and len(set(by_title[True, "Loss"]["y_ticks"])) == len(by_title[True, "Loss"]["y_ticks"])
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # one chart's clip paths and markers never shadow another's
    for section in ("<h2>Evaluation on 30 held-out prompts</h2>", "<h2>Training</h2>", '<h3 id="stage-grpo">', '<h3 id="stage-dpo">',
                    "<h2>Sample answers</h2>", "over-optimization: held-out gold fell"):
        assert section in page
    assert INJECTED not in page and "<script" not in page.lower()
    assert len(page.encode()) < 400_000, len(page.encode())
