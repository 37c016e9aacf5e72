"""TRL's argument names read as alignkit's, so a config file written for `trl sft --config x.yaml` runs unchanged.

TRL's scripts read one YAML into three dataclasses: the trainer's config (`SFTConfig`, `DPOConfig`, `GRPOConfig`,
`KTOConfig`, `RewardConfig`: transformers' `TrainingArguments` plus TRL's own fields), `ModelConfig` and
`ScriptArguments`. For one alignkit command, `translate` reads each key of such a mapping as one of:

- alignkit's own key (`learning_rate`, `seed`, `lora_r`, ...; many are TRL's names too): kept;
- an alias in `ALIASES` (`model_name_or_path` -> `model`, `bf16: false` -> `mixed_precision: no`): renamed, its value
  converted where the two libraries differ. An alias applies to a command only when that command's config has the
  alignkit key (GRPO's `beta` is `kl_coef`; DPO's `beta` is DPO's own `beta`);
- refused (`REFUSED`) unless it holds a value that changes nothing (`fp16: true`, `load_in_4bit: true`): one sentence
  saying what to do instead;
- ignored: a name TRL's classes for this command define and alignkit has no use for (`do_eval`, `eval_strategy`,
  `dataloader_num_workers`, ...). It is accepted and listed in one warning.

A name that neither alignkit nor TRL's classes for the command know stays an unknown key ("did you mean").
A TRL null means "not set" (TRL's default), so alignkit's default applies. Conflicts (a TRL key and its alignkit
name with different values) are settled by `alignkit.config_loader`, which also types the values.
The README's table of names is `markdown_table`, checked against the README by tests/test_trl_names.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from alignkit.errors import AlignkitError
from alignkit.trl_names.convert import Context, DPO_LOSSES, GRPO_LOSSES, Ignored, _adam_betas, _bf16, _dpo_loss, _dtype, _eval_source, _eval_strategy, _every, _generation_batch, _grpo_loss, _max_new_tokens, _only, _padding_free, _precompute, _report_to, _resume, _rewards, _rl_max_steps, _rollout, _sampling_level, _scale_rewards, _scheduler, _target_modules, _to, _truncation_mode, _use_peft, _use_vllm, _warmup, plain, refuse
from alignkit.trl_names.fields import COMMANDS, OFFLINE, RL, names_for, stage_of



# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Alias:
    """A TRL name read as an alignkit key. `convert(value, ctx)` returns {alignkit key: value} (default: `target`
    unchanged) or `Ignored`; `stages` limits it to some alignkit commands; `consumes` are keys whose TRL meaning it
    reads, so they are not also read as alignkit's (`use_peft` reads `lora_r`); `rule` says the value rule in words."""

    trl: str
    target: str
    rule: str = ""
    convert: Callable | None = None
    stages: tuple = ()
    consumes: tuple = ()


ALIASES = (
    # ModelConfig
    Alias("model_name_or_path", "model"),
    Alias("dtype", "dtype", "`auto` -> alignkit's default (float32 + bf16 autocast); float16 refused", _dtype),
    Alias("torch_dtype", "dtype", "as `dtype`", lambda v, ctx: _dtype(v, ctx, "torch_dtype")),
    Alias("use_peft", "lora_r", "`true` -> `lora_r` (TRL's default 16); `false` -> `lora_r: 0` (full fine-tuning)", _use_peft, consumes=("lora_r",)),
    Alias("lora_target_modules", "target_modules", "`all-linear` -> alignkit's default (every linear layer of Llama-style models)", _target_modules),
    # ScriptArguments (and GRPO's)
    Alias("dataset_name", "data"),
    Alias("dataset_train_split", "data_split"),
    Alias("dataset_test_split", "eval_data", "with `eval_strategy` on and a hub id / datasets folder: `eval_data` = `dataset_name` "
          "(its `test` split); a single file: ignored (alignkit holds out `eval_fraction`)", lambda v, ctx: _eval_source(ctx)),
    Alias("reward_funcs", "reward_function", "`pkg.module.fn` -> `pkg.module:fn` (or `pkg/module.py:fn` in the working directory); "
          "several, or with `reward_weights` -> `rewards:`", _rewards, RL),
    Alias("reward_model_name_or_path", "reward_model", "with `reward_funcs` -> `rewards:`", _rewards, RL),
    Alias("reward_model_path", "reward_model", "as `reward_model_name_or_path`", _rewards, RL),
    Alias("reward_weights", "rewards", "the weights of `rewards:` entries", _rewards, RL),
    # TrainingArguments
    Alias("per_device_train_batch_size", "batch_size", stages=OFFLINE),
    Alias("gradient_accumulation_steps", "grad_accum_steps", stages=OFFLINE),
    Alias("per_device_train_batch_size", "batch_size", "and, with `gradient_accumulation_steps`, `steps_per_generation`, "
          "`generation_batch_size` and `num_generations`: `prompts_per_step`, `num_minibatches` (TRL's rollout)", _rollout, RL,
          consumes=("generation_batch_size",)),
    Alias("gradient_accumulation_steps", "prompts_per_step", "as `per_device_train_batch_size`; `grad_accum_steps` stays 1", _rollout, RL,
          consumes=("generation_batch_size",)),
    Alias("steps_per_generation", "num_minibatches", "as `per_device_train_batch_size`", _rollout, RL, consumes=("generation_batch_size",)),
    Alias("generation_batch_size", "generation_batch_size", "with TRL's batch keys: TRL's rollout size (see `per_device_train_batch_size`)",
          _generation_batch, RL),
    Alias("max_steps", "max_steps", "with TRL's batch keys: optimizer steps -> rollouts (/ `num_iterations` x `num_minibatches`)", _rl_max_steps, RL),
    Alias("num_train_epochs", "num_epochs"),
    Alias("lr_scheduler_type", "lr_scheduler", "linear, cosine, constant; `constant_with_warmup` -> constant; others refused", _scheduler),
    Alias("warmup_steps", "warmup_ratio", "below 1: the ratio; a count: / `max_steps` (refused without it)", _warmup),
    Alias("adam_beta1", "adam_betas", "`[adam_beta1, adam_beta2]`", _adam_betas),
    Alias("adam_beta2", "adam_betas", "`[adam_beta1, adam_beta2]`", _adam_betas),
    Alias("bf16", "mixed_precision", "`true` -> `bf16`, `false` -> `no`", _bf16),
    Alias("logging_steps", "logging_every", "under `logging_strategy: steps` (the default)", _every("logging_every", "logging_strategy", "steps")),
    Alias("save_steps", "save_every", "under `save_strategy: steps` (the default)", _every("save_every", "save_strategy", "steps")),
    Alias("eval_steps", "eval_every", "under `eval_strategy: steps` (TRL's default `no` ignores it)", _every("eval_every", "eval_strategy", "no")),
    Alias("eval_strategy", "eval_data", "see `dataset_test_split`; `epoch` ignored", _eval_strategy),
    Alias("evaluation_strategy", "eval_data", "as `eval_strategy`", _eval_strategy),
    Alias("report_to", "report_to", "`none` -> `[]` (metrics.jsonl is always written); `all` -> alignkit's default", _report_to),
    Alias("project", "tracker_project"),
    Alias("resume_from_checkpoint", "resume", "`true` -> `auto`; a path stays", _resume),
    Alias("hub_private_repo", "hub_private"),
    # SFTConfig
    Alias("max_seq_length", "max_length", stages=("SFTConfig",)),
    Alias("padding_free", "packing", "`true` -> `packing: true` (padding-free batches)", _padding_free, ("SFTConfig",)),
    Alias("loss_type", "", "`nll` only (`dft` refused)", _only("loss_type", "nll", "alignkit's SFT loss is the NLL of the completion; remove loss_type"), ("SFTConfig",)),
    Alias("truncation_mode", "truncation_mode", "`keep_start` / `keep_end` -> `truncate` (alignkit cuts the prompt, keeps the completion)",
          _truncation_mode, OFFLINE),
    # DPOConfig, KTOConfig
    Alias("loss_type", "loss", f"one of {', '.join(DPO_LOSSES)} (a one-item list too); others refused", _dpo_loss, ("DPOConfig",)),
    Alias("loss_type", "", "`kto` only", _only("loss_type", "kto", "alignkit's KTO loss is kto; remove loss_type"), ("KTOConfig",)),
    Alias("precompute_ref_log_probs", "reference", "`true` -> `reference: precompute`", _precompute, ("DPOConfig", "KTOConfig")),
    # GRPOConfig
    Alias("num_generations", "group_size", stages=RL),
    Alias("max_completion_length", "max_new_tokens", "`max_length` grows to `max_prompt_length` + it when not set", _max_new_tokens, RL),
    Alias("beta", "kl_coef", "GRPO's KL coefficient", stages=RL),
    Alias("epsilon", "clip_range", stages=RL),
    Alias("epsilon_high", "clip_range_high", stages=RL),
    Alias("num_iterations", "ppo_epochs", stages=RL),
    Alias("entropy_coef", "ent_coef", stages=RL),
    Alias("loss_type", "loss_aggregation", ", ".join(f"`{k}` -> `{v}`" for k, v in GRPO_LOSSES.items()) + "; others refused", _grpo_loss, RL),
    Alias("scale_rewards", "scale_rewards", "`group`/`true` -> `true`, `none`/`false` -> `false`; `batch` refused", _scale_rewards, RL),
    Alias("use_vllm", "generation_backend", "`true` -> `vllm`", _use_vllm, RL),
    Alias("vllm_server_base_url", "vllm_server_url", stages=RL),
    Alias("importance_sampling_level", "policy_loss", "`sequence` -> `gspo` (GSPO's sequence-level ratio); `token` -> alignkit's default",
          _sampling_level, RL),
)

_FP16 = "alignkit trains float32 or bfloat16 weights with bf16 autocast, not fp16; remove it (bf16: true is the default)"
_NO_KERNEL = "changes the algorithm in a way alignkit does not implement; remove it"
# TRL name -> (values that change nothing, what to do otherwise)
REFUSED = {
    "fp16": ((False,), _FP16),
    "fp16_full_eval": ((False,), _FP16),
    "load_in_4bit": ((False,), "bitsandbytes quantization is not supported; remove it and train LoRA on bfloat16 or float32 weights"),
    "load_in_8bit": ((False,), "bitsandbytes quantization is not supported; remove it and train LoRA on bfloat16 or float32 weights"),
    "use_dora": ((False,), "DoRA is not supported; remove it to train plain LoRA"),
    "use_rslora": ((False,), "rank-stabilised LoRA is not supported; remove it (alignkit scales by lora_alpha / lora_r)"),
    "lora_target_parameters": (([],), "LoRA on parameters is not supported; use lora_target_modules"),
    "model_revision": (("main",), "alignkit loads the default revision; download the one you want and give its folder as model_name_or_path"),
    "dataset_config": ((), "alignkit reads a hub dataset's default configuration; save the one you want with save_to_disk and give that folder as dataset_name"),
    "datasets": (([],), "dataset mixtures are not read; give one dataset as dataset_name"),
    "dataset_text_field": (("text",), "alignkit reads text rows from a column named text (or messages); rename the column"),
    "completion_only_loss": ((True,), "alignkit's SFT loss covers completions (and assistant turns) only; remove it"),
    "chat_template_path": ((), "alignkit renders with the tokenizer's own chat template; save the tokenizer with yours and give that folder as model_name_or_path"),
    "optim": (("adamw_torch", "adamw_torch_fused", "adamw_hf"), "alignkit trains with torch's AdamW; use optim: adamw_torch or remove it"),
    "deepspeed": (("",), "run DeepSpeed through `accelerate launch --config_file configs/accelerate/... -m alignkit ...`; remove it"),
    "fsdp": (("", []), "run FSDP through `accelerate launch --config_file configs/accelerate/... -m alignkit ...`; remove it"),
    "neftune_noise_alpha": ((), "NEFTune embedding noise " + _NO_KERNEL),
    "delta": ((), "two-sided clipping " + _NO_KERNEL),
    "top_k": ((0,), "top-k sampling is not available (alignkit samples with temperature and top_p); remove it"),
    "min_p": ((), "min-p sampling is not available (alignkit samples with temperature and top_p); remove it"),
    "repetition_penalty": ((1, 1.0), "a repetition penalty in sampling " + _NO_KERNEL),
    "sync_ref_model": ((False,), "syncing the reference model (TR-DPO) " + _NO_KERNEL),
    "use_weighting": ((False,), "WPO weighting " + _NO_KERNEL),
    "f_divergence_type": (("reverse_kl",), "other f-divergences " + _NO_KERNEL),
    "reference_free": ((False,), "use loss: simpo or orpo for a reference-free loss"),
    "top_entropy_quantile": ((1, 1.0), "training on high-entropy tokens only " + _NO_KERNEL),
    "use_adaptive_entropy": ((False,), "an adaptive entropy bonus " + _NO_KERNEL),
    "off_policy_mask_threshold": ((), "off-policy masking " + _NO_KERNEL),
    "ld_alpha": ((), "LD-DPO " + _NO_KERNEL),
}

_BY_NAME: dict[str, list[Alias]] = {}
for _alias in ALIASES:
    _BY_NAME.setdefault(_alias.trl, []).append(_alias)


def alias_for(key: str, cls, fields) -> Alias | None:
    """The alias of `key` for this command: the first whose stages include it and whose alignkit key it has."""
    mro = {base.__name__ for base in cls.__mro__}
    return next((a for a in _BY_NAME.get(key, ()) if (not a.stages or mro & set(a.stages)) and (not a.target or a.target in fields)), None)


# ---------------------------------------------------------------- translating one mapping


@dataclass
class Translation:
    """alignkit key -> [(key as written, alignkit value, value as written), ...] in the mapping's order; the TRL keys
    with no effect, as warned about."""

    candidates: dict = field(default_factory=dict)
    ignored: list = field(default_factory=list)

    def add(self, target: str, key: str, value: Any, written: Any = None) -> None:
        self.candidates.setdefault(target, []).append((key, value, value if written is None else written))


def _defaults(cls) -> dict:
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default for f in dataclasses.fields(cls)}


def translate(cls, values: dict, preferred=frozenset()) -> Translation | None:
    """Reads `values` (a TRL or alignkit mapping, or a mix) for the command of config class `cls`; None for a class that
    is no training stage. `preferred` keys (the command line's) are never consumed by another key's TRL meaning."""
    names = names_for(cls)
    if names is None:
        return None
    fields = frozenset(f.name for f in dataclasses.fields(cls))
    ctx = Context({str(k).replace("-", "_"): v for k, v in values.items()}, _defaults(cls), fields)
    aliases = {key: alias_for(key, cls, fields) for key in ctx.values if key in names}
    consumed = {c for key, alias in aliases.items() if alias and plain(ctx.values[key]) is not None for c in alias.consumes} - set(preferred)
    out = Translation()
    for key, value in ctx.values.items():
        if key not in names:  # alignkit's own key, or one nobody knows (config_from_dict says so)
            out.add(key, key, value)
        elif key in consumed or value is None or value == "null":  # read through another key, or TRL's "not set"
            continue
        elif key in REFUSED and key not in fields:
            harmless, what = REFUSED[key]
            if plain(value) not in harmless:
                raise refuse(key, value, what)
        elif aliases[key]:
            _apply(out, aliases[key], key, value, ctx)
        elif key in fields:
            out.add(key, key, value)
        else:
            out.ignored.append(key)
    return out


def _apply(out: Translation, alias: Alias, key: str, value: Any, ctx: Context) -> None:
    try:
        result = (alias.convert or _to(alias.target))(value, ctx)
    except (TypeError, ValueError):  # a list or mapping where TRL takes a word or number
        raise AlignkitError(f"key '{key}' cannot be {value!r}; give it a value of the kind TRL's {key} takes") from None
    if isinstance(result, Ignored):
        out.ignored.append(f"{key} ({result.reason})" if result.reason else key)
        return
    for target, converted in result.items():
        if target in ctx.fields:
            out.add(target, key, converted, value)


# ---------------------------------------------------------------- the README's table


def _shown(value: Any) -> str:
    """A value as YAML writes it: false, "", []."""
    if isinstance(value, bool):
        return str(value).lower()
    return '""' if value == "" else str(value)


def markdown_table(classes) -> str:
    """The README's table of TRL names for alignkit's stage config `classes`: aliases, same names, refused, ignored."""
    stages = [cls for cls in classes if stage_of(cls)]
    lines = ["| TRL name | alignkit key | commands | value |", "|---|---|---|---|"]
    for alias in ALIASES:
        used = [COMMANDS[stage_of(c)] for c in stages if alias.trl in names_for(c) and alias_for(alias.trl, c, {f.name for f in dataclasses.fields(c)}) is alias]
        if used:
            target = f"`{alias.target}`" if alias.target else "(checked only)"
            lines.append(f"| `{alias.trl}` | {target} | {', '.join(dict.fromkeys(used))} | {alias.rule} |")
    same, ignored = set(), set()
    for cls in stages:
        fields = {f.name for f in dataclasses.fields(cls)}
        for name in names_for(cls):
            if name in fields and not alias_for(name, cls, fields):
                same.add(name)
            elif name not in fields and name not in REFUSED and not alias_for(name, cls, fields):
                ignored.add(name)
    refused = [f"`{name}` (unless {' / '.join(f'`{_shown(v)}`' for v in harmless) or 'null'}): {what}" for name, (harmless, what) in REFUSED.items()
               if any(name in names_for(c) and name not in {f.name for f in dataclasses.fields(c)} for c in stages)]
    return "\n".join(lines + [
        "", "Same name and meaning in both: " + ", ".join(f"`{n}`" for n in sorted(same)) + ".",
        "", "Refused, with this sentence, unless set to the value shown:", "", *(f"- {line}" for line in refused),
        "", "Accepted and ignored (listed in one warning when a file sets them): " + ", ".join(f"`{n}`" for n in sorted(ignored)) + "."])
