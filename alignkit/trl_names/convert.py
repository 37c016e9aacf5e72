"""Reading values as TRL writes them, and the converters of `ALIASES`: (value, context) -> {alignkit key: value} | Ignored."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from alignkit.errors import AlignkitError
from alignkit.trl_names.fields import TRL_STYLE_BATCH



# ---------------------------------------------------------------- reading values as TRL writes them

_TRUE, _FALSE = {"true", "yes", "on"}, {"false", "no", "off"}


def plain(value: Any) -> Any:
    """A command-line string read as YAML would (true, none, 3, 1e-5); other values unchanged."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    if text in ("none", "null", "~", ""):
        return None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return value.strip()


def flag(value: Any, key: str) -> bool:
    value = plain(value)
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise AlignkitError(f"{key} must be true or false, got {value!r}")


def number(value: Any, key: str, whole: bool = False) -> float | int:
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (whole and value != int(value)):
        raise AlignkitError(f"{key} must be {'a whole number' if whole else 'a number'}, got {value!r}")
    return int(value) if whole else value


def words(value: Any) -> list:
    """A list from a list, or from `a,b` / `a b` text."""
    if isinstance(value, str):
        return [w for w in value.replace(",", " ").split() if w]
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass
class Context:
    """What a converter sees: the whole mapping (keys with `_`), the command's defaults and field names."""

    values: dict
    defaults: dict
    fields: frozenset

    def get(self, key: str, default: Any = None) -> Any:
        value = plain(self.values.get(key))
        return default if value is None else value

    def whole(self, key: str, default: Any) -> int:
        return number(self.get(key, default), key, whole=True)


@dataclass(frozen=True)
class Ignored:
    """A converter's answer when the key changes nothing in alignkit; `reason` goes into the warning."""

    reason: str = ""


def refuse(key: str, value: Any, what: str) -> AlignkitError:
    """`key is value: what to do`, the value as the YAML would say it (true, null, 'cosine_with_restarts')."""
    value = plain(value) if plain(value) in (True, False, None) else value
    shown = {True: "true", False: "false", None: "null"}[value] if isinstance(value, bool) or value is None else repr(value)
    return AlignkitError(f"{key} is {shown}: {what}")


# ---------------------------------------------------------------- converters: (value, context) -> {alignkit key: value} | Ignored


def _to(target: str) -> Callable:
    return lambda value, ctx: {target: value}


def _bf16(value, ctx):
    return {"mixed_precision": "bf16" if flag(value, "bf16") else "no"}


def _dtype(value, ctx, key="dtype"):
    text = str(plain(value)).removeprefix("torch.").lower()
    if text in ("float16", "fp16", "half"):
        raise refuse(key, value, "float16 weights are not supported; use bfloat16 (or float32 with bf16 autocast, the default)")
    return {} if text == "auto" else {"dtype": {"bf16": "bfloat16", "fp32": "float32", "float": "float32"}.get(text, text)}


def _use_peft(value, ctx):
    """TRL's `lora_r` counts only with `use_peft: true` (default rank 16); alignkit's `lora_r: 0` is full fine-tuning."""
    return {"lora_r": ctx.whole("lora_r", 16) if flag(value, "use_peft") else 0}


def _target_modules(value, ctx):
    modules = words(value)
    return {} if modules == ["all-linear"] else {"target_modules": modules}  # alignkit's default: every linear layer


SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant"}


def _scheduler(value, ctx):
    if value not in SCHEDULERS:
        raise refuse("lr_scheduler_type", value, f"alignkit has {', '.join(SCHEDULERS)} (each after warmup_ratio's warmup); use one of them")
    return {"lr_scheduler": SCHEDULERS[value]}


def _warmup(value, ctx):
    """transformers: a value below 1 is a fraction of the optimizer steps, else a count, which needs max_steps to become one."""
    steps = number(value, "warmup_steps")
    if steps == 0:
        return {}
    if steps < 1:
        return {"warmup_ratio": steps}
    total = ctx.whole("max_steps", -1)
    if total <= 0 or steps >= total:
        raise refuse("warmup_steps", value, "alignkit warms up over a fraction of the optimizer steps (warmup_ratio), and a step count "
                     "converts only with max_steps set above it; give warmup_ratio (e.g. 0.05) instead")
    return {"warmup_ratio": steps / total}


def _strategy(ctx, key: str, default: str) -> str:
    """An `*_strategy` value (eval_strategy also under its old name); YAML reads an unquoted `no` as false."""
    value = ctx.get(key, ctx.get("evaluation_strategy", default) if key == "eval_strategy" else default)
    return "no" if value is False else str(value)


def _every(target: str, strategy: str, default: str) -> Callable:
    """logging_steps / save_steps / eval_steps, which count only under their `*_strategy: steps`; a fraction is of max_steps."""
    def convert(value, ctx):
        chosen = _strategy(ctx, strategy, default)
        if chosen != "steps":
            return Ignored(f"{strategy} is {chosen}")
        steps = number(value, target.replace("_every", "_steps"))
        if steps < 1:
            total = ctx.whole("max_steps", -1)
            if total <= 0:
                raise refuse(target.replace("_every", "_steps"), value, "a fraction of the run converts to steps only with max_steps set; give a whole number of steps")
            steps = math.ceil(total * steps)
        return {target: int(steps)}
    return convert


def _eval_source(ctx) -> dict | Ignored:
    """TRL evaluates on `dataset_name[dataset_test_split]` when eval_strategy is not `no`; alignkit's eval_data reads a
    source's `test` split, so that maps when the source has splits (a hub id or a datasets folder) and the split is test."""
    strategy = _strategy(ctx, "eval_strategy", "no")
    source, split = ctx.get("dataset_name", ctx.get("data")), ctx.get("dataset_test_split", "test")
    if strategy == "no" or not source:
        return {}
    if Path(str(source)).is_file():
        return Ignored("a single file has no test split; alignkit holds out eval_fraction of it")
    if split != "test":
        return Ignored(f"alignkit reads the held-out split named test, not {split}; set eval_data")
    return {"eval_data": source}


def _eval_strategy(value, ctx):
    if value in ("no", False, "epoch"):
        return Ignored("alignkit evaluates on held-out rows every eval_every steps and at the end")
    source = _eval_source(ctx)
    return {} if isinstance(source, Ignored) else source  # steps: eval_steps carries it; dataset_test_split says why not


def _resume(value, ctx):
    value = plain(value)
    return {"resume": "auto"} if value is True else {} if value is False else {"resume": str(value)}


def _report_to(value, ctx):
    """transformers: "none", "all", a name or a list; alignkit: a list of trackers (metrics.jsonl is always written)."""
    names = words(value) if isinstance(value, str) else value
    if isinstance(names, list) and "none" in names:
        return {"report_to": []}
    return {} if isinstance(names, list) and "all" in names else {"report_to": value}


def _adam_betas(value, ctx):
    betas = list(ctx.get("adam_betas", ctx.defaults.get("adam_betas", [0.9, 0.999])))
    return {"adam_betas": [number(ctx.get("adam_beta1", betas[0]), "adam_beta1"), number(ctx.get("adam_beta2", betas[1]), "adam_beta2")]}


def _truncation_mode(value, ctx):
    """TRL's keep_start / keep_end cut the sequence; alignkit cuts the prompt and keeps the completion (truncate)."""
    cuts = {"keep_start": {"truncation_mode": "truncate"}, "keep_end": {"truncation_mode": "truncate", "truncation_side": "left"}}
    return cuts.get(value, {"truncation_mode": value}) if isinstance(value, str) else {"truncation_mode": value}


def _precompute(value, ctx):
    return {"reference": "precompute"} if flag(value, "precompute_ref_log_probs") else {}


def _padding_free(value, ctx):
    return {"packing": True} if flag(value, "padding_free") else {}


def _use_vllm(value, ctx):
    return {"generation_backend": "vllm"} if flag(value, "use_vllm") else {}


def _scale_rewards(value, ctx):
    value = value.strip().lower() if isinstance(value, str) else value
    table = {True: True, "true": True, "group": True, False: False, "false": False, "none": False}
    if value not in table:
        raise refuse("scale_rewards", value, "alignkit scales by the group's reward std (group, true) or not at all (none, false); "
                     "batch scaling is not available")
    return {"scale_rewards": table[value]}


def _sampling_level(value, ctx):
    levels = {"token": {}, "sequence": {"policy_loss": "gspo"}}
    if value not in levels:
        raise refuse("importance_sampling_level", value, "use token or sequence (GSPO)")
    return levels[value]


DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust")  # TRL's DPO loss_type values alignkit's PREFERENCE_LOSSES also has


def _dpo_loss(value, ctx):
    losses = words(value)
    if len(losses) != 1:
        raise refuse("loss_type", value, "alignkit trains one loss; keep one of sigmoid, ipo, hinge, robust "
                     "(an added sft loss is rpo_alpha: 1.0)")
    if losses[0] not in DPO_LOSSES:
        raise refuse("loss_type", value, f"not an alignkit DPO loss; use {', '.join(DPO_LOSSES)} (alignkit also has simpo and orpo, as loss:)")
    return {"loss": losses[0]}


# TRL GRPO loss_type -> alignkit loss_aggregation (the loss is PPO's clipped surrogate in both)
GRPO_LOSSES = {"grpo": "sequence_mean", "dr_grpo": "constant", "dapo": "token_mean", "bnpo": "token_mean"}


def _grpo_loss(value, ctx):
    if value not in GRPO_LOSSES:
        raise refuse("loss_type", value, f"alignkit's GRPO aggregates the loss as {', '.join(GRPO_LOSSES)} do; use one of them")
    return {"loss_aggregation": GRPO_LOSSES[value]}


def _only(key: str, allowed: str, what: str) -> Callable:
    def check(value, ctx):
        if value != allowed:
            raise refuse(key, value, what)
        return {}
    return check


def _rollout(value, ctx):
    """TRL's GRPO batch in alignkit's rollout terms. TRL generates generation_batch_size completions (default
    per_device_train_batch_size x steps_per_generation, and steps_per_generation defaults to gradient_accumulation_steps),
    then takes an optimizer step every gradient_accumulation_steps micro-batches of per_device_train_batch_size. alignkit:
    prompts_per_step x group_size completions per rollout, num_minibatches optimizer steps per pass, batch_size per forward."""
    size = ctx.whole("per_device_train_batch_size", ctx.get("batch_size", 8))
    accumulate = ctx.whole("gradient_accumulation_steps", 1)
    total, steps = ctx.get("generation_batch_size"), ctx.get("steps_per_generation")
    if total is not None and steps is not None:
        raise refuse("generation_batch_size", total, "TRL takes generation_batch_size or steps_per_generation, not both; remove one")
    if total is not None:
        total = number(total, "generation_batch_size", whole=True)
        if total % size:
            raise refuse("generation_batch_size", total, f"must be a multiple of per_device_train_batch_size ({size})")
        steps = total // size
    steps = number(steps, "steps_per_generation", whole=True) if steps is not None else accumulate
    total, group = size * steps, ctx.whole("num_generations", ctx.get("group_size", ctx.defaults.get("group_size", 1)))
    if total % group:
        raise AlignkitError(f"TRL's rollout of per_device_train_batch_size x steps_per_generation = {size} x {steps} = {total} completions "
                            f"must hold whole groups of num_generations ({group}); change one of them")
    if steps % accumulate:
        raise AlignkitError(f"steps_per_generation ({steps}) must be a multiple of gradient_accumulation_steps ({accumulate}): "
                            f"each rollout is spent in whole optimizer steps")
    out = {"prompts_per_step": total // group, "num_minibatches": steps // accumulate, "grad_accum_steps": 1}
    if "per_device_train_batch_size" in ctx.values:
        out["batch_size"] = size
    return out


def _generation_batch(value, ctx):
    """alignkit's generation_batch_size chunks a rollout's generate calls; in a TRL file (TRL's batch keys present) it is
    TRL's rollout size, read by `_rollout`."""
    return {} if any(key in ctx.values for key in TRL_STYLE_BATCH) else {"generation_batch_size": value}


def _rl_max_steps(value, ctx):
    """TRL counts optimizer steps; alignkit's RL counts rollouts, each num_iterations x num_minibatches optimizer steps."""
    if not any(key in ctx.values for key in TRL_STYLE_BATCH + ("num_iterations",)) or number(value, "max_steps", whole=True) < 1:
        return {"max_steps": value}
    rollout = _rollout(None, ctx) if any(key in ctx.values for key in TRL_STYLE_BATCH) else {"num_minibatches": 1}
    per_rollout = ctx.whole("num_iterations", 1) * rollout["num_minibatches"]
    return {"max_steps": math.ceil(number(value, "max_steps", whole=True) / per_rollout)}


def _max_new_tokens(value, ctx):
    """max_completion_length; max_length (prompt + response) grows to hold it when the file does not set one."""
    out = {"max_new_tokens": value}
    if ctx.get("max_length") is None and "max_length" in ctx.defaults:
        need = ctx.whole("max_prompt_length", ctx.defaults["max_prompt_length"]) + number(value, "max_completion_length", whole=True)
        if need > ctx.defaults["max_length"]:
            out["max_length"] = need
    return out


TRL_REWARDS = ("accuracy_reward", "reasoning_accuracy_reward", "think_format_reward", "get_soft_overlong_punishment")


def _reward_function(spec: str) -> str:
    """TRL's dotted path (`my_lib.rewards.fn`, imported from the working directory) as alignkit's `module:function`,
    or `file.py:function` when that file is in the working directory."""
    if spec in TRL_REWARDS:
        raise refuse("reward_funcs", spec, "TRL's built-in rewards do not ship with alignkit; write the function as "
                     "fn(prompts, completions, **columns) -> list of floats and name it my_module.fn")
    if ":" in spec or "." not in spec:
        return spec  # alignkit's own form, or an alias such as hhh-mini-gold
    module, _, name = spec.rpartition(".")
    file = Path(*module.split(".")).with_suffix(".py")
    return f"{file}:{name}" if file.is_file() else f"{module}:{name}"


def _rewards(value, ctx):
    """reward_model_name_or_path and reward_funcs (TRL's order: the model first), weighted by reward_weights."""
    sources = [("model", ctx.get(key)) for key in ("reward_model_name_or_path", "reward_model_path") if ctx.get(key)]
    sources += [("function", _reward_function(str(spec))) for spec in words(ctx.get("reward_funcs", []))]
    weights = [number(w, "reward_weights") for w in words(ctx.get("reward_weights", []))] or [1.0] * len(sources)
    if len(weights) != len(sources):
        raise refuse("reward_weights", ctx.get("reward_weights"), f"give one weight per reward ({len(sources)}: the reward model first, then reward_funcs)")
    if not sources:
        return {}
    if len(sources) == 1 and weights == [1.0]:
        kind, spec = sources[0]
        return {"reward_model" if kind == "model" else "reward_function": spec}
    return {"rewards": [{"type": kind, ("path" if kind == "model" else "function"): spec, "weight": weight}
                        for (kind, spec), weight in zip(sources, weights)]}
