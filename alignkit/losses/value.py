"""Clipped value loss for PPO's critic.

The value function is regressed on the GAE returns; as in OpenAI baselines' PPO2
(and CleanRL's `ppo.py`), the new prediction is also clipped to within `clip_range`
of the prediction made at rollout time and the larger of the two squared errors is
taken, so one update cannot move the value estimate far:

    L_V = 1/2 * max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)
"""

from __future__ import annotations

import torch

from alignkit.losses.policy import aggregate_tokens


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip_range: float = 0.2, num_tokens: torch.Tensor | float | None = None):
    """Token-mean clipped value loss.

    Args:
        values: (B, T) current value predictions.
        old_values: (B, T) predictions at rollout time.
        returns: (B, T) regression targets (advantages + old values).
        mask: (B, T) 1 for response tokens.
        clip_range: how far V may move from V_old; 0 or less disables clipping.
        num_tokens: the token count to divide by (the whole minibatch's, under accumulation).

    Returns:
        loss, {"value/loss", "value/clipfrac"}
    """
    mask = mask.to(values.dtype)
    unclipped = (values - returns) ** 2
    if clip_range > 0:
        clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
        clipped = (clipped_values - returns) ** 2
        per_token = 0.5 * torch.maximum(unclipped, clipped)
        clipfrac = ((clipped > unclipped).to(values.dtype) * mask).sum() / mask.sum().clamp(min=1)
    else:
        per_token = 0.5 * unclipped
        clipfrac = values.new_zeros(())
    loss = aggregate_tokens(per_token, mask, "token_mean", num_tokens=num_tokens)
    return loss, {"value/loss": loss.detach(), "value/clipfrac": clipfrac.detach()}
