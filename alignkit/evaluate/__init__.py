"""Evaluation: win rates with confidence intervals, answer metrics, training monitors, distribution shift, the run report."""
