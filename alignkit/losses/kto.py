"""KTO: Kahneman-Tversky Optimization from unpaired desirable / undesirable completions.

Ethayarajh et al. 2024, arXiv:2402.01306, Sec. 4 (the KTO loss). With the implicit
reward r(x, y) = log pi(y|x) - log pi_ref(y|x) and the reference point
z0 = KL(pi(y'|x) || pi_ref(y'|x)) estimated on mismatched (x, y') pairs:

    v(x, y) = lambda_D * sigmoid(beta * (r - z0))   if y is desirable
              lambda_U * sigmoid(beta * (z0 - r))   if y is undesirable
    L = E[lambda_y - v(x, y)]

As in the paper (and TRL), z0 is the batch mean of r over mismatched pairs,
clamped at zero and detached: it sets the reference point and gets no gradient.
"""

from __future__ import annotations

import torch


def kto_kl_estimate(kl_logps: torch.Tensor, kl_ref_logps: torch.Tensor) -> torch.Tensor:
    """Batch mean log-ratio on mismatched (prompt, completion) pairs, detached: (B,), (B,) -> scalar.

    Not yet clamped: with several processes the recipe averages this over them
    first, then `kto_loss` clamps the result at zero.
    """
    return (kl_logps - kl_ref_logps).detach().mean()


def kto_loss(logps: torch.Tensor, ref_logps: torch.Tensor, labels: torch.Tensor, kl_estimate: torch.Tensor | float,
             beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
             num_items: torch.Tensor | float | None = None):
    """The KTO loss over B unpaired rows, and the metrics the recipe logs.

    Args:
        logps: (B,) summed log pi(y|x) of each completion under the policy.
        ref_logps: (B,) the same under the reference policy.
        labels: (B,) bool, True for desirable completions.
        kl_estimate: scalar z0 from `kto_kl_estimate` (averaged over processes); clamped >= 0 and detached here.
        beta: the value function's sharpness (TRL default 0.1).
        desirable_weight, undesirable_weight: lambda_D, lambda_U; the paper advises
            lambda_D * n_D / (lambda_U * n_U) in [1, 4/3] when the classes are unbalanced.
        num_items: the row count to divide the summed loss by (whole accumulated batch); defaults to B.

    Returns:
        loss (scalar), metrics: loss, rewards/chosen and rewards/rejected (mean beta * r
        over desirable / undesirable rows; nan if the batch has none), rewards/margin,
        rewards/accuracy (share of rows on their label's side of z0), logps/chosen,
        logps/rejected, kl/ref (mean r over desirable rows), kl/batch (z0).
    """
    labels = labels.bool()
    z0 = torch.as_tensor(kl_estimate, dtype=logps.dtype, device=logps.device).detach().clamp(min=0)
    logratios = logps - ref_logps  # (B,)
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (logratios - z0)))  # lambda_D - v(x, y)
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - logratios)))
    losses = torch.where(labels, desirable, undesirable)  # (B,)
    count = losses.shape[0] if num_items is None else num_items
    loss = losses.sum() / count

    rewards = beta * logratios.detach()  # (B,)
    chosen_rewards, rejected_rewards = _masked_mean(rewards, labels), _masked_mean(rewards, ~labels)
    metrics = {
        "loss": losses.detach().mean(),
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margin": chosen_rewards - rejected_rewards,
        "rewards/accuracy": ((logratios.detach() > z0) == labels).float().mean(),
        "logps/chosen": _masked_mean(logps.detach(), labels),
        "logps/rejected": _masked_mean(logps.detach(), ~labels),
        "kl/ref": _masked_mean(logratios.detach(), labels),
        "kl/batch": z0,
    }
    return loss, metrics


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` (B,) where `mask` (B,) is True; nan when nothing is selected."""
    count = mask.sum()
    return (values * mask).sum() / count if count > 0 else values.new_tensor(float("nan"))
