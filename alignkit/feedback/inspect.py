"""`alignkit data inspect FILE`: a quality report for a dataset, as text and optionally self-contained HTML.

Sections: rows by format; exact and near duplicates; train/test prompt leakage (`--test`);
length bias and preference strength/ties (preference rows); prompt diversity (distinct-n and
embedding spread); topic clusters; annotator agreement (rows with an `annotator` column that
label the same pair). The report is a plain dict (`inspect_data`) so tests and other tools can
read the numbers; `format_report` and `render_html` only present it.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path

from alignkit.data.formats import detect_kind, split_implicit_prompt
from alignkit.data.load import load_rows
from alignkit.feedback import quality
from alignkit.errors import AlignkitError
from alignkit.feedback.embed import embed_texts

_PREVIEW = 90


def _preview(text: str, limit: int = _PREVIEW) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _row_kind(row: dict) -> str:
    kind = detect_kind(row) or "unknown"
    probe = row.get("messages", row.get("chosen", row.get("completion", row.get("prompt"))))
    return f"{'conversational' if isinstance(probe, list) else 'standard'} {kind.replace('_', '-')}"


def _prompt_of(row: dict) -> str:
    """The prompt text of any kind of row (an implicit preference prompt is split off)."""
    if "prompt" in row:
        return quality.as_text(row["prompt"])
    if "chosen" in row and "rejected" in row:
        return quality.as_text(split_implicit_prompt(row["chosen"], row["rejected"])[0])
    if isinstance(row.get("messages"), list):
        return quality.as_text([m for m in row["messages"] if isinstance(m, dict) and m.get("role") != "assistant"][:2])
    return quality.as_text(row.get("text", ""))[:500]


def _row_text(row: dict) -> str:
    return "\n".join(f"{k}: {quality.as_text(row[k])}" for k in ("prompt", "chosen", "rejected", "completion", "text", "messages") if k in row)


def _duplicates(rows: list[dict], threshold: float) -> dict:
    texts = [_row_text(r) for r in rows]
    keys = [quality.normalise(t) for t in texts]
    groups = quality.exact_duplicates(keys)
    seen: dict[str, int] = {}
    for index, key in enumerate(keys):
        seen.setdefault(key, index)
    first = sorted(seen.values())  # one row per distinct text: exact copies are counted above
    near = [(first[i], first[j], s) for i, j, s in quality.near_duplicates([texts[k] for k in first], threshold) if s < 1.0]
    prompts = Counter(quality.normalise(_prompt_of(r)) for r in rows)
    return {
        "exact_groups": len(groups), "exact_extra_rows": sum(len(g) - 1 for g in groups),
        "exact_examples": groups[:5],
        "near_pairs": len(near), "near_threshold": threshold,
        "near_examples": [(i + 1, j + 1, round(s, 3)) for i, j, s in near[:5]],
        "distinct_prompts": len(prompts), "repeated_prompts": sum(1 for c in prompts.values() if c > 1),
    }


def _preferences(rows: list[dict]) -> dict:
    pairs = [r for r in rows if "chosen" in r and "rejected" in r]
    if not pairs:
        return {}
    chosen = [quality.as_text(r["chosen"]) for r in pairs]
    rejected = [quality.as_text(r["rejected"]) for r in pairs]
    out = {
        "pairs": len(pairs),
        "length_words": quality.length_bias([len(quality.words(t)) for t in chosen], [len(quality.words(t)) for t in rejected]),
        "length_chars": quality.length_bias([len(t) for t in chosen], [len(t) for t in rejected]),
        "ties": sum(quality.is_tie(r) for r in pairs),
    }
    for column in ("strength", "margin"):
        values = [float(r[column]) for r in pairs if isinstance(r.get(column), (int, float)) and not isinstance(r.get(column), bool)]
        if values:
            out[column] = quality.strength_summary(values) if column == "strength" else quality.strength_summary(values, _margin_bins(values))
    out["agreement"] = _agreement(pairs)
    return out


def _margin_bins(values: list[float]) -> tuple[float, ...]:
    low, high = min(values), max(values)
    if high <= low:
        high = low + 1.0
    step = (high - low) / 5
    return tuple(low + step * k for k in range(6))


def _agreement(pairs: list[dict]) -> dict | None:
    labelled = [r for r in pairs if r.get("annotator") not in (None, "")]
    if not labelled:
        return None
    triples = []
    for row in labelled:
        key, label = quality.pair_label(quality.as_text(row["chosen"]), quality.as_text(row["rejected"]), quality.is_tie(row))
        triples.append(((quality.normalise(_prompt_of(row)),) + key, str(row["annotator"]), label))
    return quality.annotator_agreement(triples)


def _unpaired(rows: list[dict]) -> dict:
    labelled = [r for r in rows if "completion" in r and "label" in r]
    if not labelled:
        return {}
    good = sum(str(r["label"]).strip().lower() in ("true", "1", "yes") for r in labelled)
    return {"rows": len(labelled), "desirable": good, "undesirable": len(labelled) - good}


def _diversity(prompts: list[str], embeddings, clusters: int, seed: int) -> dict:
    out = {f"distinct_{n}": quality.distinct_n(prompts, n) for n in (1, 2, 3)}
    out["prompts"] = len(prompts)
    if embeddings is None:
        return out
    out.update(quality.embedding_spread(embeddings))
    k = clusters or quality.default_cluster_count(len(prompts))
    topics = quality.topic_clusters(embeddings, k, seed)
    out["topics"] = [{"size": t["size"], "share": t["share"], "examples": [_preview(prompts[i]) for i in t["examples"]]} for t in topics]
    return out


def inspect_data(source, test: str | None = None, embeddings: bool = True, clusters: int = 0,
                 near_threshold: float = 0.8, seed: int = 0) -> dict:
    """The quality report of `source` (any file `load_rows` reads) as a dict of plain numbers and lists."""
    rows = load_rows(source)
    report = {"source": str(source), "rows": len(rows), "formats": dict(Counter(_row_kind(r) for r in rows))}
    report["duplicates"] = _duplicates(rows, near_threshold)
    prompts_all = [_prompt_of(r) for r in rows]
    if test:
        test_rows = load_rows(test)
        report["leakage"] = {"test_source": str(test), **quality.prompt_leakage(prompts_all, [_prompt_of(r) for r in test_rows], near_threshold)}
    report["preference"] = _preferences(rows)
    report["unpaired"] = _unpaired(rows)
    prompts = list(dict.fromkeys(p for p in prompts_all if p.strip()))  # distinct, in first-seen order
    vectors = None
    if embeddings and len(prompts) >= 2:
        vectors = embed_texts(prompts)
    report["diversity"] = _diversity(prompts, vectors, clusters, seed)
    return report


# ---------------------------------------------------------------- text


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _sections(report: dict) -> list[tuple[str, list[str]]]:
    """(title, lines) pairs shared by the text and the HTML report."""
    out = [("Rows", [f"{report['rows']} rows in {report['source']}"] + [f"{kind}: {n}" for kind, n in report["formats"].items()])]
    d = report["duplicates"]
    out.append(("Duplicates", [
        f"exact duplicate rows: {d['exact_extra_rows']} extra copies in {d['exact_groups']} groups" + (f" (e.g. rows {d['exact_examples'][0]})" if d["exact_examples"] else ""),
        f"near-duplicate row pairs (word 3-gram Jaccard >= {d['near_threshold']}): {d['near_pairs']}" + (f" (e.g. rows {d['near_examples'][0][0]} and {d['near_examples'][0][1]}, {d['near_examples'][0][2]})" if d["near_examples"] else ""),
        f"distinct prompts: {d['distinct_prompts']}; prompts used by more than one row: {d['repeated_prompts']}"]))
    if "leakage" in report:
        leak = report["leakage"]
        lines = [f"{leak['exact']} of {leak['test_prompts']} distinct test prompts appear verbatim in this file, {leak['near']} nearly ({_pct(leak['leaked_share'])} leaked)"]
        lines += [f"test row {t} ~ row {r} (Jaccard {s})" for t, r, s in leak["examples"][:5]]
        out.append((f"Train/test prompt leakage (test: {leak['test_source']})", lines))
    p = report["preference"]
    if p:
        w, c = p["length_words"], p["length_chars"]
        lines = [f"{p['pairs']} pairs; chosen longer in {_pct(w['chosen_longer'])}, shorter in {_pct(w['rejected_longer'])}, equal in {_pct(w['equal_length'])} (words)",
                 f"mean length chosen {w['mean_chosen']:.1f} vs rejected {w['mean_rejected']:.1f} words (difference {w['mean_difference']:+.1f}); median ratio {_num(w['median_ratio'], 2)}",
                 f"characters: chosen longer in {_pct(c['chosen_longer'])}, mean difference {c['mean_difference']:+.1f}"]
        out.append(("Length bias", lines))
        lines = [f"ties (flagged, zero strength/margin or identical responses): {p['ties']} of {p['pairs']}"]
        for column in ("strength", "margin"):
            s = p.get(column)
            if s:
                lines.append(f"{column}: mean {s['mean']:.3f}, quartiles {s['q1']:.3f} / {s['median']:.3f} / {s['q3']:.3f}, range {s['min']:.3f}..{s['max']:.3f}")
                lines.append(f"{column} histogram: " + ", ".join(f"[{s['bins'][k]:.2f},{s['bins'][k + 1]:.2f}): {n}" for k, n in enumerate(s["histogram"])))
        if not any(p.get(col) for col in ("strength", "margin")):
            lines.append("no strength or margin column")
        out.append(("Preference strength and ties", lines))
        a = p.get("agreement")
        if a:
            if a["method"]:
                name = {"cohen_kappa": "Cohen's kappa", "krippendorff_alpha": "Krippendorff's alpha (nominal)"}[a["method"]]
                lines = [f"{a['items']} pairs labelled by 2+ of {a['annotators']} annotators; {name} {_num(a['value'])}; raw agreement {_pct(a['percent_agreement'])}"]
            else:
                lines = ["an annotator column is present, but no pair was labelled by two or more annotators"]
            out.append(("Annotator agreement", lines))
    u = report["unpaired"]
    if u:
        out.append(("Unpaired labels", [f"{u['desirable']} desirable, {u['undesirable']} undesirable of {u['rows']}"]))
    v = report["diversity"]
    lines = [f"{v['prompts']} distinct prompts; distinct-1 {v['distinct_1']:.3f}, distinct-2 {v['distinct_2']:.3f}, distinct-3 {v['distinct_3']:.3f}"]
    if "mean_pairwise_cosine_distance" in v:
        lines.append(f"embedding spread (all-MiniLM-L6-v2): mean pairwise cosine distance {v['mean_pairwise_cosine_distance']:.3f}, mean distance to centroid {v['mean_distance_to_centroid']:.3f}")
    out.append(("Prompt diversity", lines))
    if v.get("topics"):
        lines = [f"topic {k + 1}: {t['size']} prompts ({_pct(t['share'])}) e.g. " + " | ".join(t["examples"]) for k, t in enumerate(v["topics"])]
        out.append(("Topic coverage (embedding clusters)", lines))
    return out


def format_report(report: dict) -> str:
    parts = []
    for title, lines in _sections(report):
        parts.append(f"== {title}")
        parts.extend(f"  {line}" for line in lines)
    return "\n".join(parts)


# ---------------------------------------------------------------- HTML


_CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
li{margin:.2em 0}.bar{display:inline-block;height:.8em;background:#4a7bd0;vertical-align:middle}
table{border-collapse:collapse}td{padding:.1em .6em}pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:12px}"""


def _bars(counts: list[int], labels: list[str]) -> str:
    top = max(counts) or 1
    rows = "".join(f"<tr><td>{html.escape(label)}</td><td><span class='bar' style='width:{int(240 * n / top)}px'></span> {n}</td></tr>"
                   for label, n in zip(labels, counts))
    return f"<table>{rows}</table>"


def render_html(report: dict) -> str:
    """One self-contained page (inline CSS, no scripts, no external requests); all data escaped."""
    body = [f"<h1>Data quality report: {html.escape(report['source'])}</h1>"]
    for title, lines in _sections(report):
        body.append(f"<h2>{html.escape(title)}</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")
        if title == "Preference strength and ties":
            for column in ("strength", "margin"):
                s = report["preference"].get(column)
                if s:
                    labels = [f"{s['bins'][k]:.2f}–{s['bins'][k + 1]:.2f}" for k in range(len(s["histogram"]))]
                    body.append(f"<p>{column}</p>" + _bars(s["histogram"], labels))
        if title.startswith("Topic coverage"):
            topics = report["diversity"]["topics"]
            body.append(_bars([t["size"] for t in topics], [f"topic {k + 1}" for k in range(len(topics))]))
    body.append("<h2>Raw numbers</h2><pre>" + html.escape(json.dumps(report, indent=1, default=str)) + "</pre>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>alignkit data report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")


def write_html(report: dict, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(render_html(report), encoding="utf-8")


def run_inspect(args) -> None:
    """`alignkit data inspect` (arguments from `alignkit.data_cli`)."""
    if not 0 < args.near_threshold <= 1:
        raise AlignkitError(f"--near-threshold must be in (0, 1], got {args.near_threshold}")
    report = inspect_data(args.file, args.test, not args.no_embeddings, args.clusters, args.near_threshold)
    print(format_report(report))
    if args.html:
        write_html(report, args.html)
        print(f"HTML report: {args.html}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"JSON report: {args.json}")
