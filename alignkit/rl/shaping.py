"""Reward shaping from a response's length and ending, applied to the scores before advantages.

DAPO's overlong reward shaping (Yu et al. 2025, "DAPO", eq. 13), with L_max = max_new_tokens and
L_cache = `buffer`:

    R_length(y) = 0                                 if |y| <= L_max - L_cache
                = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
                = -1                                if |y| > L_max

A response cut at max_new_tokens therefore loses up to the whole penalty, and one that merely
runs long loses a share, instead of the cliff a fixed missing-EOS penalty puts at the limit.
Generation never exceeds L_max here, so the last branch only guards other callers.
"""

from __future__ import annotations

import torch


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer: int) -> torch.Tensor:
    """R_length (N,) in [-1, 0] for response lengths (N,) in tokens; 0 everywhere when `buffer` is 0."""
    lengths = lengths.to(torch.float32)
    if buffer <= 0:
        return torch.zeros_like(lengths)
    start = max_new_tokens - buffer
    soft = (start - lengths) / buffer  # (N,) negative past `start`
    return torch.where(lengths <= start, torch.zeros_like(lengths), torch.where(lengths <= max_new_tokens, soft, -torch.ones_like(lengths)))
