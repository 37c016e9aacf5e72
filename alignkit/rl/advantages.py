"""Advantage estimators: GAE for PPO, and the critic-free baselines (REINFORCE, RLOO, GRPO).

Every estimator maps the same inputs (`AdvantageInputs`) to per-token advantages and
returns, and is picked by name from `ESTIMATORS`; adding one is a function and a line.

Conventions (as in OpenRLHF and TRL):
- A response gets its scalar score at its last token; with the KL penalty in the
  reward (PPO style, Ziegler et al. 2019) every token also gets -beta * kl_t.
- gae: GAE(gamma, lambda) over those per-token rewards with a learned value
  (Schulman et al. 2016, eq. 16).
- The critic-free estimators first replace the score by score - baseline, then take
  the return-to-go of the per-token rewards (gamma = 1: the same advantage for every
  token when the KL penalty sits in the loss):
    reinforce           no baseline (Williams 1992).
    reinforce_baseline  baseline = mean score of the whole batch (a simple, unbiased-
                        enough baseline; a per-prompt mean is what `rloo` improves on).
    rloo                baseline = mean of the other G-1 samples of the same prompt
                        (Kool et al. 2019; Ahmadian et al. 2024).
    grpo                (r - mean_group) / (std_group + 1e-4) (Shao et al. 2024, eq. 3;
                        std with Bessel's correction as TRL); scale_rewards=False drops
                        the division (Dr. GRPO, Liu et al. 2025).
    reinforce_pp        REINFORCE++ (Hu 2025): no baseline, the KL penalty in the per-token
                        rewards, then the advantages normalised over the whole batch's tokens
                        (global, not per group), whatever `whiten_advantages` says.
    reinforce_pp_baseline  REINFORCE++-baseline: the group mean subtracted first (no division by
                        the group std), then the same global normalisation.
Samples marked invalid (reward skipped, response masked out) get advantage 0 and are
left out of every baseline and statistic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GRPO_EPS = 1e-4


@dataclass
class AdvantageInputs:
    """Shapes: N responses (N = prompts x G, grouped contiguously), T token positions."""

    scores: torch.Tensor  # (N,) reward of each response
    mask: torch.Tensor  # (N, T) 1 for response tokens
    valid: torch.Tensor | None = None  # (N,) bool, False = leave this response out
    kl: torch.Tensor | None = None  # (N, T) per-token KL estimate, for the PPO-style penalty
    kl_coef: float = 0.0  # beta of that penalty (0 when the KL term is in the loss)
    values: torch.Tensor | None = None  # (N, T) V(s_t) at response tokens, for gae
    group_size: int = 1
    gamma: float = 1.0
    lam: float = 0.95
    scale_rewards: bool = True  # grpo: divide by the group std


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16).

        delta_t = r_t + gamma * V_{t+1} - V_t,    A_t = sum_l (gamma * lam)^l delta_{t+l}

    The value after a response's last token is 0 (the episode ends).

    Args:
        rewards: (N, T) per-token rewards.
        values: (N, T) value estimates.
        mask: (N, T) 1 for response tokens; each row's ones are contiguous.
        gamma, lam: discount and GAE lambda.

    Returns:
        advantages (N, T), returns (N, T) = advantages + values, both 0 off the mask.
    """
    mask = mask.to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    columns = mask.any(0).nonzero().flatten()
    if len(columns) == 0:
        return advantages, advantages.clone()
    next_value = torch.zeros_like(rewards[:, 0])
    running = torch.zeros_like(rewards[:, 0])
    for t in range(int(columns[-1]), int(columns[0]) - 1, -1):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * m
        next_value = values[:, t] * m
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(values - mean) / std over the masked entries (N, T); 0 off the mask. shift_mean=False keeps the mean."""
    mask = mask.to(values.dtype)
    count = mask.sum().clamp(min=1)
    mean = (values * mask).sum() / count
    var = (((values - mean) * mask) ** 2).sum() / (count - 1).clamp(min=1)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def token_rewards(scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None, kl_coef: float = 0.0) -> torch.Tensor:
    """Per-token rewards (N, T): -kl_coef * kl_t at every response token, plus the score (N,) at the last one."""
    mask = mask.to(scores.dtype)
    rewards = -kl_coef * kl * mask if kl is not None and kl_coef else torch.zeros_like(mask)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, -1).max(-1).values  # (N,) column of each last token
    has_tokens = last >= 0
    rows = torch.arange(len(scores), device=mask.device)[has_tokens]
    return rewards.index_put((rows, last[has_tokens]), scores[has_tokens].to(rewards.dtype), accumulate=True)


def _valid(inputs: AdvantageInputs) -> torch.Tensor:
    return torch.ones_like(inputs.scores, dtype=torch.bool) if inputs.valid is None else inputs.valid.bool()


def _grouped(inputs: AdvantageInputs):
    """Scores and validity as (N/G, G), and the valid count per group (N/G, 1)."""
    g = inputs.group_size
    valid = _valid(inputs)
    scores = torch.where(valid, inputs.scores, torch.zeros_like(inputs.scores)).view(-1, g)  # (P, G)
    v = valid.to(scores.dtype).view(-1, g)  # (P, G)
    return scores, v, v.sum(-1, keepdim=True)


def no_baseline(inputs: AdvantageInputs) -> torch.Tensor:
    return inputs.scores


def batch_mean_baseline(inputs: AdvantageInputs) -> torch.Tensor:
    valid = _valid(inputs)
    return inputs.scores - inputs.scores[valid].mean() if valid.any() else inputs.scores


def leave_one_out_baseline(inputs: AdvantageInputs) -> torch.Tensor:
    scores, v, n = _grouped(inputs)
    others = ((scores * v).sum(-1, keepdim=True) - scores) / (n - 1).clamp(min=1)  # (P, G)
    shaped = torch.where(n > 1, scores - others, torch.zeros_like(scores))  # a lone sample has no baseline
    return shaped.flatten()


def group_mean_baseline(inputs: AdvantageInputs) -> torch.Tensor:
    scores, v, n = _grouped(inputs)
    mean = (scores * v).sum(-1, keepdim=True) / n.clamp(min=1)
    return torch.where(n > 1, scores - mean, torch.zeros_like(scores)).flatten()


def group_normalised(inputs: AdvantageInputs) -> torch.Tensor:
    scores, v, n = _grouped(inputs)
    mean = (scores * v).sum(-1, keepdim=True) / n.clamp(min=1)
    shaped = scores - mean
    if inputs.scale_rewards:
        std = torch.sqrt(((shaped * v) ** 2).sum(-1, keepdim=True) / (n - 1).clamp(min=1))
        shaped = shaped / (std + GRPO_EPS)
    return torch.where(n > 1, shaped, torch.zeros_like(shaped)).flatten()


def _critic_free(baseline):
    def estimator(inputs: AdvantageInputs):
        shaped = torch.where(_valid(inputs), baseline(inputs), torch.zeros_like(inputs.scores))
        rewards = token_rewards(shaped, inputs.mask, inputs.kl, inputs.kl_coef)
        advantages, _ = gae_advantages(rewards, torch.zeros_like(rewards), inputs.mask, inputs.gamma, lam=1.0)
        return advantages, advantages
    estimator.__doc__ = f"Return-to-go of per-token rewards whose score is shaped by `{baseline.__name__}`."
    return estimator


def _globally_normalised(baseline):
    critic_free = _critic_free(baseline)

    def estimator(inputs: AdvantageInputs):
        advantages, returns = critic_free(inputs)
        mask = inputs.mask * _valid(inputs)[:, None].to(inputs.mask.dtype)
        return whiten(advantages, mask), returns  # over every valid token of the batch (Hu 2025, sec. 3)
    estimator.__doc__ = f"REINFORCE++: `{baseline.__name__}`-shaped returns, normalised over the whole batch."
    return estimator


def gae_estimator(inputs: AdvantageInputs):
    if inputs.values is None:
        raise ValueError("the gae estimator needs values; configure a value model")
    scores = torch.where(_valid(inputs), inputs.scores, torch.zeros_like(inputs.scores))
    rewards = token_rewards(scores, inputs.mask, inputs.kl, inputs.kl_coef)
    return gae_advantages(rewards, inputs.values, inputs.mask, inputs.gamma, inputs.lam)


ESTIMATORS = {
    "gae": gae_estimator,
    "reinforce": _critic_free(no_baseline),
    "reinforce_baseline": _critic_free(batch_mean_baseline),
    "rloo": _critic_free(leave_one_out_baseline),
    "grpo": _critic_free(group_normalised),
    "reinforce_pp": _globally_normalised(no_baseline),
    "reinforce_pp_baseline": _globally_normalised(group_mean_baseline),
}
NEEDS_VALUES = {"gae"}
NEEDS_GROUPS = {"rloo", "grpo", "reinforce_pp_baseline"}


def compute_advantages(estimator: str, inputs: AdvantageInputs, whiten_advantages: bool = False):
    """(advantages (N, T), returns (N, T)) by `ESTIMATORS[estimator]`, whitened over valid tokens if asked."""
    if len(inputs.scores) % inputs.group_size:
        raise ValueError(f"{len(inputs.scores)} responses do not split into groups of {inputs.group_size}")
    advantages, returns = ESTIMATORS[estimator](inputs)
    if whiten_advantages:
        mask = inputs.mask * _valid(inputs)[:, None].to(inputs.mask.dtype)
        advantages = whiten(advantages, mask)
    return advantages, returns
