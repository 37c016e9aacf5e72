"""Reward-model loss and held-out metrics: Bradley-Terry on (chosen, rejected) score pairs.

The reward model r(x, y) is trained so that P(y_w > y_l | x) = sigmoid(r(x, y_w) - r(x, y_l))
(Bradley and Terry 1952; Ouyang et al. 2022, arXiv:2203.02155, Eq. 1). Every tensor
here is (B,): one entry per (prompt, chosen, rejected) pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | None = None,
                       center_rewards_coefficient: float = 0.0, label_smoothing: float = 0.0,
                       num_items: torch.Tensor | float | None = None):
    """-log sigmoid(r_c - r_r - m), with optional label smoothing and reward centering.

    - margin m (Llama 2, Touvron et al. 2023, arXiv:2307.09288, Eq. 2): a pair rated as
      clearly better must win by at least m before its loss flattens out.
    - label_smoothing eps: each label is taken as flipped with probability eps, so the
      per-pair loss is -(1 - eps) log sigmoid(z) - eps log sigmoid(-z); it stops pushing
      once sigmoid(z) reaches 1 - eps (robust to noisy labels, cf. conservative DPO).
    - center_rewards_coefficient c (Eisenstein et al. 2023, arXiv:2312.09244, Eq. 2):
      adds c * (r_c + r_r)^2 per pair, pulling rewards toward mean zero (BT alone
      leaves the offset free).

    Args:
        chosen_rewards: (B,) r(x, y_w).
        rejected_rewards: (B,) r(x, y_l).
        margin: (B,) per-pair margin m, or None (0).
        center_rewards_coefficient: c >= 0.
        label_smoothing: eps in [0, 0.5).
        num_items: the pair count the summed loss is divided by (the whole accumulated
            batch under gradient accumulation); defaults to B.

    Returns:
        loss (scalar), metrics {"loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"}
        (means over the B pairs, detached).
    """
    z = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        z = z - margin
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)  # (B,)
    if center_rewards_coefficient:
        losses = losses + center_rewards_coefficient * (chosen_rewards + rejected_rewards) ** 2
    count = losses.shape[0] if num_items is None else num_items
    loss = losses.sum() / count
    return loss, {"loss": losses.detach().mean(), **pair_metrics(chosen_rewards.detach(), rejected_rewards.detach())}


def pair_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict:
    """Means over (B,) pairs: rewards/chosen, rewards/rejected, rewards/margin (r_c - r_r), rewards/accuracy (r_c > r_r)."""
    margin = chosen_rewards.float() - rejected_rewards.float()
    return {
        "rewards/chosen": chosen_rewards.float().mean(),
        "rewards/rejected": rejected_rewards.float().mean(),
        "rewards/margin": margin.mean(),
        "rewards/accuracy": (margin > 0).float().mean(),
    }


def pairwise_calibration_error(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, num_bins: int = 10) -> torch.Tensor:
    """Expected calibration error of p = sigmoid(r_c - r_r), the model's P(chosen wins).

    Every pair counts in both orders, (p, outcome 1) and (1 - p, outcome 0): the
    result does not depend on whether one reads the model as predicting "chosen wins"
    or "rejected wins" (scoring only the first, where the outcome is always 1, would
    measure confidence, not calibration). Bins are `num_bins` equal-width intervals of [0, 1];
    ECE = sum_b (n_b / n) |mean p in b - fraction of outcomes 1 in b| (Guo et al. 2017,
    arXiv:1706.04599, Eq. 3). With 10 bins this equals the top-label ECE over the
    confidence max(p, 1 - p) in bins [0.5, 0.6), ..., [0.9, 1.0].

    Args:
        chosen_rewards, rejected_rewards: (B,).

    Returns:
        scalar in [0, 1].
    """
    p = torch.sigmoid(chosen_rewards.double() - rejected_rewards.double())  # (B,)
    probs = torch.cat([p, 1 - p])  # (2B,)
    outcomes = torch.cat([torch.ones_like(p), torch.zeros_like(p)])  # (2B,)
    bins = (probs * num_bins).long().clamp(max=num_bins - 1)  # (2B,)
    ece = probs.new_zeros(())
    for b in bins.unique():
        inside = bins == b
        ece += inside.double().mean() * (probs[inside].mean() - outcomes[inside].mean()).abs()
    return ece.float()


def accuracy_by_strength(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, strength: torch.Tensor,
                         max_groups: int = 10, quantiles: int = 4) -> dict[str, tuple[float, int]]:
    """Accuracy (r_c > r_r) per preference-strength group: {label: (accuracy, pair count)}.

    Groups are the distinct strength values when there are at most `max_groups` of
    them, else `quantiles` equal-count bins labelled by their value range.

    Args:
        chosen_rewards, rejected_rewards, strength: (B,).
    """
    correct = (chosen_rewards.float() > rejected_rewards.float()).float()  # (B,)
    values = strength.float().unique()
    if len(values) <= max_groups:
        groups = {f"{v:g}": strength.float() == v for v in values.tolist()}
    else:
        edges = torch.quantile(strength.float(), torch.linspace(0, 1, quantiles + 1))
        groups = {}
        for i in range(quantiles):
            low, high = edges[i].item(), edges[i + 1].item()
            inside = (strength >= low) & ((strength < high) if i < quantiles - 1 else (strength <= high))
            if inside.any():
                groups[f"{low:g}-{high:g}"] = inside
    return {label: (correct[inside].mean().item(), int(inside.sum())) for label, inside in groups.items()}
