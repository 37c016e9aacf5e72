"""Win rate of a policy against a reference, with bootstrap confidence intervals. Pure functions.

A comparison on one prompt has an outcome for the policy: 1 (win), 0.5 (tie) or 0 (loss).
The win rate is the mean outcome, so a tie counts half a win (the convention of
AlpacaEval and of Chatbot Arena's "win rate with ties"). Outcomes come from

- two scores per prompt (a reward model, an ensemble's mean, a Python gold function):
  `outcomes_from_scores`, ties when the scores differ by at most `tie_margin`;
- a pairwise judge that saw each pair in both orders: `outcomes_from_judge`. The
  probability that the policy's answer is better is averaged over the two orders, which
  cancels a constant position bias: a judge that always picks the first slot gives
  P = 1 in one order and 0 in the other, hence exactly 0.5, a tie.

The confidence interval is the percentile bootstrap over prompts (Efron & Tibshirani
1993, ch. 13): resample the N outcomes with replacement B times and take the
(alpha/2, 1 - alpha/2) quantiles of the resampled means.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

WIN, TIE, LOSS = 1.0, 0.5, 0.0


@dataclass
class WinRate:
    rate: float  # mean outcome, ties counting 0.5
    low: float  # bootstrap CI bounds
    high: float
    wins: int
    ties: int
    losses: int
    n: int
    confidence: float = 0.95

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{100 * self.rate:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}] "
                f"({self.wins}W/{self.ties}T/{self.losses}L of {self.n})")


def outcomes_from_scores(policy: Sequence[float], reference: Sequence[float], tie_margin: float = 0.0) -> np.ndarray:
    """(N,) outcomes: 1 where policy - reference > tie_margin, 0 where < -tie_margin, else 0.5."""
    policy, reference = np.asarray(policy, dtype=float), np.asarray(reference, dtype=float)
    if policy.shape != reference.shape:
        raise ValueError(f"got {policy.shape[0]} policy scores and {reference.shape[0]} reference scores; one each per prompt")
    diff = policy - reference
    return np.where(diff > tie_margin, WIN, np.where(diff < -tie_margin, LOSS, TIE))


def outcomes_from_judge(p_policy_first: Sequence[float], p_policy_second: Sequence[float], tie_margin: float = 0.05) -> np.ndarray:
    """(N,) outcomes from a judge that saw each pair twice.

    Args:
        p_policy_first: (N,) P(policy's answer is better) when it was shown in slot A.
        p_policy_second: (N,) the same probability when it was shown in slot B.
        tie_margin: |mean P - 0.5| at or below this is a tie.
    """
    p = (np.asarray(p_policy_first, dtype=float) + np.asarray(p_policy_second, dtype=float)) / 2  # (N,)
    return outcomes_from_scores(p, np.full_like(p, 0.5), tie_margin)


def bootstrap_ci(values: Sequence[float], statistic: Callable[[np.ndarray], float] = np.mean, confidence: float = 0.95,
                 n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over the first axis of `values` (resampling rows)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(values), size=(n_resamples, len(values)))  # (B, N)
    if statistic is np.mean:  # vectorised fast path
        stats = values[index].mean(axis=1)
    else:
        stats = np.array([statistic(values[row]) for row in index])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def win_rate(outcomes: Sequence[float], confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> WinRate:
    """The mean outcome and its bootstrap interval."""
    outcomes = np.asarray(outcomes, dtype=float)
    low, high = bootstrap_ci(outcomes, np.mean, confidence, n_resamples, seed)
    return WinRate(rate=float(outcomes.mean()) if len(outcomes) else float("nan"), low=low, high=high,
                   wins=int((outcomes == WIN).sum()), ties=int((outcomes == TIE).sum()), losses=int((outcomes == LOSS).sum()),
                   n=len(outcomes), confidence=confidence)


def mean_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> dict:
    """{"mean", "low", "high"} of a per-prompt quantity (gold reward, length, ...)."""
    values = np.asarray(values, dtype=float)
    low, high = bootstrap_ci(values, np.mean, confidence, n_resamples, seed)
    return {"mean": float(values.mean()) if len(values) else float("nan"), "low": low, "high": high}
