"""The optimisation half of an online RL step: `ppo_epochs` passes of `num_minibatches` optimizer steps over one rollout.

Each minibatch is one optimizer step (train/run.py's `optimizer_step`), run as micro-batches of
`batch_size` responses whose losses (rl/update.py) are divided by the whole minibatch's token /
response counts. A rollout's remaining minibatches are skipped once policy/approx_kl exceeds
`target_kl` (early stopping as in OpenAI's Spinning Up PPO). A minibatch whose loss or gradient
norm is NaN/inf takes no optimizer step, and too many in a row stop the run (the run's NaN guard).
"""

from __future__ import annotations

import math
import time

import torch

from alignkit.rl import update
from alignkit.rl.rollout import Rollout, select
from alignkit.rl.update import MetricMeans
from alignkit.train.run import Run, optimizer_step

SUMMED = ("loss", "policy/loss", "value/loss")  # micro-batch losses add up to the minibatch loss


def minibatch_step(run: Run, policy, value_model, optimizer, scheduler, tensors: dict, minibatch: list[int], config,
                   kl_coef: float, step: int, parameters: list) -> tuple[dict, int, bool]:
    """One optimizer step on the responses `minibatch`; returns its metrics, the tokens it read, and whether it stepped."""
    mask = tensors["response_mask"][minibatch]
    counts = {"tokens": mask.sum().clamp(min=1).float(), "sequences": (mask.sum(-1) > 0).sum().clamp(min=1).float()}
    micro = [minibatch[i:i + config.batch_size] for i in range(0, len(minibatch), config.batch_size)]

    def micro_loss(rows):
        batch = select(tensors, rows, run.accelerator.device)
        loss, metrics = update.microbatch_loss(policy, value_model, batch, config, kl_coef, counts)
        return loss, (metrics, float(batch["response_mask"].sum()), int(batch["attention_mask"].sum()))

    result = optimizer_step(run, policy, optimizer, scheduler, micro, micro_loss, step, parameters=parameters,
                            undo_ddp_mean=False, max_grad_norm=config.max_grad_norm)  # each process's loss is its own mean
    means = MetricMeans()
    for loss, (metrics, weight, _) in zip(result.losses, result.outputs):
        means.add({k: v for k, v in metrics.items() if k not in SUMMED}, weight)
        means.add({"loss": loss, **{k: metrics[k] for k in SUMMED[1:] if k in metrics}}, 1.0)
    if result.grad_norm is not None:
        means.add({"grad_norm": result.grad_norm}, 1.0)
    summed = means.means()
    for key in SUMMED:
        if key in summed:
            summed[key] *= len(micro)
    return summed, sum(tokens for *_, tokens in result.outputs), result.stepped


def policy_update(run: Run, policy, value_model, optimizer, scheduler, rollout: Rollout, config, kl_coef: float,
                  generator: torch.Generator | None = None, step: int = 0) -> dict:
    """`ppo_epochs` passes of `num_minibatches` optimizer steps over `rollout`; returns mean metrics.

    `step` is the rollout step, named in the NaN guard's messages; `generator` shuffles the minibatches.
    """
    started = time.perf_counter()
    tensors, n = rollout.tensors(), rollout.num_responses
    size = math.ceil(n / config.num_minibatches)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    means, tokens, optimizer_steps, stopped = MetricMeans(), 0, 0, False
    policy.train()
    for _ in range(config.ppo_epochs):
        order = torch.randperm(n, generator=generator).tolist() if config.num_minibatches > 1 else list(range(n))
        for start in range(0, n, size):
            summed, read, stepped = minibatch_step(run, policy, value_model, optimizer, scheduler, tensors, order[start:start + size],
                                                   config, kl_coef, step, parameters)
            tokens, optimizer_steps = tokens + read, optimizer_steps + int(stepped)
            means.add(summed, 1.0)
            if config.target_kl and summed.get("policy/approx_kl", 0.0) > config.target_kl:
                stopped = True
                break
        if stopped:
            break
    out = means.means()
    tokens_per_s = tokens / max(time.perf_counter() - started, 1e-9)
    out.update({"policy/optimizer_steps": optimizer_steps, "policy/early_stopped": int(stopped), "throughput/tokens_per_s": tokens_per_s,
                "throughput/train_tokens_per_s": tokens_per_s,  # the old name, kept for one release
                "lr": scheduler.get_last_lr()[0]})
    return out
