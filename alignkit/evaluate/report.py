"""`<run>/report.html`: one self-contained page (matplotlib charts as inline SVG, CSS, no scripts, no network) for a run.

    alignkit report RUN_DIR          # rebuilds RUN_DIR/report.html

RUN_DIR is a pipeline directory (stage folders with metrics.jsonl, eval/results.json,
pipeline.json), a single training run (metrics.jsonl, monitor.jsonl) or an eval output
folder (results.json). The page shows, for each training stage, reward, KL, length, loss,
the held-out monitor (proxy vs gold, with alarms marked) and the reward-hacking signals over
steps; then win rates with their intervals, the results table, the distribution-shift
buckets, and sample answers side by side.
"""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.evaluate.plots import interval_chart, line_chart
from alignkit.io import write_text

# chart title -> (y-axis quantity, its unit or "", the metric keys drawn on it: those present in a stage's metrics);
# a chart of one metric names that metric on its y axis, a chart of several names the quantity and has a legend
CHARTS = {
    "Reward (training proxy)": ("reward", "", ["reward", "rewards/margin", "rewards/chosen", "rewards/rejected", "eval/reward"]),
    "Held-out: proxy vs gold": ("score / win rate", "", ["monitor/proxy", "monitor/gold", "monitor/judge_win_rate", "eval/gold"]),
    "KL to the reference": ("KL", "nats per answer", ["kl/ref", "monitor/kl", "eval/kl/ref"]),
    "Answer length": ("mean length", "tokens", ["response/length", "monitor/length", "eval/length"]),
    "Loss": ("loss", "", ["loss", "eval/loss"]),
    "Accuracy": ("accuracy", "fraction of pairs", ["rewards/accuracy", "eval/rewards/accuracy", "eval/accuracy"]),
    "Reward hacking": ("signal", "correlation or rate", ["hacking/length_corr", "hacking/length_corr_trend", "hacking/repetition",
                                                          "hacking/truncation_gain"]),
}
ALARM_CHARTS = ("Held-out: proxy vs gold", "KL to the reference")  # the charts that mark the monitor's alarms
SERIES_LABELS = {"monitor/length": "monitor/length (words)"}  # the monitor counts words, training counts tokens
STAGE_ORDER = ["sft", "reward", "ppo", "grpo", "dpo", "kto"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}h3{font-size:15px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{border:1px solid #e4e4e4;border-radius:6px;background:#fff}
.chart *{stroke-linejoin:round;stroke-linecap:butt}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}.answers td{max-width:330px;white-space:pre-wrap}
.alarm{color:#b00020}.muted{color:#777;font-size:12px}pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:12px}
"""


# ---------------------------------------------------------------- reading a run

def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def find_stages(run: Path) -> dict[str, Path]:
    """Stage name -> folder holding metrics.jsonl: the run itself, or its sub-folders in pipeline order."""
    if (run / "metrics.jsonl").is_file():
        return {run.name: run}
    found = {p.name: p for p in sorted(run.iterdir()) if p.is_dir() and (p / "metrics.jsonl").is_file()}
    return dict(sorted(found.items(), key=lambda kv: (STAGE_ORDER.index(kv[0]) if kv[0] in STAGE_ORDER else 99, kv[0])))


def find_results(run: Path) -> dict:
    for candidate in (run / "results.json", run / "eval" / "results.json"):
        if candidate.is_file():
            return _read_json(candidate)
    return {}


def series_of(metrics: list[dict], keys: list[str]) -> dict[str, list[tuple[float, float]]]:
    out = {}
    for key in keys:
        pts = [(float(m["step"]), float(m[key])) for m in metrics if isinstance(m.get(key), (int, float)) and "step" in m]
        if pts:
            out[key] = pts
    return out


def stage_chart(title: str, metrics: list[dict], alarm_steps: list[float]) -> str:
    """CHARTS[title] for one stage's metrics, "" when none of its metrics were logged."""
    quantity, unit, keys = CHARTS[title]
    series = series_of(metrics, keys)
    if not series:
        return ""
    name = next(iter(series)) if len(series) == 1 else quantity
    ylabel = SERIES_LABELS.get(name) or (f"{name} ({unit})" if unit else name)
    return line_chart(title, {SERIES_LABELS.get(key, key): pts for key, pts in series.items()}, ylabel, marks=alarm_steps)


# ---------------------------------------------------------------- sections

def stage_section(name: str, folder: Path) -> str:
    metrics = _read_jsonl(folder / "metrics.jsonl")
    monitor = _read_json(folder / "monitor.json")
    summary = _read_json(folder / "summary.json")
    alarm_steps = sorted({a["step"] for a in monitor.get("alarms", [])})
    charts = [stage_chart(title, metrics, alarm_steps if title in ALARM_CHARTS else []) for title in CHARTS]
    charts = [c for c in charts if c]
    parts = [f'<h3 id="stage-{html.escape(name)}">{html.escape(name.upper())}</h3>']
    facts = []
    if summary.get("seconds") is not None:
        facts.append(f"{summary['seconds']:.0f} s")
    if summary.get("steps") is not None:
        facts.append(f"{summary['steps']} steps")
    if summary.get("model"):
        facts.append(f"model: {html.escape(str(summary['model']))}")
    if facts:
        parts.append(f'<p class="muted">{" · ".join(facts)}</p>')
    if monitor:
        best = f"best held-out check at step {monitor['best_step']} (saved in {html.escape(str(monitor.get('best_dir')))})" if monitor.get("best_step") is not None else ""
        parts.append(f"<p>Monitor: {monitor.get('checks', 0)} checks; {best}; "
                     f"{'<b class=alarm>stopped early at step ' + str(monitor['stopped_at']) + '</b>; ' if monitor.get('stopped') else ''}"
                     f"{monitor.get('hacking_warnings', 0)} reward-hacking warnings.</p>")
        for alarm in monitor.get("alarms", [])[:10]:
            parts.append(f'<p class="alarm">step {alarm["step"]}: {html.escape(alarm["alarm"])}</p>')
    parts.append(f'<div class="charts">{"".join(charts) or "<p class=muted>no metrics logged</p>"}</div>')
    return "\n".join(parts)


def _pct(w: dict) -> str:
    return f"{100 * w['rate']:.1f}% [{100 * w['low']:.1f}, {100 * w['high']:.1f}]"


def results_section(results: dict) -> str:
    reference, models = results["reference"], results["models"]
    label = lambda scorer: scorer.replace("_", " ")  # noqa: E731
    rows = [(f"{name} vs {reference} ({label(scorer)})", w["rate"], w["low"], w["high"])
            for name, m in models.items() for scorer, w in m.get("win_rate", {}).items()]
    scorers = [s for s in ("gold", "sampled_gold", "reward") if any(s in m for m in models.values())]
    head = "".join(f"<th>mean {label(s)} [CI]</th><th>win vs {html.escape(reference)} ({label(s)})</th>" for s in scorers)
    judge = any("judge" in m.get("win_rate", {}) for m in models.values())
    head += "<th>win (judge)</th>" if judge else ""
    syco = any("sycophancy_rate" in m for m in models.values())
    syco_head = "<th>sycophancy</th>" if syco else ""
    table = [f"<table><tr><th>model</th>{head}<th>KL</th><th>length (tokens)</th><th>distinct-1</th><th>distinct-2</th><th>refusal</th><th>repetition</th>{syco_head}</tr>"]
    for name, m in models.items():
        cells = ""
        for s in scorers:
            value = m.get(s)
            cells += f'<td class="num">{value["mean"]:.3f} [{value["low"]:.3f}, {value["high"]:.3f}]</td>' if value else "<td></td>"
            w = m.get("win_rate", {}).get(s)
            cells += f'<td class="num">{_pct(w) if w else "(reference)"}</td>'
        if judge:
            w = m.get("win_rate", {}).get("judge")
            cells += f'<td class="num">{_pct(w) if w else "(reference)"}</td>'
        kl = m.get("kl")
        table.append(f'<tr><td>{html.escape(name)}</td>{cells}<td class="num">{"-" if kl is None else f"{kl:.2f}"}</td>'
                     f'<td class="num">{m.get("length_tokens", m.get("length_words", 0)):.1f}</td><td class="num">{m["distinct_1"]:.3f}</td>'
                     f'<td class="num">{m["distinct_2"]:.3f}</td><td class="num">{100 * m["refusal_rate"]:.0f}%</td>'
                     f'<td class="num">{m["repetition_rate"]:.3f}</td>'
                     + (f'<td class="num">{100 * m["sycophancy_rate"]:.0f}%</td>' if "sycophancy_rate" in m else ("<td></td>" if syco else ""))
                     + "</tr>")
    table.append("</table>")
    parts = [f"<h2>Evaluation on {results.get('prompts', '?')} held-out prompts</h2>",
             f'<div class="charts">{interval_chart("Win rate against " + reference + " (95% CI; ties count half)", rows)}</div>',
             "\n".join(table),
             f'<p class="muted">KL(model || {html.escape(reference)}) is the k1 estimate on sampled answers, nats per answer.'
             + (f" Sampled gold: the gold function's mean over {results['gold_samples']} answers per prompt sampled at temperature "
                f"{results.get('gold_temperature', 1.0):g} "
                f"(the policy's expected gold); gold alone scores the greedy answer." if results.get("gold_samples") else "") + "</p>"]
    for name, m in models.items():
        if m.get("judge_bias"):
            b = m["judge_bias"]
            parts.append(f'<p class="muted">judge on {html.escape(name)}: first-slot rate {b.get("first_slot_rate", 0):.2f}, '
                         f'self-consistency {b.get("self_consistency", 0):.2f} (both orders averaged).</p>')
    return "\n".join(parts)


def shift_section(shift: dict) -> str:
    rows = "".join(f'<tr><td>{i}</td><td class="num">{b["distance_min"]:.3f}–{b["distance_max"]:.3f}</td><td class="num">{b["n"]}</td>'
                   f'<td class="num">{b["accuracy"]:.3f}</td><td class="num">{b.get("ensemble_std", float("nan")):.3f}</td></tr>'
                   for i, b in enumerate(shift["buckets"], 1))
    return (f"<h2>Distribution shift</h2><p>Reward model ({shift['members']} member(s)) on {shift['pairs']} held-out pairs: "
            f"accuracy {shift['accuracy']:.3f}. Distance = 1 − cosine similarity (all-MiniLM-L6-v2) to the nearest training prompt.</p>"
            f"<table><tr><th>bucket</th><th>distance</th><th>pairs</th><th>RM accuracy</th><th>ensemble std</th></tr>{rows}</table>")


def samples_section(results: dict, limit: int = 12) -> str:
    samples = results.get("samples", [])
    seen, picked = set(), []
    for s in samples:  # one per category first, then in order
        if s.get("category") not in seen:
            seen.add(s.get("category"))
            picked.append(s)
    picked += [s for s in samples if s not in picked][: max(0, limit - len(picked))]
    names = list(results["models"])
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = []
    for s in picked[:limit]:
        cells = ""
        for n in names:
            score = s.get("scores", {}).get(n, {})
            tag = ", ".join(f"{k} {v:+.2f}" for k, v in score.items() if k in ("gold", "reward") and isinstance(v, (int, float)))
            cells += f"<td>{html.escape(str(s['answers'].get(n, '')))}<div class=muted>{tag}</div></td>"
        prompt = s["prompt"] if isinstance(s["prompt"], str) else json.dumps(s["prompt"])
        category = f"<div class=muted>{html.escape(str(s['category']))}</div>" if s.get("category") else ""
        rows.append(f"<tr><td>{html.escape(prompt)}{category}</td>{cells}</tr>")
    return f'<h2>Sample answers</h2><table class="answers"><tr><th>prompt</th>{head}</tr>{"".join(rows)}</table>'


def pipeline_section(pipeline: dict) -> str:
    if not pipeline:
        return ""
    stages = "".join(f"<tr><td>{html.escape(s)}</td><td>{html.escape(str(v.get('status', '')))}</td><td class=num>{v.get('seconds', 0):.0f}</td></tr>"
                     for s, v in pipeline.get("stages", {}).items())
    table = f"<pre>{html.escape(pipeline['table'])}</pre>" if pipeline.get("table") else ""
    return (f"<h2>Pipeline</h2>{table}<table><tr><th>stage</th><th>status</th><th>seconds</th></tr>{stages}</table>"
            f'<p class="muted">total {pipeline.get("seconds", 0):.0f} s</p>')


def build_report(run: str | Path) -> str:
    run = Path(run)
    if not run.is_dir():
        raise AlignkitError(f"run directory {run} does not exist")
    stages, results, pipeline = find_stages(run), find_results(run), _read_json(run / "pipeline.json")
    if not stages and not results:
        raise AlignkitError(f"{run} holds no metrics.jsonl (nor stage folders with one) and no results.json; point to a run directory")
    body = [f"<h1>alignkit report: {html.escape(str(run))}</h1>", pipeline_section(pipeline)]
    if results:
        body.append(results_section(results))
    if stages:
        body.append("<h2>Training</h2>" + "\n".join(stage_section(name, folder) for name, folder in stages.items()))
    ood = _read_json(run / "eval" / "ood" / "results.json")
    if ood:  # the same models on prompts phrased unlike any training prompt
        body.append(results_section(ood).replace("<h2>Evaluation on", "<h2>Out of distribution (held-out phrasings):", 1))
    if results.get("shift"):
        body.append(shift_section(results["shift"]))
    if ood.get("shift"):
        body.append(shift_section(ood["shift"]).replace("<h2>Distribution shift</h2>", "<h2>Distribution shift: OOD pairs</h2>", 1))
    if results.get("samples"):
        body.append(samples_section(results))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>alignkit report: {html.escape(run.name)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(run: str | Path) -> Path:
    path = Path(run) / "report.html"
    write_text(path, build_report(run))
    return path


# ---------------------------------------------------------------- `alignkit report`

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a pipeline, training-run or eval directory")


def run(args) -> None:
    print(f"report written to {write_report(args.run_dir)}")
