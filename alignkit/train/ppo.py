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

import math
import time

import torch
from safetensors.torch import save_file

from alignkit.config import PPOConfig, config_with_overrides
from alignkit.data.formats import ANSWER_COLUMNS, PROMPT_KINDS, load_dataset
from alignkit.errors import AlignkitError
from alignkit.models.load import count_parameters, load_policy, resolve_model_path
from alignkit.models.reference import load_reference_model, resolve_strategy
from alignkit.models.wrapping import disable_dropout, strip_wrappers
from alignkit.rl.experience import make_experience
from alignkit.rl.frozen_bf16 import cast_frozen_linears, restore_frozen_linears
from alignkit.rl.kl_control import KL_CONTROLLERS
from alignkit.rl.rewards import FunctionReward, build_rewards
from alignkit.rl.rollout import encode_prompts
from alignkit.rl.value_model import build_value_model
from alignkit.rl.vllm_backend import VLLMGenerator  # vllm itself is imported only when this generator is built
from alignkit.train.loop import BatchStream, build_optimizer, build_scheduler, log, save_model
from alignkit.train.monitor import monitor_or_null
from alignkit.train.online_eval import answers_file, evaluate_policy
from alignkit.train.ppo_update import policy_update
from alignkit.train.run import checkpoint, due, finish_run, log_step, record_config, resume, Run, start_run, steps_left


# ---------------------------------------------------------------- setup helpers

def load_prompts(source: str, split: str, config, tokenizer, stage: str, limit: int = 0):
    """Prompt rows that fit `max_prompt_length`, their token ids, and the report of dropped/truncated ones."""
    rows, fmt = load_dataset(source, PROMPT_KINDS, stage, split, hint="; online RL needs rows with a `prompt` column")
    rows = rows[:limit] if limit else rows
    ids, kept, report = encode_prompts(tokenizer, [r["prompt"] for r in rows], config.max_prompt_length, config.truncation_mode)
    report.finish(rows, report.kept, source)  # the rows reading dropped (null prompts, ...) join the report, counted per reason
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


def load_reference(config, accelerator):
    """A frozen copy of the starting policy, or None to use the LoRA policy with adapters disabled."""
    return load_reference_model(config, accelerator) if resolve_strategy(config) == "copy" else None


def make_generator(config, tokenizer, autocast=None):
    """None (the built-in sampler on the policy, `rl.rollout.generate`) or a vLLM generator (rl/vllm_backend.py)."""
    if config.generation_backend != "vllm":
        return None
    return VLLMGenerator(config, tokenizer, resolve_model_path(config.model), autocast)


def build_online_training(run: Run, policy, value_model, num_prompts: int):
    """(steps, policy, value_model, optimizer, scheduler): one AdamW over the policy and the value model (its own rate if set)."""
    config = run.config
    steps = config.max_steps if config.max_steps > 0 else max(1, math.ceil(num_prompts * config.num_epochs / config.prompts_per_step))
    trainable = torch.nn.ModuleDict({"policy": policy, **({"value": value_model} if value_model is not None else {})})
    value_lr = {"value": config.value_learning_rate} if value_model is not None and config.value_learning_rate > 0 else None
    optimizer = build_optimizer(trainable, config, value_lr)
    scheduler = build_scheduler(optimizer, config, steps * config.ppo_epochs * config.num_minibatches)
    if value_model is not None:
        policy, value_model, optimizer = run.accelerator.prepare(policy, value_model, optimizer)
    else:
        policy, optimizer = run.accelerator.prepare(policy, optimizer)
    n_trainable, n_total = count_parameters(trainable)
    log.info(f"{run.stage.upper()}: {num_prompts} prompts, {steps} steps of {config.prompts_per_step} prompts x {config.group_size}, "
             f"advantage {config.advantage}, KL {config.kl_estimator} in the {config.kl_in}, {n_trainable:,}/{n_total:,} trainable parameters")
    return steps, policy, value_model, optimizer, scheduler


# ---------------------------------------------------------------- checkpoint state beyond weights, optimizer and RNGs

SUMMARY_KEYS = ("reward", "kl/ref", "kl/coef", "throughput/generation_tokens_per_s", "throughput/tokens_per_s", "throughput/train_tokens_per_s")


def online_state(run: Run, kl_controller, rewards, monitor, first_eval: dict) -> dict:
    """The recipe's own state for a checkpoint (JSON): everything `restore_online_state` needs."""
    return {"kl_controller": kl_controller.state_dict(), "rewards": rewards.state_dict(), "monitor": monitor.state_dict(),
            "nan_guard": run.nan_guard.state_dict(), "first_eval": first_eval,
            "history": [{k: m[k] for k in SUMMARY_KEYS if k in m} for m in run.history]}


def restore_online_state(run: Run, kl_controller, rewards, monitor, generator, policy) -> dict | None:
    """Puts `online_state` back after a resume (and the resumed weights into a vLLM generator); returns the step-0
    evaluation (None when the run starts fresh)."""
    state = run.extra
    if not run.start_step:
        return None
    if "kl_controller" not in state:
        raise AlignkitError("resume: the checkpoint was not written by `alignkit ppo` or `alignkit grpo`; resume from one of this run's checkpoint-N folders")
    kl_controller.load_state_dict(state["kl_controller"])
    rewards.load_state_dict(state["rewards"])
    monitor.load_state_dict(state["monitor"])
    run.nan_guard.load_state_dict(state["nan_guard"])
    run.history = state["history"]
    if generator is not None:
        generator.sync_weights(policy)
    return state["first_eval"]


# ---------------------------------------------------------------- the recipe

def train_online(config: PPOConfig, stage: str = "ppo", monitor=None) -> dict:
    """Runs online RL end to end; returns the summary (also in `<output_dir>/summary.json`)."""
    run = start_run(config, stage)
    monitor = monitor_or_null(monitor, config, stage)
    policy, tokenizer = load_policy(config)
    disable_dropout(policy)
    reference = load_reference(config, run.accelerator)
    value_model = build_value_model(config.value_model, config, policy, config.reward_model) if config.advantage == "gae" else None
    rewards = build_rewards(reward_specs(config), config.reward_normalize, config.reward_clip, config.reward_on_invalid, tokenizer=tokenizer)
    gold = FunctionReward(config.eval_reward_function, tokenizer=tokenizer) if config.eval_reward_function else None
    # under bf16 autocast, frozen weights stored in bf16 give the same numbers without a cast per forward
    fp32_weights = cast_frozen_linears(policy) if config.mixed_precision == "bf16" else {}
    if reference is not None and config.mixed_precision == "bf16":
        cast_frozen_linears(reference)
    rows, prompt_ids, report = load_prompts(config.data or _missing_data(), config.data_split, config, tokenizer, stage.upper())
    eval_rows = load_prompts(config.eval_data, "test", config, tokenizer, f"{stage.upper()} evaluation", config.eval_rows)[0] if config.eval_data else []
    record_config(run)
    steps, policy, value_model, optimizer, scheduler = build_online_training(run, policy, value_model, len(rows))
    generator = make_generator(config, tokenizer, run.accelerator.autocast)
    kl_controller = KL_CONTROLLERS[config.kl_control](config.kl_coef, config.kl_target, config.kl_horizon)
    stream = BatchStream(len(rows), config.prompts_per_step, config.seed)
    shuffle = torch.Generator().manual_seed(config.seed)  # minibatch order
    monitor.bind(accelerator=run.accelerator, tokenizer=tokenizer, reference=reference, proxy=rewards, gold=gold)
    checkpointed = dict(modules={"value_model": value_model} if value_model is not None else {}, generators={"shuffle": shuffle})
    resume(run, policy, optimizer, scheduler, stream, **checkpointed)
    evaluate = lambda step: evaluate_policy(policy, tokenizer, eval_rows, rewards, gold, config, answers_file(config, run.accelerator, step)) if eval_rows else {}  # noqa: E731
    first_eval = restore_online_state(run, kl_controller, rewards, monitor, generator, policy)
    first_eval = first_eval if first_eval is not None else start_evaluation(run, evaluate)

    kl_coef = kl_controller.value
    draw_prompts = lambda: next((([prompt_ids[i] for i in idx], [rows[i] for i in idx]) for idx in stream.next_step(1)))  # noqa: E731
    for step in (progress := steps_left(run, steps)):
        step_started = time.perf_counter()
        indices = stream.next_step(1)[0]
        rollout, experience = make_experience(
            strip_wrappers(policy), tokenizer, [prompt_ids[i] for i in indices], [rows[i] for i in indices], config,
            rewards, kl_coef, reference, value_model, run.accelerator.autocast, generator, draw_prompts)
        metrics = {**policy_update(run, policy, value_model, optimizer, scheduler, rollout, config, kl_coef, shuffle, step), **experience}
        if generator is not None:
            metrics.update(generator.sync_weights(policy))
        kl_coef = kl_controller.update(metrics.get("kl/ref", 0.0), rollout.num_responses)
        metrics.update({"epoch": stream.fractional_epoch, "time/step_s": time.perf_counter() - step_started,
                        "time/generation_s": rollout.generation_seconds, "nan_skipped": run.nan_guard.skipped})
        if due(config.eval_every, step, steps):
            metrics.update(evaluate(step))
        metrics.update(monitor.after_step(step, policy, rollout, rollout.prompt_rows))
        log_step(run, step, steps, metrics, force=monitor.stop)
        progress.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics.get('kl/ref', 0.0):.3f}")
        if due(config.save_every, step, steps) and not monitor.stop:
            checkpoint(run, step, policy, optimizer, scheduler, stream, online_state(run, kl_controller, rewards, monitor, first_eval),
                       **checkpointed)
        if monitor.stop:
            break

    final_eval = evaluate(steps)
    restore_frozen_linears(fp32_weights)
    saved = save_model(run.accelerator, policy, tokenizer, config.output_dir, merge_lora=config.merge_lora)
    save_value_model(run, value_model)
    summarize = lambda: {**summarize_run(run, saved, steps, rows, report, first_eval, final_eval), "nan_skipped": run.nan_guard.skipped}  # noqa: E731
    return finish_run(run, steps, final_eval, summarize, format_summary)


def start_evaluation(run: Run, evaluate) -> dict:
    """The held-out evaluation before the first step, logged at step 0 (a resumed run has it from its checkpoint)."""
    first_eval = evaluate(0)
    if first_eval:
        run.logger.log(0, first_eval)
        log.info("before: " + ", ".join(f"{k} {v:.3f}" for k, v in first_eval.items()))
    return first_eval


def save_value_model(run: Run, value_model) -> None:
    """The trained value model's weights as `<output_dir>/value_model.safetensors` (main process)."""
    if value_model is not None and run.accelerator.is_main_process:
        state = {k: v.detach().cpu().contiguous() for k, v in run.accelerator.unwrap_model(value_model).state_dict().items()}
        save_file(state, f"{run.output_dir}/value_model.safetensors")


def _missing_data():
    raise AlignkitError("no prompts: set `data:` to a file of rows with a `prompt` column (e.g. hhh-mini's prompts_train.jsonl)")


def summarize_run(run: Run, saved, steps: int, rows: list, report, first_eval: dict, final_eval: dict) -> dict:
    stage, config, history = run.stage, run.config, run.history
    window = max(1, min(5, len(history) // 4))
    mean = lambda key, part: sum(m.get(key, 0.0) for m in part) / len(part)
    return {
        "stage": stage, "model": str(saved), "steps": steps, "prompts": len(rows), "data": report.as_dict(),
        "advantage": config.advantage, "first_reward": mean("reward", history[:window]), "final_reward": mean("reward", history[-window:]),
        "final_kl": mean("kl/ref", history[-window:]), "final_kl_coef": history[-1].get("kl/coef"),
        "before": first_eval, "after": final_eval, "eval_samples": config.eval_samples,
        "generation_tokens_per_s": mean("throughput/generation_tokens_per_s", history),
        "train_tokens_per_s": mean("throughput/tokens_per_s", history), "seconds": time.time() - run.started,
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


def train_ppo(config: PPOConfig, monitor=None) -> dict:
    return train_online(config, "ppo", monitor)


def ppo(config: PPOConfig | dict | None = None, monitor=None, **overrides) -> dict:
    """Python entry point: `alignkit.train.ppo({"model": ..., "data": ..., "reward_function": ...})`.

    `monitor`: a built monitor (train/monitor.py); `alignkit.ppo(...)` builds one from the config's `monitor:` section.
    """
    return train_ppo(config_with_overrides(PPOConfig, config, overrides, "ppo config"), monitor)
