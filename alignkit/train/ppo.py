"""Stage 3, online policy optimisation: PPO (and REINFORCE, RLOO, GRPO by `advantage`).

config -> setup (policy, reference, value model, rewards, prompts, optimizer) -> loop -> save.
Each step of the loop is

    rollout, metrics = make_experience(...)   # sample G responses per prompt, reward, KL, advantages (rl/experience.py)
    metrics |= policy_update(...)             # ppo_epochs x num_minibatches optimizer steps (rl/update.py)
    kl_coef = kl_controller.update(...)       # fixed or adaptive beta (rl/kl_control.py)

`train/grpo.py` runs this same recipe with GRPO's defaults (GRPOConfig).

Checkpoints (`save_every`, `save_total_limit`, `resume`) use train/checkpoint.py, as SFT
and DPO do: `checkpoint-N/` holds the policy's trainable weights, the value model's
(`value_model.safetensors`), the optimizer and scheduler, the torch / python / numpy RNGs
(rollout sampling draws from torch's global one), the minibatch shuffling generator, the
prompt stream's position, and as JSON the KL coefficient, the running reward statistics,
the NaN-guard counters, the monitor's memory, the step-0 evaluation and the per-step values
the summary averages. A resumed run on one CPU process repeats the uninterrupted run's
metrics bit for bit. Not restored: a vLLM generator's sampling RNG (its weights are synced).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from alignkit.config import PPOConfig, config_from_dict, save_config
from alignkit.data.formats import ANSWER_COLUMNS, PROMPT_KINDS, load_dataset
from alignkit.io import write_jsonl
from alignkit.models.wrapping import strip_wrappers
from alignkit.errors import AlignkitError
from alignkit.evaluate.monitors import build_monitor
from alignkit.models.load import count_parameters, load_policy
from alignkit.models.wrapping import unwrap
from alignkit.rl.experience import make_experience
from alignkit.rl.frozen_bf16 import cast_frozen_linears, restore_frozen_linears
from alignkit.rl.kl_control import KL_CONTROLLERS
from alignkit.rl.rewards import FunctionReward, build_rewards
from alignkit.rl.rollout import encode_prompts
from alignkit.rl.update import policy_update
from alignkit.rl.value_model import build_value_model
from alignkit.train.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from alignkit.train.loop import BatchStream, MetricsLogger, NanGuard, build_optimizer, build_scheduler, log, make_accelerator, save_model
from alignkit.io import write_json


# ---------------------------------------------------------------- setup helpers

def load_prompts(source: str, split: str, config, tokenizer, stage: str, limit: int = 0):
    """Prompt rows that fit `max_prompt_length`, their token ids, and the report of dropped/truncated ones."""
    rows, fmt = load_dataset(source, PROMPT_KINDS, stage, split, hint="; online RL needs rows with a `prompt` column")
    rows = rows[:limit] if limit else rows
    ids, kept, report = encode_prompts(tokenizer, [r["prompt"] for r in rows], config.max_prompt_length, config.truncation_mode)
    log.info(report.summary(f"{source} ({fmt})"))
    if not kept:
        raise AlignkitError(f"{source}: no prompt fits max_prompt_length={config.max_prompt_length}; raise it or use truncation_mode: truncate")
    return [{k: v for k, v in rows[i].items() if k not in ANSWER_COLUMNS} for i in kept], ids, report  # answers are not reward inputs


def reward_specs(config) -> list[dict]:
    """The configured reward sources: `rewards` plus the reward_model / reward_function / reward_url shorthands."""
    specs = [dict(s) for s in config.rewards]
    if config.reward_model:
        specs.append({"type": "model", "path": config.reward_model, "conservative_k": config.reward_conservative_k,
                      "batch_size": config.batch_size * 2, "bf16": config.mixed_precision == "bf16"})
    if config.reward_function:
        specs.append({"type": "function", "function": config.reward_function})
    if config.reward_url:
        specs.append({"type": "http", "url": config.reward_url, "timeout": config.reward_timeout, "retries": config.reward_retries})
    return specs


def disable_dropout(model) -> None:
    """RL compares log-probs of the same tokens across forwards; dropout would make the step-0 ratio != 1."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def load_reference(config, accelerator):
    """A frozen copy of the starting policy, or None to use the LoRA policy with adapters disabled."""
    from alignkit.models.reference import load_reference_model, resolve_strategy

    return load_reference_model(config, accelerator) if resolve_strategy(config) == "copy" else None


@torch.no_grad()
def evaluate_policy(model, tokenizer, rows: list[dict], rewards, gold, config, answers_path: str | None = None) -> dict:
    """Held-out prompts answered greedily (eval/*) and, with `eval_samples` > 0, sampled that many times each at the
    rollout's temperature and top-p (eval/sampled_*): scored by the training reward (raw) and the optional gold judge.

    The sampled answers draw from their own random stream, seeded by `config.seed` at every evaluation: training
    draws the same numbers with or without evaluation, and the evaluations before and after share theirs.
    `answers_path`: also write every answer and its scores there (JSON lines; `sample` is null for the greedy one).
    """
    prompts = [r["prompt"] for r in rows]
    columns = {k: [r.get(k) for r in rows] for k in sorted({k for r in rows for k in r} - {"prompt"})}
    out, records = _score_answers(model, tokenizer, prompts, columns, rewards, gold, config, "eval/")
    if config.eval_samples:
        k = config.eval_samples
        repeated = {key: [v for v in values for _ in range(k)] for key, values in columns.items()}
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            sampled, sampled_records = _score_answers(model, tokenizer, [p for p in prompts for _ in range(k)], repeated,
                                                      rewards, gold, config, "eval/sampled_", do_sample=True)
        out.update(sampled)
        records += [{**r, "sample": i % k} for i, r in enumerate(sampled_records)]
    if answers_path:
        write_jsonl(records, answers_path)
    return out


def _score_answers(model, tokenizer, prompts, columns, rewards, gold, config, prefix: str, do_sample: bool = False):
    """(metrics, one record per answer) for one answer per entry of `prompts`."""
    from alignkit.models.generation import generate_answers

    answers = generate_answers(strip_wrappers(model), tokenizer, prompts, max_new_tokens=config.max_new_tokens,
                               batch_size=max(config.batch_size, 16), do_sample=do_sample, temperature=config.temperature,
                               top_p=config.top_p, bf16=config.mixed_precision == "bf16")
    result = rewards(prompts, answers, columns, update_stats=False)
    out = {f"{prefix}reward": result.raw[result.valid].mean().item(),
           f"{prefix}length": sum(len(tokenizer(a)["input_ids"]) for a in answers) / len(answers)}
    records = [{"prompt": p, "sample": None, "answer": a, "reward": r if ok else None}
               for p, a, r, ok in zip(prompts, answers, result.raw.tolist(), result.valid.tolist())]
    if gold is not None:
        judged = gold(prompts, answers, columns)
        out[f"{prefix}gold"] = sum(judged) / len(answers)
        for record, value in zip(records, judged):
            record["gold"] = value
    return out, records


def answers_file(config, accelerator, step: int) -> str | None:
    """Where evaluation `step`'s answers go (the main process writes them): <output_dir>/eval_answers/step-N.jsonl."""
    return f"{config.output_dir}/eval_answers/step-{step}.jsonl" if accelerator.is_main_process else None


def make_generator(config, tokenizer):
    """None (the built-in sampler on the policy, `rl.rollout.generate`) or a vLLM generator."""
    if config.generation_backend != "vllm":
        return None
    from alignkit.models.load import resolve_model_path
    from alignkit.rl.vllm_backend import VLLMGenerator

    return VLLMGenerator(resolve_model_path(config.model), tokenizer, config.max_prompt_length + config.max_new_tokens,
                         config.vllm_gpu_memory_utilization, seed=config.seed)


# ---------------------------------------------------------------- checkpoint state beyond weights, optimizer and RNGs

SUMMARY_KEYS = ("reward", "kl/ref", "kl/coef", "throughput/generation_tokens_per_s", "throughput/train_tokens_per_s")


def online_state(kl_controller, rewards, monitor, nan_guard, first_eval: dict, history: list[dict]) -> dict:
    """The recipe's own state for a checkpoint (JSON): everything `restore_online_state` needs."""
    return {"kl_controller": kl_controller.state_dict(), "rewards": rewards.state_dict(), "monitor": monitor.state_dict(),
            "nan_guard": nan_guard.state_dict(), "first_eval": first_eval,
            "history": [{k: m[k] for k in SUMMARY_KEYS if k in m} for m in history]}


def restore_online_state(state: dict, kl_controller, rewards, monitor, nan_guard) -> tuple[dict, list[dict]]:
    """Puts `online_state` back; returns the step-0 evaluation and the summary's per-step history."""
    if "kl_controller" not in state:
        raise AlignkitError("resume: the checkpoint was not written by `alignkit ppo` or `alignkit grpo`; resume from one of this run's checkpoint-N folders")
    kl_controller.load_state_dict(state["kl_controller"])
    rewards.load_state_dict(state["rewards"])
    monitor.load_state_dict(state["monitor"])
    nan_guard.load_state_dict(state["nan_guard"])
    return state["first_eval"], state["history"]


# ---------------------------------------------------------------- the recipe

def train_online(config: PPOConfig, stage: str = "ppo") -> dict:
    """Runs online RL end to end; returns the summary (also in `<output_dir>/summary.json`)."""
    started = time.time()
    accelerator = make_accelerator(config)
    policy, tokenizer = load_policy(config)
    disable_dropout(policy)
    reference = load_reference(config, accelerator)
    value_model = build_value_model(config.value_model, config, policy, config.reward_model) if config.advantage == "gae" else None
    rewards = build_rewards(reward_specs(config), config.reward_normalize, config.reward_clip, config.reward_on_invalid)
    gold = FunctionReward(config.eval_reward_function) if config.eval_reward_function else None
    # under bf16 autocast, frozen weights stored in bf16 give the same numbers without a cast per forward
    fp32_weights = cast_frozen_linears(policy) if config.mixed_precision == "bf16" else {}
    if reference is not None and config.mixed_precision == "bf16":
        cast_frozen_linears(reference)
    rows, prompt_ids, report = load_prompts(config.data or _missing_data(), config.data_split, config, tokenizer, stage.upper())
    eval_rows = load_prompts(config.eval_data, "test", config, tokenizer, f"{stage.upper()} evaluation", config.eval_rows)[0] if config.eval_data else []
    if accelerator.is_main_process:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        save_config(config, f"{config.output_dir}/config.yaml")

    steps = config.max_steps if config.max_steps > 0 else max(1, math.ceil(len(rows) * config.num_epochs / config.prompts_per_step))
    trainable = torch.nn.ModuleDict({"policy": policy, **({"value": value_model} if value_model is not None else {})})
    value_lr = {"value": config.value_learning_rate} if value_model is not None and config.value_learning_rate > 0 else None
    optimizer = build_optimizer(trainable, config, value_lr)
    scheduler = build_scheduler(optimizer, config, steps * config.ppo_epochs * config.num_minibatches)
    if value_model is not None:
        policy, value_model, optimizer = accelerator.prepare(policy, value_model, optimizer)
    else:
        policy, optimizer = accelerator.prepare(policy, optimizer)
    generator = make_generator(config, tokenizer)
    kl_controller = KL_CONTROLLERS[config.kl_control](config.kl_coef, config.kl_target, config.kl_horizon)
    stream = BatchStream(len(rows), config.prompts_per_step, config.seed)
    shuffle = torch.Generator().manual_seed(config.seed)  # minibatch order
    nan_guard = NanGuard(config.max_nan_steps)
    monitor = build_monitor(config, stage, tokenizer, accelerator, proxy=rewards, gold=gold)  # over-optimization / hacking
    checkpointed = dict(modules={"value_model": value_model} if value_model is not None else {}, generators={"shuffle": shuffle})
    start_step, first_eval, history = 0, None, []
    if checkpoint := resolve_resume(config.resume, config.output_dir):
        state = load_checkpoint(checkpoint, accelerator, policy, optimizer, scheduler, stream, **checkpointed)
        start_step = state["step"]
        first_eval, history = restore_online_state(state["extra"], kl_controller, rewards, monitor, nan_guard)
        if generator is not None:
            generator.sync_weights(policy)
        log.info(f"resumed from {checkpoint} at step {start_step}")
    logger = MetricsLogger(config.output_dir, config.report_to, accelerator.is_main_process, resume_step=start_step)
    n_trainable, n_total = count_parameters(trainable)
    log.info(f"{stage.upper()}: {len(rows)} prompts, {steps} steps of {config.prompts_per_step} prompts x {config.group_size}, "
             f"advantage {config.advantage}, KL {config.kl_estimator} in the {config.kl_in}, {n_trainable:,}/{n_total:,} trainable parameters")

    if first_eval is None:  # a resumed run has it from its checkpoint (and in metrics.jsonl)
        first_eval = evaluate_policy(policy, tokenizer, eval_rows, rewards, gold, config, answers_file(config, accelerator, 0)) if eval_rows else {}
        if first_eval:
            logger.log(0, first_eval)
            log.info("before: " + ", ".join(f"{k} {v:.3f}" for k, v in first_eval.items()))
    kl_coef = kl_controller.value
    progress = tqdm(range(start_step + 1, steps + 1), desc=stage, disable=not accelerator.is_local_main_process)
    for step in progress:
        step_started = time.perf_counter()
        indices = stream.next_step(1)[0]
        rollout, experience = make_experience(
            strip_wrappers(policy), tokenizer, [prompt_ids[i] for i in indices], [rows[i] for i in indices], config,
            rewards, kl_coef, reference, value_model, accelerator.autocast, generator)
        metrics = {**policy_update(policy, value_model, optimizer, scheduler, accelerator, rollout, config, kl_coef, shuffle,
                                   nan_guard, step), **experience}
        if generator is not None:
            generator.sync_weights(policy)
        kl_coef = kl_controller.update(metrics.get("kl/ref", 0.0), rollout.num_responses)
        metrics.update({"epoch": stream.fractional_epoch, "time/step_s": time.perf_counter() - step_started,
                        "time/generation_s": rollout.generation_seconds, "nan_skipped": nan_guard.skipped})
        if eval_rows and config.eval_every and step % config.eval_every == 0 and step != steps:
            metrics.update(evaluate_policy(policy, tokenizer, eval_rows, rewards, gold, config, answers_file(config, accelerator, step)))
        metrics.update(monitor.after_step(step, policy, rollout, [rows[i] for i in indices]))
        if step % config.logging_every == 0 or step == steps or monitor.stop:
            logger.log(step, metrics)
        history.append(metrics)
        progress.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics.get('kl/ref', 0.0):.3f}")
        if config.save_every and step % config.save_every == 0 and step != steps and not monitor.stop:
            save_checkpoint(config.output_dir, step, accelerator, policy, optimizer, scheduler, stream,
                            online_state(kl_controller, rewards, monitor, nan_guard, first_eval, history),
                            config.save_total_limit, **checkpointed)
        if monitor.stop:
            break

    final_eval = evaluate_policy(policy, tokenizer, eval_rows, rewards, gold, config, answers_file(config, accelerator, steps)) if eval_rows else {}
    if final_eval:
        logger.log(steps, final_eval)
    logger.close()
    restore_frozen_linears(fp32_weights)
    saved = save_model(accelerator, policy, tokenizer, config.output_dir, merge_lora=config.merge_lora)
    if value_model is not None and accelerator.is_main_process:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in accelerator.unwrap_model(value_model).state_dict().items()}
        save_file(state, f"{config.output_dir}/value_model.safetensors")
    summary = summarize(stage, config, saved, steps, rows, report, history, first_eval, final_eval, time.time() - started)
    summary["nan_skipped"] = nan_guard.skipped
    if accelerator.is_main_process:
        write_json(f"{config.output_dir}/summary.json", summary)
        log.info(format_summary(summary))
    return summary


def _missing_data():
    raise AlignkitError("no prompts: set `data:` to a file of rows with a `prompt` column (e.g. hhh-mini's prompts_train.jsonl)")


def summarize(stage, config, saved, steps, rows, report, history, first_eval, final_eval, seconds) -> dict:
    window = max(1, min(5, len(history) // 4))
    mean = lambda key, part: sum(m.get(key, 0.0) for m in part) / len(part)
    return {
        "stage": stage, "model": str(saved), "steps": steps, "prompts": len(rows), "data": report.as_dict(),
        "advantage": config.advantage, "first_reward": mean("reward", history[:window]), "final_reward": mean("reward", history[-window:]),
        "final_kl": mean("kl/ref", history[-window:]), "final_kl_coef": history[-1].get("kl/coef"),
        "before": first_eval, "after": final_eval, "eval_samples": config.eval_samples,
        "generation_tokens_per_s": mean("throughput/generation_tokens_per_s", history),
        "train_tokens_per_s": mean("throughput/train_tokens_per_s", history), "seconds": seconds,
    }


def format_summary(summary: dict) -> str:
    lines = [f"{summary['stage'].upper()} done in {summary['seconds']:.0f}s: {summary['steps']} steps over {summary['prompts']} prompts "
             f"({summary['data']['dropped']} dropped, {summary['data']['truncated']} truncated)",
             f"  reward {summary['first_reward']:.3f} -> {summary['final_reward']:.3f} (mean of first/last steps), "
             f"KL to reference {summary['final_kl']:.3f} nats/response",
             f"  generation {summary['generation_tokens_per_s']:.0f} tokens/s, training {summary['train_tokens_per_s']:.0f} tokens/s"]
    for key in summary["after"]:
        how = f"{summary['eval_samples']} samples per prompt" if key.startswith("eval/sampled_") else "greedy"
        lines.append(f"  {key}: {summary['before'].get(key, float('nan')):.3f} -> {summary['after'][key]:.3f} (held-out, {how})")
    if summary.get("nan_skipped"):
        lines.append(f"  {summary['nan_skipped']} optimizer steps skipped for NaN/inf loss or gradients")
    lines.append(f"  model saved to {summary['model']}")
    return "\n".join(lines)


def train_ppo(config: PPOConfig) -> dict:
    return train_online(config, "ppo")


def ppo(config: PPOConfig | dict | None = None, **overrides) -> dict:
    """Python entry point: `alignkit.train.ppo({"model": ..., "data": ..., "reward_function": ...})`."""
    values = {**asdict(config), **overrides} if isinstance(config, PPOConfig) else {**(config or {}), **overrides}
    return train_ppo(config_from_dict(PPOConfig, values, "ppo config"))
