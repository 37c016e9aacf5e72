"""The loss of one PPO/GRPO micro-batch, and the weighted means its metrics are reported as.

The epochs x minibatches loop over a rollout that calls it is `train/ppo_update.py`.
Each micro-batch's loss is divided by the whole minibatch's token / response counts, so
the accumulated gradient equals that of one big batch. The loss per token is

    policy surrogate (losses/policy.py)
    + kl_coef * KL estimate            when the KL term sits in the loss (GRPO style)
    - ent_coef * entropy
    + vf_coef * clipped value loss     with a value model (losses/value.py)
"""

from __future__ import annotations

import math


from alignkit.losses.kl import kl_per_token
from alignkit.losses.policy import POLICY_LOSSES, aggregate_tokens
from alignkit.losses.value import clipped_value_loss
from alignkit.rl.scoring import logprobs_and_values


class MetricMeans:
    """Weighted means of scalar metrics over micro-batches."""

    def __init__(self):
        self.sums, self.weights = {}, {}

    def add(self, metrics: dict, weight: float) -> None:
        for key, value in metrics.items():
            value = float(value)
            if math.isfinite(value):
                self.sums[key] = self.sums.get(key, 0.0) + value * weight
                self.weights[key] = self.weights.get(key, 0.0) + weight

    def means(self) -> dict:
        return {k: self.sums[k] / self.weights[k] for k in self.sums if self.weights[k] > 0}


def microbatch_loss(policy, value_model, batch: dict, config, kl_coef: float, counts: dict):
    """Loss of one micro-batch (already divided by the minibatch's counts) and its metrics."""
    mask = batch["response_mask"].float()
    use_values = value_model is not None and "values" in batch
    logps, entropy, values = logprobs_and_values(policy, value_model if use_values else None, batch, config.temperature, with_entropy=True,
                                                 entropy_grad=bool(config.ent_coef))  # without an entropy bonus, a metric only
    old_logps = batch["logps"] if "logps" in batch else logps.detach()
    policy_loss = POLICY_LOSSES[config.policy_loss]
    loss, metrics = policy_loss(logps, old_logps, batch["advantages"], mask, config.clip_range, config.clip_range_high or None,
                                config.loss_aggregation, counts["tokens"], counts["sequences"], config.max_new_tokens)
    count = mask.sum().clamp(min=1)
    metrics["policy/entropy"] = ((entropy * mask).sum() / count).detach()
    kl_k1 = kl_per_token(logps.detach(), batch["ref_logps"], mask, "k1")
    metrics["kl/ref"] = kl_k1.sum(-1)[mask.sum(-1) > 0].mean().detach() if mask.any() else logps.new_zeros(())
    if config.kl_in == "loss" and kl_coef > 0:
        kl = kl_per_token(logps, batch["ref_logps"], mask, config.kl_estimator)
        kl_loss = aggregate_tokens(kl, mask, config.loss_aggregation, counts["tokens"], counts["sequences"], config.max_new_tokens)
        loss = loss + kl_coef * kl_loss
        metrics["kl/loss_term"] = (kl * mask).sum().detach() / count
    if config.ent_coef:
        loss = loss - config.ent_coef * aggregate_tokens(entropy, mask, "token_mean", counts["tokens"])
    if use_values:
        value_loss, value_metrics = clipped_value_loss(values, batch["values"], batch["returns"], mask, config.vf_clip, counts["tokens"])
        loss = loss + config.vf_coef * value_loss
        metrics.update(value_metrics)
    return loss, metrics
