"""The pure logic of the training monitors: over-optimization alarms from held-out checks, reward-hacking signals.

No models here, so every rule is tested on made-up numbers (tests/test_monitors.py); the monitor
that samples and scores (evaluate/monitors.py) feeds them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from alignkit.evaluate.metrics import repetition_rate

log = logging.getLogger("alignkit")

Score = Callable[[list, list[str], dict], list[float]]  # (prompts, answers, columns) -> one number per answer


@dataclass
class Check:
    step: int
    proxy: float
    gold: float | None = None
    judge: float | None = None
    kl: float | None = None

    @property
    def target(self) -> float:
        """What early stopping maximises: gold, else the judge's win rate, else the proxy."""
        return next(v for v in (self.gold, self.judge, self.proxy) if v is not None)


@dataclass
class OverOptimizationDetector:
    """Alarms from the history of held-out checks; no models, so it is tested on made-up numbers."""

    gold_drop: float = 0.05
    proxy_rise: float = 0.0
    kl_budget: float = 0.0
    patience: int = 1
    checks: list = field(default_factory=list)
    alarmed_in_a_row: int = 0

    @property
    def best(self) -> Check | None:
        return max(self.checks, key=lambda c: c.target) if self.checks else None

    def update(self, check: Check) -> list[str]:
        """Adds a check; returns its alarms (empty when all is well)."""
        self.checks.append(check)
        alarms = []
        held_out = check.gold if check.gold is not None else check.judge
        if held_out is not None:
            name = "gold" if check.gold is not None else "judge"
            peak = max(self.checks, key=lambda c: c.gold if c.gold is not None else c.judge)
            peak_value = peak.gold if peak.gold is not None else peak.judge
            if peak.step < check.step and peak_value - held_out > self.gold_drop and check.proxy - peak.proxy > self.proxy_rise:
                alarms.append(f"over-optimization: held-out {name} fell {peak_value:.3f} -> {held_out:.3f} since step {peak.step} "
                              f"while the proxy reward rose {peak.proxy:.3f} -> {check.proxy:.3f}")
        if self.kl_budget > 0 and check.kl is not None and check.kl > self.kl_budget:
            alarms.append(f"KL budget exceeded: KL(policy || reference) = {check.kl:.2f} nats per answer > kl_budget {self.kl_budget:g}")
        self.alarmed_in_a_row = self.alarmed_in_a_row + 1 if alarms else 0
        return alarms

    @property
    def should_stop(self) -> bool:
        return self.alarmed_in_a_row >= self.patience

    def state_dict(self) -> dict:
        return {"checks": [asdict(c) for c in self.checks], "alarmed_in_a_row": self.alarmed_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.checks = [Check(**c) for c in state["checks"]]
        self.alarmed_in_a_row = state["alarmed_in_a_row"]


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; 0 when either side is constant or there are fewer than 3 points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def trend(steps: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of values over steps, times the span of steps: the change over the window."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if len(steps) < 3 or steps.std() == 0:
        return 0.0
    slope = np.polyfit(steps, values, 1)[0]
    return float(slope * (steps.max() - steps.min()))


def truncate_words(text: str, fraction: float) -> str:
    """The first `fraction` of an answer's words (at least one)."""
    parts = text.split()
    return " ".join(parts[: max(1, int(len(parts) * fraction))])


@dataclass
class HackingAlarms:
    """Reward-length correlation and its trend, repetition, truncation gain; warnings on crossing thresholds."""

    length_corr_warn: float = 0.5
    length_corr_trend_warn: float = 0.3
    repetition_warn: float = 0.3
    truncation_gain_warn: float = 0.5
    trend_window: int = 10
    history: list = field(default_factory=list)  # (step, correlation)
    active: set = field(default_factory=set)  # warnings currently above threshold (printed once per crossing)
    warnings: int = 0

    def update(self, step: int, rewards: Sequence[float], lengths: Sequence[float], answers: Sequence[str],
               truncation_gain: float | None = None) -> dict:
        corr = pearson(rewards, lengths)
        self.history.append((step, corr))
        recent = self.history[-self.trend_window:]
        metrics = {
            "hacking/length_corr": corr,
            "hacking/length_corr_trend": trend([s for s, _ in recent], [c for _, c in recent]),
            "hacking/repetition": sum(map(repetition_rate, answers)) / max(1, len(answers)),
        }
        if truncation_gain is not None:
            metrics["hacking/truncation_gain"] = truncation_gain
        checks = {
            "hacking/length_corr": (self.length_corr_warn, "reward rises with answer length"),
            "hacking/length_corr_trend": (self.length_corr_trend_warn, "the reward-length correlation is climbing"),
            "hacking/repetition": (self.repetition_warn, "answers repeat themselves"),
            "hacking/truncation_gain": (self.truncation_gain_warn, "the full answer outscores its own first part by a wide margin (length exploitation?)"),
        }
        for key, (threshold, meaning) in checks.items():
            value = metrics.get(key)
            if value is None or threshold <= 0:
                continue
            if value > threshold and key not in self.active:
                self.active.add(key)
                self.warnings += 1
                log.warning(f"reward-hacking warning at step {step}: {key} = {value:.3f} > {threshold:g}: {meaning}")
            elif value <= threshold:
                self.active.discard(key)
        metrics["hacking/warnings"] = self.warnings
        return metrics

    def state_dict(self) -> dict:
        return {"history": [list(h) for h in self.history], "active": sorted(self.active), "warnings": self.warnings}

    def load_state_dict(self, state: dict) -> None:
        self.history = [tuple(h) for h in state["history"]]
        self.active, self.warnings = set(state["active"]), state["warnings"]


def truncation_gain(score: Score, prompts: list, answers: list[str], columns: dict, fraction: float, samples: int,
                    scores: Sequence[float] | None = None) -> float:
    """Mean proxy(full) - proxy(first `fraction` of words) over up to `samples` answers, in units of their reward std.

    `scores`: the answers' proxy scores when already known (a rollout's rewards), so only the cut answers are scored.
    """
    picked = [i for i, a in enumerate(answers) if len(a.split()) >= 2][:samples]
    if not picked:
        return 0.0
    if scores is None:
        cut = {k: [v[i] for i in picked] * 2 for k, v in columns.items()}
        texts = [answers[i] for i in picked] + [truncate_words(answers[i], fraction) for i in picked]
        values = np.asarray(score([prompts[i] for i in picked] * 2, texts, cut), dtype=float)
    else:
        cut = {k: [v[i] for i in picked] for k, v in columns.items()}
        short = score([prompts[i] for i in picked], [truncate_words(answers[i], fraction) for i in picked], cut)
        values = np.asarray([scores[i] for i in picked] + list(short), dtype=float)
    full, short = values[: len(picked)], values[len(picked):]
    return float((full - short).mean() / max(values.std(), 1e-6))
