"""Policy-gradient surrogates: PPO-clip, the plain REINFORCE surrogate and GSPO's sequence-level clip.

PPO-clip (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7),
per token with rho = pi(y_t) / pi_old(y_t):

    L_clip = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)

`eps_high` defaults to `eps_low`; a larger one is DAPO's "clip-higher" (Yu et al. 2025).

REINFORCE (Williams 1992): L = -A * log pi(y_t). At rho = 1 (the first pass over a
fresh rollout) both surrogates have the same gradient, -A * grad log pi.

GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", eq. 5-7): one importance ratio
per response, the geometric mean of its token ratios,
s_i = exp(mean_t log(pi(y_t) / pi_old(y_t))), clipped like PPO's and applied to every token of
the response, so a response is kept or clipped whole instead of token by token.

How per-token losses become one number is a choice that changed between papers, so
it is a table (`AGGREGATIONS`):
- token_mean: sum over every counted token / number of tokens (PPO in RLHF, DAPO).
- sequence_mean: mean over each response's tokens, then mean over responses
  (GRPO, Shao et al. 2024, eq. 3); long responses weigh less per token.
- constant: sum / (responses x max_new_tokens) (Dr. GRPO, Liu et al. 2025), free of
  the length bias of sequence_mean.
Denominators can be passed in so that gradient accumulation over micro-batches sums
to exactly the loss of the whole minibatch.
"""

from __future__ import annotations

import torch


def _token_mean(values, mask, num_tokens=None, num_sequences=None, max_tokens=None):
    count = mask.sum() if num_tokens is None else num_tokens
    return (values * mask).sum() / _clamp(count)


def _sequence_mean(values, mask, num_tokens=None, num_sequences=None, max_tokens=None):
    lengths = mask.sum(-1)  # (B,)
    per_sequence = (values * mask).sum(-1) / lengths.clamp(min=1)  # (B,)
    count = (lengths > 0).sum() if num_sequences is None else num_sequences
    return per_sequence.sum() / _clamp(count)


def _constant(values, mask, num_tokens=None, num_sequences=None, max_tokens=None):
    count = (mask.sum(-1) > 0).sum() if num_sequences is None else num_sequences
    width = mask.shape[-1] if max_tokens is None else max_tokens
    return (values * mask).sum() / _clamp(count * width)


def _clamp(count):
    return count.clamp(min=1) if isinstance(count, torch.Tensor) else max(count, 1)


AGGREGATIONS = {"token_mean": _token_mean, "sequence_mean": _sequence_mean, "constant": _constant}


def aggregate_tokens(values: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean", num_tokens=None,
                     num_sequences=None, max_tokens=None) -> torch.Tensor:
    """One scalar from per-token values (B, T) under `mask` (B, T), as `AGGREGATIONS[mode]` defines it.

    num_tokens / num_sequences: the whole minibatch's counts when this is one micro-batch of it.
    max_tokens: the constant length of the `constant` mode (max_new_tokens).
    """
    return AGGREGATIONS[mode](values, mask.to(values.dtype), num_tokens, num_sequences, max_tokens)


def _broadcast(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return advantages[:, None].expand_as(like) if advantages.dim() == 1 else advantages


def _ratio_metrics(log_ratio: torch.Tensor, mask: torch.Tensor) -> dict:
    """approx_kl = mean of (rho - 1) - log rho over tokens: KL(pi_old || pi) by the k3 estimator."""
    count = mask.sum().clamp(min=1)
    approx_kl = (((log_ratio.exp() - 1) - log_ratio) * mask).sum() / count
    return {"policy/approx_kl": approx_kl.detach(), "policy/ratio": ((log_ratio.exp() * mask).sum() / count).detach()}


def _clipped_surrogate(ratio, log_ratio, advantages, mask, low, high, aggregation, num_tokens, num_sequences, max_tokens):
    """-min(rho * A, clip(rho, 1 - low, 1 + high) * A) per token (B, T), aggregated; with clipfrac and the ratio metrics."""
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - low, 1.0 + high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    loss = aggregate_tokens(per_token, mask, aggregation, num_tokens, num_sequences, max_tokens)
    clipfrac = ((clipped < unclipped).to(ratio.dtype) * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"policy/loss": loss.detach(), "policy/clipfrac": clipfrac.detach(), **_ratio_metrics(log_ratio.detach(), mask)}


def ppo_clip_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  clip_range: float = 0.2, clip_range_high: float | None = None, aggregation: str = "token_mean",
                  num_tokens=None, num_sequences=None, max_tokens=None):
    """PPO clipped surrogate, to be minimised.

    Args:
        logps: (B, T) log pi(y_t) under the policy being trained (carries the gradient).
        old_logps: (B, T) log pi_old(y_t) at rollout time.
        advantages: (B, T) per-token advantages, or (B,) one per response.
        mask: (B, T) 1 for response tokens that count.
        clip_range, clip_range_high: eps_low and eps_high (eps_high None = eps_low).
        aggregation, num_tokens, num_sequences, max_tokens: see `aggregate_tokens`.

    Returns:
        loss, {"policy/loss", "policy/approx_kl", "policy/clipfrac", "policy/ratio"}.
        clipfrac is the share of tokens whose clipped term won the min, i.e. whose
        gradient clipping switched off.
    """
    mask = mask.to(logps.dtype)
    advantages = _broadcast(advantages, logps)
    high = clip_range if clip_range_high is None else clip_range_high
    log_ratio = (logps - old_logps).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    return _clipped_surrogate(ratio, log_ratio, advantages, mask, clip_range, high, aggregation, num_tokens, num_sequences, max_tokens)


def reinforce_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                   clip_range: float = 0.2, clip_range_high: float | None = None, aggregation: str = "token_mean",
                   num_tokens=None, num_sequences=None, max_tokens=None):
    """REINFORCE surrogate -A * log pi(y_t), to be minimised (clip arguments are ignored).

    Args and returns as `ppo_clip_loss` (clipfrac is always 0).
    """
    mask = mask.to(logps.dtype)
    per_token = -_broadcast(advantages, logps) * logps
    loss = aggregate_tokens(per_token, mask, aggregation, num_tokens, num_sequences, max_tokens)
    log_ratio = (logps - old_logps).detach().clamp(-20.0, 20.0)
    return loss, {"policy/loss": loss.detach(), "policy/clipfrac": logps.new_zeros(()), **_ratio_metrics(log_ratio, mask)}


def gspo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip_range: float = 0.2, clip_range_high: float | None = None, aggregation: str = "sequence_mean",
              num_tokens=None, num_sequences=None, max_tokens=None):
    """GSPO's sequence-level clipped surrogate, to be minimised (Zheng et al. 2025, eq. 5-7).

    Args as `ppo_clip_loss`; `aggregation` defaults to sequence_mean, the paper's 1/G sum over
    responses of their token means. The paper's clip ranges are far smaller than PPO's (3e-4 and
    4e-4): a sequence ratio moves much less than a token's. Per response i with its token mean
    `lbar_i = mean_t (log pi - log pi_old)` over the mask, s_i = exp(lbar_i), and every token of i
    gets -min(s_i * A, clip(s_i, 1 - eps_low, 1 + eps_high) * A). The gradient of s_i reaches every
    token's log pi through the mean, as in the paper's eq. 10.

    Returns:
        loss, {"policy/loss", "policy/approx_kl", "policy/clipfrac", "policy/ratio"}; clipfrac is
        the share of response tokens whose response was clipped.
    """
    mask = mask.to(logps.dtype)
    advantages = _broadcast(advantages, logps)
    high = clip_range if clip_range_high is None else clip_range_high
    log_ratio = (logps - old_logps).clamp(-20.0, 20.0)  # (B, T)
    lengths = mask.sum(-1).clamp(min=1)  # (B,)
    sequence_log_ratio = (log_ratio * mask).sum(-1) / lengths  # (B,)
    ratio = sequence_log_ratio.exp()[:, None].expand_as(logps)  # (B, T): s_i at every token of response i
    return _clipped_surrogate(ratio, log_ratio, advantages, mask, clip_range, high, aggregation, num_tokens, num_sequences, max_tokens)


POLICY_LOSSES = {"ppo_clip": ppo_clip_loss, "reinforce": reinforce_loss, "gspo": gspo_loss}
