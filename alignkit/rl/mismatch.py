"""Training-inference mismatch: the sampler's log-probs against the trainer's, and the importance weights that correct for it.

vLLM samples with its own kernels (and often another precision), so the distribution it drew a
token from, pi_vllm, is not exactly the trainer's pi_old even with the same weights: the update
is then silently off-policy. With Delta = log pi_old(token) - log pi_vllm(token) per response token:

    mismatch/logp_abs_diff       mean |Delta|
    mismatch/logp_abs_diff_max   max |Delta|
    mismatch/kl                  KL(pi_vllm || pi_old) per token, k3 estimate from vLLM's samples:
                                 mean(exp(Delta) - 1 - Delta) >= 0
    mismatch/beyond_bound        share of tokens whose ratio exp(Delta) is outside [clip_min, clip_max]
    mismatch/is_ratio_{mean,min,max}

Correction (truncated importance sampling, as verl's TIS and TRL's `vllm_importance_sampling_*`):
the per-token loss is weighted by rho, computed per token or, in the `sequence_*` modes, once per
response from the summed Delta:

    token_truncate     rho_t = clamp(exp(Delta_t), clip_min, clip_max)
    token_mask         rho_t = exp(Delta_t), or 0 where it is outside [clip_min, clip_max]
    sequence_truncate  rho   = clamp(exp(sum_t Delta_t), clip_min, clip_max)
    sequence_mask      rho   = exp(sum_t Delta_t), or 0 outside the bounds

Every surrogate in `losses/policy.py` is linear in the advantage with a positive factor, so
weighting a token's loss by rho is weighting its advantage by rho (`rl/experience.py` does that).
"""

from __future__ import annotations

import torch

IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def _log_ratio(train_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Delta per token, 0 off the mask and where the sampler gave no number."""
    delta = (train_logps - sampler_logps) * mask
    return torch.nan_to_num(delta, nan=0.0, posinf=0.0, neginf=0.0)


def mismatch_metrics(train_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor,
                     clip_min: float = 0.0, clip_max: float = 3.0) -> dict:
    """The `mismatch/*` metrics over the masked tokens (all (N, T); `mask` 1 on response tokens)."""
    on = mask.bool()
    if not on.any():
        return {}
    delta = _log_ratio(train_logps.float(), sampler_logps.float(), mask.float())[on]
    ratio = delta.exp()
    outside = (ratio > clip_max) | (ratio < clip_min)
    return {"mismatch/logp_abs_diff": delta.abs().mean().item(), "mismatch/logp_abs_diff_max": delta.abs().max().item(),
            "mismatch/kl": (ratio - 1 - delta).mean().item(), "mismatch/beyond_bound": outside.float().mean().item(),
            "mismatch/is_ratio_mean": ratio.mean().item(), "mismatch/is_ratio_min": ratio.min().item(),
            "mismatch/is_ratio_max": ratio.max().item()}


def importance_weights(train_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor, mode: str = "token_truncate",
                       clip_min: float = 0.0, clip_max: float = 3.0) -> torch.Tensor:
    """rho per token (N, T), 0 off the mask; see the module docstring for the modes."""
    if mode not in IS_MODES:
        raise ValueError(f"vllm_importance_sampling_mode must be one of {', '.join(IS_MODES)}, not {mode!r}")
    mask = mask.float()
    delta = _log_ratio(train_logps.float(), sampler_logps.float(), mask)
    if mode.startswith("sequence"):
        delta = delta.sum(-1, keepdim=True).clamp(max=20.0)  # exp(20) is already far past any cap
    ratio = delta.exp()
    if mode.endswith("truncate"):
        ratio = ratio.clamp(min=clip_min, max=clip_max)
    else:
        ratio = ratio.masked_fill((ratio > clip_max) | (ratio < clip_min), 0.0)
    return ratio.expand_as(mask) * mask
