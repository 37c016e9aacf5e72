"""Pairwise preference losses: DPO (sigmoid, conservative), IPO, hinge (SLiC), robust DPO, SimPO, ORPO.

Every loss reads the same `PairLogps` (sequence log-probs of the chosen and
rejected completions under the policy, and under the reference when the loss
has one) and returns per-pair losses and implicit rewards, all (B,). A variant
is a function plus one line in `PREFERENCE_LOSSES`; `preference_loss` picks it,
averages, and names the metrics the recipes log.

Notation: h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)),
the difference of chosen and rejected log-ratios; |y| is a completion's token count.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F


class PairLogps(NamedTuple):
    """Sequence log-probs of B (prompt, chosen, rejected) pairs.

    chosen, rejected: (B,) summed log pi(y | x) of the completions under the policy.
    ref_chosen, ref_rejected: (B,) the same under the reference policy, or None (reference-free losses).
    chosen_lengths, rejected_lengths: (B,) completion token counts |y| (float).
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor | None
    ref_rejected: torch.Tensor | None
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor

    @property
    def chosen_logratios(self) -> torch.Tensor:
        """(B,) log pi(y_w|x) - log pi_ref(y_w|x)."""
        return self.chosen - self.ref_chosen

    @property
    def rejected_logratios(self) -> torch.Tensor:
        """(B,) log pi(y_l|x) - log pi_ref(y_l|x)."""
        return self.rejected - self.ref_rejected

    @property
    def chosen_average(self) -> torch.Tensor:
        """(B,) per-token mean log-prob of the chosen completion."""
        return self.chosen / self.chosen_lengths.clamp(min=1)

    @property
    def rejected_average(self) -> torch.Tensor:
        """(B,) per-token mean log-prob of the rejected completion."""
        return self.rejected / self.rejected_lengths.clamp(min=1)


def _reference_rewards(logps: PairLogps, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO's implicit rewards beta * log(pi / pi_ref), detached: (B,), (B,)."""
    return beta * logps.chosen_logratios.detach(), beta * logps.rejected_logratios.detach()


def dpo_sigmoid_loss(logps: PairLogps, beta: float, label_smoothing: float = 0.0):
    """DPO: -log sigmoid(beta * h) (Rafailov et al. 2023, arXiv:2305.18290, Eq. 7).

    With label_smoothing = eps > 0 this is conservative DPO (Mitchell 2023, "A note on
    DPO with noisy preferences"): each label is taken as flipped with probability eps,
    -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h), which stops pushing the
    margin once sigmoid(beta h) reaches 1 - eps.

    Returns: losses (B,), chosen_rewards (B,), rejected_rewards (B,).
    """
    logits = beta * (logps.chosen_logratios - logps.rejected_logratios)  # (B,)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return (losses, *_reference_rewards(logps, beta))


def ipo_loss(logps: PairLogps, beta: float):
    """IPO: (h_avg - 1 / (2 beta))^2 (Azar et al. 2023, arXiv:2310.12036, Eq. 17, tau = beta).

    As in TRL, h uses length-averaged log-ratios (each log-ratio divided by its
    completion's token count), which the IPO authors confirmed is what their
    results use; the summed form makes the squared loss grow with length.

    Returns: losses (B,), chosen_rewards (B,), rejected_rewards (B,) (rewards are beta * summed log-ratios).
    """
    h = logps.chosen_logratios / logps.chosen_lengths.clamp(min=1) - logps.rejected_logratios / logps.rejected_lengths.clamp(min=1)
    losses = (h - 1 / (2 * beta)) ** 2
    return (losses, *_reference_rewards(logps, beta))


def hinge_loss(logps: PairLogps, beta: float):
    """Hinge: max(0, 1 - beta * h).

    SLiC-HF's rank-calibration loss (Zhao et al. 2023, arXiv:2305.10425, Sec. 2) on
    reference log-ratios, as in RSO (Liu et al. 2023, arXiv:2309.06657, Sec. 3): the
    margin is 1/beta in log-ratio units, and pairs past it get no gradient.

    Returns: losses (B,), chosen_rewards (B,), rejected_rewards (B,).
    """
    losses = torch.relu(1 - beta * (logps.chosen_logratios - logps.rejected_logratios))
    return (losses, *_reference_rewards(logps, beta))


def robust_dpo_loss(logps: PairLogps, beta: float, label_smoothing: float = 0.0):
    """Robust DPO (rDPO; Chowdhury, Kini and Natarajan 2024, arXiv:2403.00409, Sec. 3, the de-biased loss).

    With labels flipped at a known rate eps = label_smoothing in [0, 0.5),
    [(1 - eps) * l(h) - eps * l(-h)] / (1 - 2 eps) with l(h) = -log sigmoid(beta h)
    is an unbiased estimate of the clean-label DPO loss. Unlike conservative DPO it
    can go negative, and it equals DPO at eps = 0.

    Returns: losses (B,), chosen_rewards (B,), rejected_rewards (B,).
    """
    logits = beta * (logps.chosen_logratios - logps.rejected_logratios)  # (B,)
    losses = (-(1 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(-logits)) / (1 - 2 * label_smoothing)
    return (losses, *_reference_rewards(logps, beta))


def simpo_loss(logps: PairLogps, beta: float, gamma_beta_ratio: float = 0.5, label_smoothing: float = 0.0):
    """SimPO: -log sigmoid(beta * (avg log pi(y_w) - avg log pi(y_l)) - gamma) (Meng et al. 2024, arXiv:2405.14734, Eq. 6).

    Reference-free: the implicit reward is the length-normalised log-prob
    beta * log pi(y|x) / |y|, and gamma = gamma_beta_ratio * beta is a target margin.
    label_smoothing smooths as in conservative DPO (TRL's CPO trainer does the same).

    Returns: losses (B,), chosen_rewards (B,), rejected_rewards (B,) = beta * average log-probs.
    """
    logits = beta * (logps.chosen_average - logps.rejected_average - gamma_beta_ratio)  # (B,)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, beta * logps.chosen_average.detach(), beta * logps.rejected_average.detach()


def orpo_loss(logps: PairLogps, beta: float):
    """ORPO: NLL(y_w) - beta * log sigmoid(log odds(y_w) - log odds(y_l)) (Hong et al. 2024, arXiv:2403.07691, Eqs. 6-7).

    Reference-free. odds(y) = P(y) / (1 - P(y)) with P(y) the per-token average
    probability exp(avg log pi(y|x)); beta is the paper's lambda (TRL default 0.1).
    The NLL term is each pair's mean token NLL of the chosen completion (the paper's
    per-example L_SFT), so the loss is a plain mean over pairs; TRL averages it over
    all chosen tokens of the batch instead, which differs when lengths differ.

    Returns: losses (B,), chosen_rewards (B,), rejected_rewards (B,) = beta * average log-probs.
    """
    chosen, rejected = logps.chosen_average, logps.rejected_average  # (B,) both < 0
    # log odds = log p - log(1 - p); log1p(-exp(x)) is exact for x < 0 (clamped so p = 1 stays finite)
    log_odds = (chosen - rejected) - (torch.log1p(-chosen.clamp(max=-1e-6).exp()) - torch.log1p(-rejected.clamp(max=-1e-6).exp()))
    losses = -chosen - beta * F.logsigmoid(log_odds)
    return losses, beta * chosen.detach(), beta * rejected.detach()


class PreferenceLoss(NamedTuple):
    """A table entry: the loss function, the options it takes, whether it needs a reference, its default beta."""

    fn: Callable
    options: tuple[str, ...]
    uses_reference: bool
    default_beta: float


PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    "sigmoid": PreferenceLoss(dpo_sigmoid_loss, ("label_smoothing",), True, 0.1),
    "ipo": PreferenceLoss(ipo_loss, (), True, 0.1),
    "hinge": PreferenceLoss(hinge_loss, (), True, 0.1),
    "robust": PreferenceLoss(robust_dpo_loss, ("label_smoothing",), True, 0.1),
    "simpo": PreferenceLoss(simpo_loss, ("gamma_beta_ratio", "label_smoothing"), False, 2.0),
    "orpo": PreferenceLoss(orpo_loss, (), False, 0.1),
}


def preference_loss(loss_type: str, logps: PairLogps, beta: float, num_items: torch.Tensor | float | None = None,
                    rpo_alpha: float = 0.0, **options):
    """The `loss_type` loss averaged over pairs, and the metrics every preference recipe logs.

    Args:
        loss_type: a key of PREFERENCE_LOSSES.
        logps: PairLogps of B pairs (ref_* may be None for reference-free losses).
        beta: the loss's temperature / regularisation strength (> 0).
        num_items: the pair count to divide the summed loss by (the whole accumulated
            batch under gradient accumulation); defaults to B.
        rpo_alpha: weight of an added NLL term on the chosen completion, each pair's mean token
            NLL -log pi(y_w|x) / |y_w| (RPO, Pang et al. 2024, arXiv:2404.19733; TRL's `rpo_alpha`).
            It keeps the chosen answers likely while the margin grows; 0 leaves the loss as is.
        options: label_smoothing, gamma_beta_ratio; those the loss does not take are ignored.

    Returns:
        loss (scalar), metrics: loss, rewards/chosen, rewards/rejected, rewards/margin,
        rewards/accuracy, logps/chosen, logps/rejected and, with a reference,
        kl/ref (mean log pi(y_w) - log pi_ref(y_w) over chosen completions, in nats).
        `loss` includes the RPO term when rpo_alpha > 0.
    """
    spec = PREFERENCE_LOSSES[loss_type]
    losses, chosen_rewards, rejected_rewards = spec.fn(logps, beta, **{k: options[k] for k in spec.options if k in options})
    if rpo_alpha:
        losses = losses - rpo_alpha * logps.chosen_average  # (B,)
    count = losses.shape[0] if num_items is None else num_items
    loss = losses.sum() / count
    metrics = {
        "loss": losses.detach().mean(),
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margin": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
        "logps/chosen": logps.chosen.detach().mean(),
        "logps/rejected": logps.rejected.detach().mean(),
    }
    if logps.ref_chosen is not None:
        metrics["kl/ref"] = logps.chosen_logratios.detach().mean()
    return loss, metrics
