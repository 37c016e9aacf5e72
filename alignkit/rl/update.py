"""The optimisation half of a step: epochs x minibatches over one rollout.

Each minibatch is one optimizer step, run as micro-batches of `batch_size` responses
whose losses are divided by the whole minibatch's token / response counts, so the
accumulated gradient equals that of one big batch. The loss per token is

    policy surrogate (losses/policy.py)
    + kl_coef * KL estimate            when the KL term sits in the loss (GRPO style)
    - ent_coef * entropy
    + vf_coef * clipped value loss     with a value model (losses/value.py)

A rollout's remaining minibatches are skipped once policy/approx_kl exceeds
`target_kl` (early stopping as in OpenAI's Spinning Up PPO). With a `nan_guard`
(train/loop.py's NanGuard) a minibatch whose loss or gradient norm is NaN/inf takes no
optimizer step, and too many such minibatches in a row stop the run.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch

from alignkit.losses.kl import kl_per_token
from alignkit.losses.policy import POLICY_LOSSES, aggregate_tokens
from alignkit.losses.value import clipped_value_loss
from alignkit.rl.rollout import Rollout, select
from alignkit.rl.value_model import logprobs_and_values


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
    logps, entropy, values = logprobs_and_values(policy, value_model if use_values else None, batch, config.temperature, with_entropy=True)
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


def policy_update(policy, value_model, optimizer, scheduler, accelerator, rollout: Rollout, config, kl_coef: float,
                  generator: torch.Generator | None = None, nan_guard=None, step: int = 0) -> dict:
    """`ppo_epochs` passes of `num_minibatches` optimizer steps over `rollout`; returns mean metrics.

    `step` is the rollout step, named in the nan_guard's messages.
    """
    started = time.perf_counter()
    tensors = rollout.tensors()
    n = rollout.num_responses
    size = math.ceil(n / config.num_minibatches)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    means, tokens, optimizer_steps, stopped = MetricMeans(), 0, 0, False
    policy.train()
    for _ in range(config.ppo_epochs):
        order = torch.randperm(n, generator=generator).tolist() if config.num_minibatches > 1 else list(range(n))
        for start in range(0, n, size):
            minibatch = order[start:start + size]
            mask = tensors["response_mask"][minibatch]
            counts = {"tokens": mask.sum().clamp(min=1).float(), "sequences": (mask.sum(-1) > 0).sum().clamp(min=1).float()}
            minibatch_means, minibatch_loss = MetricMeans(), 0.0
            micro = [minibatch[i:i + config.batch_size] for i in range(0, len(minibatch), config.batch_size)]
            for index, rows in enumerate(micro):
                batch = select(tensors, rows, accelerator.device)
                last = index == len(micro) - 1
                with (contextlib.nullcontext() if last else accelerator.no_sync(policy)), accelerator.autocast():
                    loss, metrics = microbatch_loss(policy, value_model, batch, config, kl_coef, counts)
                    accelerator.backward(loss)
                minibatch_means.add({k: v for k, v in metrics.items() if k != "policy/loss" and k != "value/loss"},
                                    float(batch["response_mask"].sum()))
                minibatch_means.add({"loss": loss.detach(), "policy/loss": metrics["policy/loss"],
                                     **({"value/loss": metrics["value/loss"]} if "value/loss" in metrics else {})}, 1.0)
                minibatch_loss = minibatch_loss + loss.detach().float()
                tokens += int(batch["attention_mask"].sum())
            grad_norm = accelerator.clip_grad_norm_(parameters, config.max_grad_norm) if config.max_grad_norm > 0 else None
            if grad_norm is not None:
                minibatch_means.add({"grad_norm": grad_norm}, 1.0)
            if nan_guard is None or not nan_guard.should_skip(accelerator, step, minibatch_loss, grad_norm):
                optimizer.step()
                scheduler.step()
                optimizer_steps += 1
            optimizer.zero_grad(set_to_none=True)
            summed = minibatch_means.means()
            for key in ("loss", "policy/loss", "value/loss"):  # micro-batch losses add up to the minibatch loss
                if key in summed:
                    summed[key] *= len(micro)
            means.add(summed, 1.0)
            if config.target_kl and summed.get("policy/approx_kl", 0.0) > config.target_kl:
                stopped = True
                break
        if stopped:
            break
    out = means.means()
    seconds = time.perf_counter() - started
    out.update({"policy/optimizer_steps": optimizer_steps, "policy/early_stopped": int(stopped),
                "throughput/train_tokens_per_s": tokens / max(seconds, 1e-9), "lr": scheduler.get_last_lr()[0]})
    return out
