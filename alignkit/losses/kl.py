"""Per-token estimators of KL(pi || pi_ref) from samples of pi.

Schulman (2020), "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html).
With samples y_t ~ pi and log r = log pi_ref(y_t) - log pi(y_t):

    k1 = -log r                   unbiased, high variance, can be negative per token
    k2 = (log r)^2 / 2            biased, low variance, always >= 0
    k3 = (r - 1) - log r          unbiased, low variance, always >= 0

PPO-style RLHF (Ziegler et al. 2019) subtracts beta * k1 from the per-token reward;
GRPO (Shao et al. 2024, eq. 4) adds beta * k3 to the loss, where its gradient flows
through log pi.
"""

from __future__ import annotations

import torch


def kl_k1(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log pi_ref. Args: logps, ref_logps (B, T). Returns (B, T)."""
    return logps - ref_logps


def kl_k2(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k2 = (log pi - log pi_ref)^2 / 2. Args: logps, ref_logps (B, T). Returns (B, T)."""
    return 0.5 * (logps - ref_logps) ** 2


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k3 = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1. Args: (B, T). Returns (B, T).

    The log-ratio is clamped to [-20, 20] before exp so a far-off token cannot overflow.
    """
    log_ratio = (ref_logps - logps).clamp(-20.0, 20.0)
    return torch.exp(log_ratio) - log_ratio - 1.0


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_per_token(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """The chosen estimator at each counted token, 0 elsewhere.

    Args:
        logps: (B, T) log pi of the sampled tokens.
        ref_logps: (B, T) log pi_ref of the same tokens.
        mask: (B, T) 1 where the token is part of a response.
        estimator: "k1", "k2" or "k3".

    Returns:
        (B, T) per-token KL estimates, zero where mask is 0.
    """
    return KL_ESTIMATORS[estimator](logps, ref_logps) * mask.to(logps.dtype)
