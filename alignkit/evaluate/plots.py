"""The charts of report.html, drawn by matplotlib and inlined as SVG (no pyplot, no display, no scripts).

Every chart has a title, a label on both axes, integer ticks on a step axis, tick labels that do not repeat
(no offset, scientific notation only for tiny or huge values, a flat series drawn in a small symmetric band
instead of a band of float noise) and a legend when it draws more than one line. Text stays text
(`svg.fonttype: none`) and matplotlib's ids are dropped or made unique per chart, so a page of charts stays
small and one chart's `<defs>` never shadow another's.
"""

from __future__ import annotations

import io
import math
import re
import zlib
import xml.etree.ElementTree as ET

from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, MultipleLocator, PercentFormatter, StrMethodFormatter

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
ALARM_COLOR = "#d62728"
STYLE = {
    "svg.fonttype": "none",  # <text>, not a path per glyph
    "svg.hashsalt": "alignkit",  # deterministic ids (the default salt is random)
    "path.simplify": True,
    "path.simplify_threshold": 0.5,  # in pt: a 3,000-step noisy curve keeps ~1,200 vertices, no visible change
    "text.parse_math": False,  # model names are text: "$x$" or "a$b" must not go through mathtext
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial"],
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelcolor": "#333333",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.8,
    "axes.formatter.useoffset": False,  # ticks read "0.693", never "0.0001" under an offset "+0.693"
    "axes.formatter.limits": (-3, 5),  # scientific notation only below 1e-3 or from 1e5
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
}
SVG_NS = "http://www.w3.org/2000/svg"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
# gids set below, kept as classes for the page and its tests; matplotlib's own ids are dropped
CLASSES = {"series", "alarm-mark", "legend", "title", "x-label", "y-label", "y-offset"}
FLAT = 1e-6  # a series whose spread is below this fraction of its size is drawn as flat


def flat_limits(values: list[float]) -> tuple[float, float] | None:
    """(low, high) for a series too flat to scale to (0.693 every step, or 0.693 ± float noise), else None.

    Scaling the axis to the spread of float noise is what prints the same label on every tick; a band of
    ±5% around the value (±0.05 around 0) gives ticks that read as distinct numbers.
    """
    low, high = min(values), max(values)
    if high - low > FLAT * max(abs(low), abs(high)):
        return None
    center = (low + high) / 2
    half = 0.05 * abs(center) or 0.05
    return center - half, center + half


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], ylabel: str, xlabel: str = "optimizer step",
               marks: list[float] = ()) -> str:
    """An inline SVG line chart of `series` (name -> [(step, value)]), dashed red lines at the alarm steps `marks`."""
    series = {name: [(x, y) for x, y in pts if math.isfinite(y)] for name, pts in series.items()}
    series = {name: pts for name, pts in series.items() if pts}
    if not series:
        return ""
    with rc_context(STYLE):
        fig = Figure(figsize=(4.3, 3.3 + 0.17 * ((len(series) + bool(marks) + 1) // 2)), layout="constrained")
        ax = fig.add_subplot()
        for k, (name, pts) in enumerate(series.items()):
            xs, ys = zip(*pts)
            ax.plot(xs, ys, color=COLORS[k % len(COLORS)], linewidth=1.6 if len(pts) <= 200 else 0.9,  # thin when dense
                    marker="o" if len(pts) <= 40 else None,
                    markersize=2.8, label=name, gid="series")
        for i, mark in enumerate(marks):
            ax.axvline(mark, color=ALARM_COLOR, linestyle="--", linewidth=1, gid="alarm-mark",
                       label="monitor alarm" if i == 0 else None)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))  # 200,000 steps, never 2.00 with "1e5" above
        steps = [x for pts in series.values() for x, _ in pts] + list(marks)
        if max(steps) - min(steps) < 1:  # one step: widen to its neighbours so the integer ticks have room
            ax.set_xlim(min(steps) - 1, max(steps) + 1)
        limits = flat_limits([y for pts in series.values() for _, y in pts])
        if limits:
            ax.set_ylim(*limits)
        _label(ax, title, xlabel, ylabel)
        if len(ax.get_legend_handles_labels()[0]) > 1:
            fig.legend(loc="outside lower center", ncols=2).set_gid("legend")
        return _inline_svg(fig, title)


def interval_chart(title: str, rows: list[tuple[str, float, float, float]],
                   ylabel: str = "model vs reference (scorer)") -> str:
    """Win rates in [0, 1] as dots with interval whiskers, one row per (label, rate, low, high), a dashed line at 50%."""
    if not rows:
        return ""
    with rc_context(STYLE):
        fig = Figure(figsize=(5.6, 1.5 + 0.34 * len(rows)), layout="constrained")
        ax = fig.add_subplot()
        ax.axvline(50, color="#999999", linestyle="--", linewidth=1)
        for i, (label, rate, low, high) in enumerate(rows):
            color = COLORS[i % len(COLORS)]
            ax.plot([100 * low, 100 * high], [i, i], color=color, linewidth=2, gid="series")
            ax.plot([100 * rate], [i], "o", color=color, markersize=6)
            ax.annotate(f"{100 * rate:.0f}%", (100 * rate, i), xytext=(0, 6), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8)
        ax.set_yticks(range(len(rows)), [label for label, *_ in rows])
        ax.set_ylim(len(rows) - 0.4, -0.7)  # first row on top, room for its rate above the dot
        ax.set_xlim(0, 100)
        ax.xaxis.set_major_locator(MultipleLocator(25))
        ax.xaxis.set_major_formatter(PercentFormatter(decimals=0))
        ax.grid(False, axis="y")
        _label(ax, title, "win rate", ylabel)
        return _inline_svg(fig, title)


def _label(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, gid="title")
    ax.set_xlabel(xlabel, gid="x-label")
    ax.set_ylabel(ylabel, gid="y-label")
    ax.yaxis.get_offset_text().set_gid("y-offset")  # "1e-5" above the axis when values are tiny


def _inline_svg(fig: Figure, title: str) -> str:
    """`fig` as an `<svg class="chart">` element for an HTML page: no XML prolog, metadata or global style,
    matplotlib's ids dropped (tick groups become classes `xtick`/`ytick`), the ids that are referenced
    prefixed per chart, whitespace squeezed, path coordinates rounded to 0.1 pt."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})  # no timestamp: the same run gives the same page
    text = buf.getvalue()
    prefix = f"c{zlib.crc32(text.encode()):08x}-"
    referenced = set(re.findall(r'(?:href="#|url\(#)([^")]+)', text))
    root = ET.fromstring(text)
    ns = f"{{{SVG_NS}}}"
    for child in list(root):  # the RDF metadata, and the `*{stroke-linejoin}` style that would apply page-wide
        if child.tag == ns + "metadata" or (child.tag == ns + "defs" and all(el.tag == ns + "style" for el in child)):
            root.remove(child)
    for el in root.iter():
        el.tag = el.tag.removeprefix(ns)  # plain names, one xmlns on the root
        el.tail = None
        if el.text is not None and not el.text.strip():
            el.text = None
        gid = el.attrib.pop("id", None)
        if gid in CLASSES:
            el.set("class", gid)
        elif gid and re.fullmatch(r"[xy]tick_\d+", gid):
            el.set("class", gid[:5])
        elif gid in referenced:
            el.set("id", prefix + gid)
        href = el.attrib.pop(XLINK_HREF, None)
        if href:
            el.set("href", "#" + prefix + href[1:])
        if "url(#" in el.get("clip-path", ""):
            el.set("clip-path", el.get("clip-path").replace("url(#", "url(#" + prefix))
        if "d" in el.attrib:
            el.set("d", re.sub(r"(\.\d)\d+", r"\1", " ".join(el.get("d").split())))  # 0.1 pt is finer than a pixel
        if re.fullmatch(r"rotate\(-?0 [^)]*\)", el.get("transform", "")):
            del el.attrib["transform"]
    root.attrib.pop("version", None)
    root.set("xmlns", SVG_NS)
    root.set("class", "chart")
    root.set("role", "img")
    root.set("aria-label", title)
    return ET.tostring(root, encoding="unicode")
