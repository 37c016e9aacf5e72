"""Held-out splits made with the seed, when the data gives none."""

from __future__ import annotations

import torch


def split_holdout(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded (train, held-out) split; at least one row each side when there are two or more."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]
