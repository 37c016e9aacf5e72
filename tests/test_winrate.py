"""Win rate, ties, the both-orders judge and bootstrap intervals on cases whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignkit.evaluate.winrate import bootstrap_ci, mean_ci, outcomes_from_judge, outcomes_from_scores, win_rate


def test_outcomes_from_scores_with_and_without_a_tie_margin():
    policy, reference = [3.0, 1.0, 2.0, 2.05], [1.0, 2.0, 2.0, 2.0]
    assert outcomes_from_scores(policy, reference).tolist() == [1.0, 0.0, 0.5, 1.0]
    assert outcomes_from_scores(policy, reference, tie_margin=0.1).tolist() == [1.0, 0.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="one each per prompt"):
        outcomes_from_scores([1.0], [1.0, 2.0])


def test_win_rate_counts_a_tie_as_half():
    result = win_rate([1, 1, 1, 0.5, 0])  # (3 + 0.5) / 5
    assert result.rate == pytest.approx(0.7)
    assert (result.wins, result.ties, result.losses, result.n) == (3, 1, 1, 5)


def test_unanimous_results_have_a_degenerate_interval():
    assert (win_rate([1.0] * 50).low, win_rate([1.0] * 50).high) == (1.0, 1.0)
    assert (win_rate([0.0] * 50).low, win_rate([0.0] * 50).high) == (0.0, 0.0)


def test_bootstrap_interval_matches_the_binomial_normal_approximation():
    """400 outcomes, half wins: the 95% interval is 0.5 +- 1.96 * sqrt(0.25 / 400) = [0.451, 0.549]."""
    result = win_rate([1.0, 0.0] * 200, n_resamples=4000)
    half_width = 1.96 * math.sqrt(0.25 / 400)
    assert result.rate == 0.5
    assert result.low == pytest.approx(0.5 - half_width, abs=0.006)
    assert result.high == pytest.approx(0.5 + half_width, abs=0.006)


def test_interval_narrows_as_one_over_root_n_and_widens_with_confidence():
    small, large = win_rate([1.0, 0.0] * 25), win_rate([1.0, 0.0] * 400)
    ratio = (small.high - small.low) / (large.high - large.low)
    assert ratio == pytest.approx(4.0, rel=0.15)  # 16x the data, 1/4 the width
    narrow, wide = win_rate([1.0, 0.0] * 100, confidence=0.5), win_rate([1.0, 0.0] * 100, confidence=0.99)
    assert wide.high - wide.low > 2 * (narrow.high - narrow.low)


def test_bootstrap_is_seeded_and_takes_any_statistic():
    values = np.arange(20, dtype=float)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    low, high = bootstrap_ci(values, statistic=np.median)
    assert low <= np.median(values) <= high
    assert mean_ci([2.0, 2.0, 2.0]) == {"mean": 2.0, "low": 2.0, "high": 2.0}


def test_a_judge_that_always_prefers_the_first_answer_comes_out_at_fifty_percent():
    """Shown first, the policy gets P = 1; shown second, P = 0: averaged over both orders, every pair is a tie."""
    from alignkit.feedback.judge import judge_pairs

    class FirstSlotJudge:
        def first_slot_probs(self, conversations):
            return [1.0] * len(conversations), [1.0] * len(conversations)

    items = [(f"q{i}", f"policy answer {i}", f"reference answer {i}") for i in range(30)]
    verdicts = judge_pairs(FirstSlotJudge(), "Be helpful.", items)
    outcomes = outcomes_from_judge([v.p_x_first for v in verdicts], [v.p_x_second for v in verdicts])
    result = win_rate(outcomes)
    assert result.rate == 0.5 and result.ties == 30 and (result.low, result.high) == (0.5, 0.5)


def test_judge_outcomes_follow_the_order_averaged_probability():
    """A judge with a constant +0.2 bias toward slot A still ranks pairs right once both orders are averaged."""
    true_p = np.array([0.9, 0.7, 0.5, 0.3, 0.1])  # P(policy better), unbiased
    first = np.clip(true_p + 0.2, 0, 1)  # policy in slot A
    second = np.clip(true_p - 0.2, 0, 1)  # policy in slot B: the bias helps the reference
    assert outcomes_from_judge(first, second).tolist() == [1.0, 1.0, 0.5, 0.0, 0.0]
    assert win_rate(outcomes_from_judge(first, second)).rate == pytest.approx(0.5)
