"""Supervised fine-tuning loss: mean negative log-likelihood of the completion tokens."""

from __future__ import annotations

import torch


def sft_loss(token_logps: torch.Tensor, loss_mask: torch.Tensor, num_items: torch.Tensor | None = None):
    """Token-level NLL averaged over every counted token in the (global) batch.

    Averaging over tokens, not over rows, keeps a long answer from being worth the
    same as a short one per token, and matches a bare `cross_entropy` over the
    flattened batch. `num_items` lets gradient accumulation divide by the token
    count of the whole accumulated batch, so 2 x b equals one batch of 2b.

    Args:
        token_logps: (B, T) log-probs of the target tokens (0 where not counted).
        loss_mask: (B, T) 1 for completion tokens.
        num_items: scalar, the token count to divide by; defaults to loss_mask.sum().

    Returns:
        loss, {"loss", "num_tokens"}
    """
    mask = loss_mask.to(token_logps.dtype)
    count = mask.sum() if num_items is None else num_items
    loss = -(token_logps * mask).sum() / count.clamp(min=1)
    return loss, {"loss": loss.detach(), "num_tokens": mask.sum().detach()}
