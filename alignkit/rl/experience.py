"""One batch of experience: rollout -> rewards -> KL to the reference -> advantages.

This is the plumbing `train/ppo.py` and `train/grpo.py` share; the math it calls
lives in `losses/kl.py` and `rl/advantages.py`. The returned `Rollout` carries, in
`extras`, every per-token tensor the update needs:

    logps       (N, T) log pi_old at rollout time (absent when the update is a single
                on-policy pass: pi_old = pi, so its own forward provides them, as TRL does)
    ref_logps   (N, T) log pi_ref
    values      (N, T) V_old (gae only)
    advantages  (N, T), returns (N, T)
and `response_mask` already has skipped / masked-out responses zeroed.
"""

from __future__ import annotations

import contextlib

import torch

from alignkit.losses.kl import kl_per_token
from alignkit.rl.advantages import AdvantageInputs, compute_advantages
from alignkit.data.formats import prompt_columns
from alignkit.rl.dynamic_sampling import sample_informative_groups, zero_variance_groups
from alignkit.rl.mismatch import importance_weights, mismatch_metrics
from alignkit.rl.rollout import Rollout, generate
from alignkit.rl.shaping import overlong_penalty
from alignkit.rl.scoring import old_logps_and_values, reference_mode, rollout_logprobs


def needs_rollout_logps(config) -> bool:
    """pi_old must be computed at rollout time unless the update is one on-policy pass with the KL in the loss."""
    return config.ppo_epochs > 1 or config.num_minibatches > 1 or config.kl_in == "reward"


def response_metrics(rollout: Rollout) -> dict:
    lengths = rollout.response_lengths.float()
    generated = float(sum(len(r) for r in rollout.response_ids))
    return {
        "response/length": lengths.mean().item(),
        "response/eos_rate": rollout.finished.float().mean().item(),
        "throughput/generation_tokens_per_s": generated / max(rollout.generation_seconds, 1e-9),
    }


def sample_and_score(policy, tokenizer, prompt_ids: list[list[int]], prompt_rows: list[dict], config, rewards, generator=None,
                     draw_prompts=None) -> tuple[Rollout, object, dict]:
    """G responses per prompt and their rewards; with `dynamic_sampling`, only groups whose rewards differ,
    refilled from `draw_prompts()` (rl/dynamic_sampling.py). Sets `rollout.prompt_rows` and `rollout.rewards`."""
    options = dict(group_size=config.group_size, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                   top_p=config.top_p, batch_size=config.generation_batch_size, bf16=config.mixed_precision == "bf16")
    sample = (lambda ids: generator(tokenizer, ids, **options)) if generator else (lambda ids: generate(policy, tokenizer, ids, **options))

    def score(rollout, rows):
        prompts = [rows[i]["prompt"] for i in rollout.prompt_index]
        return rewards.raw_scores(prompts, rollout.responses, prompt_columns(rows, rollout.prompt_index), completion_ids=rollout.response_ids)

    metrics = {}
    if config.dynamic_sampling and draw_prompts is not None:
        rollout, prompt_rows, raw, valid, per_source, metrics = sample_informative_groups(
            sample, score, prompt_ids, prompt_rows, draw_prompts, config.group_size, config.dynamic_sampling_rounds, tokenizer)
    else:
        rollout = sample(prompt_ids)
        raw, valid, per_source = score(rollout, prompt_rows)
        if config.group_size > 1:  # logged without dynamic sampling too (TRL's frac_reward_zero_std): the share that teaches nothing
            flat = zero_variance_groups(raw, valid, config.group_size)
            metrics = {"dynamic/zero_variance_share": flat.float().mean().item(), "dynamic/groups": int((~flat).sum())}
    rollout.prompt_rows, rollout.rewards = prompt_rows, raw
    return rollout, rewards.finish(raw, valid, per_source), metrics


def make_experience(policy, tokenizer, prompt_ids: list[list[int]], prompt_rows: list[dict], config, rewards,
                    kl_coef: float, reference_model=None, value_model=None, autocast=contextlib.nullcontext,
                    generator=None, draw_prompts=None) -> tuple[Rollout, dict]:
    """Samples G responses per prompt, scores them, and computes advantages; returns the rollout and its metrics.

    `generator` (optional) replaces `rl.rollout.generate`, e.g. a `VLLMGenerator`; it takes the
    same arguments as `rl.rollout.generate` minus the model. `draw_prompts() -> (prompt_ids, rows)`
    gives fresh prompts when dynamic sampling refills dropped groups.
    """
    rollout, result, dynamic = sample_and_score(policy, tokenizer, prompt_ids, prompt_rows, config, rewards, generator, draw_prompts)
    metrics = {**response_metrics(rollout), **dynamic}

    # rewards: the sources, then the length-limit policy
    scores = result.normalized - config.missing_eos_penalty * (~rollout.finished).float()
    if config.overlong_buffer:  # DAPO's soft length penalty (rl/shaping.py)
        shaping = config.overlong_penalty * overlong_penalty(rollout.response_lengths, config.max_new_tokens, config.overlong_buffer)
        scores = scores + shaping
        metrics["reward/overlong_penalty"] = shaping.mean().item()
    valid = result.valid & (rollout.finished | (not config.mask_truncated_completions))
    metrics.update(result.metrics())
    metrics["response/masked"] = int((~(rollout.finished | (not config.mask_truncated_completions))).sum())

    # log-probs under pi_old and pi_ref, values under V_old: all through the training code path
    use_values = config.advantage == "gae"
    sampler = rollout.extras.get("sampler_logps")  # vLLM's own log-probs: the mismatch needs pi_old beside them
    if needs_rollout_logps(config) or use_values or sampler is not None:
        logps, values = old_logps_and_values(policy, value_model if use_values else None, rollout, config.batch_size, config.temperature, autocast)
        rollout.extras["logps"] = logps
        if use_values:
            rollout.extras["values"] = values
    with reference_mode(policy, reference_model) as reference:
        rollout.extras["ref_logps"] = rollout_logprobs(reference, rollout, config.batch_size, config.temperature, autocast)

    mask = rollout.response_mask.float()
    kl = None
    if "logps" in rollout.extras:
        kl = kl_per_token(rollout.extras["logps"], rollout.extras["ref_logps"], mask, config.kl_estimator)
        k1 = kl_per_token(rollout.extras["logps"], rollout.extras["ref_logps"], mask, "k1")
        metrics["kl/ref"] = k1.sum(-1)[valid].mean().item()  # nats per response (k1 is unbiased)
    inputs = AdvantageInputs(scores=scores, mask=mask, valid=valid, kl=kl, kl_coef=kl_coef if config.kl_in == "reward" else 0.0,
                             values=rollout.extras.get("values"), group_size=config.group_size, gamma=config.gamma,
                             lam=config.lam, scale_rewards=config.scale_rewards)
    advantages, returns = compute_advantages(config.advantage, inputs, config.whiten_advantages)
    if sampler is not None:
        advantages = correct_for_sampler(advantages, rollout, sampler, mask, config, metrics)
    rollout.extras["advantages"], rollout.extras["returns"] = advantages, returns
    rollout.response_mask = rollout.response_mask * valid[:, None].long()
    if use_values:
        metrics["value/explained_var"] = explained_variance(rollout.extras["values"], returns, rollout.response_mask)
    metrics["kl/coef"] = kl_coef
    return rollout, metrics


def correct_for_sampler(advantages: torch.Tensor, rollout: Rollout, sampler: torch.Tensor, mask: torch.Tensor, config,
                        metrics: dict) -> torch.Tensor:
    """Logs the sampler/trainer mismatch and, with `vllm_importance_sampling_correction`, weights each token's
    advantage (hence its loss) by the truncated importance ratio pi_old / pi_sampler (rl/mismatch.py)."""
    bounds = dict(clip_min=config.vllm_importance_sampling_clip_min, clip_max=config.vllm_importance_sampling_clip_max)
    metrics.update(mismatch_metrics(rollout.extras["logps"], sampler, mask, **bounds))
    if not config.vllm_importance_sampling_correction:
        return advantages
    weights = importance_weights(rollout.extras["logps"], sampler, mask, config.vllm_importance_sampling_mode, **bounds)
    return advantages * weights


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the masked tokens: 1 is perfect, 0 no better than a constant."""
    m = mask.bool()
    target, predicted = returns[m], values[m]
    if target.numel() < 2 or target.var() == 0:
        return float("nan")
    return (1 - (target - predicted).var() / target.var()).item()
