"""Configuration: one dataclass per command, loaded from YAML plus `--key value` overrides.

Every field carries its own help text (`metadata["help"]`); unknown keys are errors that
suggest the closest valid key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alignkit.errors import AlignkitError


def option(default: Any, help: str, **kwargs) -> Any:
    """A dataclass field with its help text; mutable defaults are copied per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class ModelArgs:
    """How the trained model is loaded: shared by every training stage."""

    model: str = option("smollm2-135m-instruct", "Hugging Face directory, hub id, run directory or alias (smollm2-135m-instruct, tiny-llama).")
    dtype: str = option("float32", "Weights dtype: float32 (with bf16 autocast, the fast choice on CPU) or bfloat16.")
    mixed_precision: str = option("bf16", "Autocast: bf16 or no. bf16 autocast is ~3x faster than fp32 on CPUs with AVX-512 BF16.")
    trust_remote_code: bool = option(False, "Run model code shipped with a hub model. Off unless you trust the source.")
    gradient_checkpointing: bool = option(False, "Recompute activations in backward to save memory.")
    lora_r: int = option(0, "LoRA rank; 0 trains all weights.")
    lora_alpha: int = option(32, "LoRA scaling numerator (scale = lora_alpha / lora_r).")
    lora_dropout: float = option(0.05, "Dropout on the LoRA input.")
    target_modules: list = option(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "Module names LoRA adapts.")


@dataclass
class TrainArgs(ModelArgs):
    """The optimisation loop shared by every training stage."""

    output_dir: str = option("runs/sft", "Where checkpoints, the final model, metrics.jsonl and TensorBoard logs go.")
    seed: int = option(0, "Seed for data order, initialisation and sampling.")
    learning_rate: float = option(2e-5, "Peak AdamW learning rate.")
    weight_decay: float = option(0.0, "AdamW weight decay (not applied to biases and norms).")
    adam_betas: list = option([0.9, 0.999], "AdamW betas.")
    lr_scheduler: str = option("cosine", "linear, cosine or constant (each after warmup).")
    warmup_ratio: float = option(0.05, "Fraction of optimizer steps spent warming up.")
    num_epochs: float = option(1.0, "Passes over the training data (fractions allowed).")
    max_steps: int = option(-1, "Stop after this many optimizer steps; -1 uses num_epochs.")
    batch_size: int = option(8, "Rows per micro-batch (per process).")
    grad_accum_steps: int = option(1, "Micro-batches per optimizer step.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm; 0 disables.")
    max_length: int = option(512, "Longest tokenized row; longer rows are truncated or dropped (see truncation_mode).")
    truncation_side: str = option("left", "Which end of the prompt is cut when a row is too long: left keeps the prompt's end.")
    truncation_mode: str = option("truncate", "Rows longer than max_length: truncate (keep the completion, cut the prompt) or drop.")
    eval_every: int = option(0, "Evaluate on the held-out split every N optimizer steps (0: only at the end).")
    save_every: int = option(0, "Write a checkpoint every N optimizer steps (0: only the final model).")
    logging_every: int = option(1, "Log metrics every N optimizer steps.")
    report_to: list = option(["jsonl", "tensorboard"], "Metric sinks: jsonl, tensorboard.")

    def validate(self) -> None:
        choose(self, "lr_scheduler", ("linear", "cosine", "constant"))
        choose(self, "truncation_side", ("left", "right"))
        choose(self, "truncation_mode", ("truncate", "drop"))
        choose(self, "mixed_precision", ("bf16", "no"))
        choose(self, "dtype", ("float32", "bfloat16"))
        for key in ("batch_size", "grad_accum_steps", "max_length"):
            if getattr(self, key) < 1:
                raise AlignkitError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.learning_rate <= 0:
            raise AlignkitError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.lora_r < 0:
            raise AlignkitError(f"lora_r must be 0 (full fine-tuning) or a positive rank, got {self.lora_r}")


@dataclass
class SFTConfig(TrainArgs):
    """`alignkit sft`: supervised fine-tuning with loss only on responses."""

    data: str = option("", "Training data: file (jsonl/json/parquet/csv), datasets directory or hub id.")
    data_split: str = option("train", "Split to read from a datasets directory or hub id.")
    eval_data: str = option("", "Held-out data; empty splits eval_fraction off the training data.")
    eval_fraction: float = option(0.05, "Share of training rows held out when eval_data is empty.")
    learning_rate: float = option(2e-5, "Peak AdamW learning rate.")
    merge_lora: bool = option(True, "With LoRA, also save the adapter merged into the base as <output_dir>/model.")


def choose(config, key: str, choices: tuple) -> None:
    """Refuses a value outside `choices`, naming the key and the valid values."""
    value = getattr(config, key)
    if value not in choices:
        raise AlignkitError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}")


def field_help(cls) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _closest(name: str, choices) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(sorted(choices))}"


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Converts a YAML or command-line value to the field's declared type."""
    kind = annotation if isinstance(annotation, type) else typing.get_origin(annotation) or annotation
    if isinstance(annotation, str):  # postponed annotations
        kind = {"int": int, "float": float, "bool": bool, "str": str, "list": list, "dict": dict}.get(annotation, str)
    if isinstance(kind, types.UnionType):
        kind = next((a for a in typing.get_args(annotation) if a is not type(None)), str)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"true", "1", "yes", "on"}:
                return True
            if text in {"false", "0", "no", "off"}:
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind is list:
            if isinstance(value, str):
                parsed = yaml.safe_load(value) if value.strip().startswith("[") else [v.strip() for v in value.split(",") if v.strip()]
                value = parsed
            if not isinstance(value, list):
                raise ValueError(value)
            return value
        if kind is dict:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise ValueError(value)
            return value
        if kind is str:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return "" if value is None else str(value)
    except (TypeError, ValueError, yaml.YAMLError):
        name = getattr(kind, "__name__", str(kind))
        raise AlignkitError(f"{source}: key '{key}' must be {name}, got {value!r}") from None
    return value


def config_from_dict(cls, values: dict, source: str = "config"):
    """Builds `cls` from a dict, refusing unknown keys with the closest valid one."""
    if not isinstance(values, dict):
        raise AlignkitError(f"{source}: the config must be a mapping of key: value, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise AlignkitError(f"{source}: unknown key '{key}'{_closest(name, fields)}")
        kwargs[name] = _coerce(value, hints.get(name, str), name, source)
    config = cls(**kwargs)
    validate = getattr(config, "validate", None)
    if validate:
        validate()
    return config


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise AlignkitError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise AlignkitError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(values, dict):
        raise AlignkitError(f"{path}: the config must be a mapping of key: value, got {type(values).__name__}")
    return values


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`--key value` / `--key=value` / `--flag` pairs into a dict (values stay strings)."""
    values, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise AlignkitError(f"unexpected argument '{arg}': options take the form --key value")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 2
        else:
            value = "true"
            i += 1
        values[key.replace("-", "_")] = value
    return values


def load_config(cls, path: str | Path | None = None, overrides: dict | list[str] | None = None):
    """YAML file (optional) then overrides; returns a validated `cls` instance."""
    values = read_yaml(path) if path else {}
    source = str(path) if path else "command line"
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in overrides or {}:
        if key.replace("-", "_") not in fields:
            raise AlignkitError(f"unknown option '--{key}'{_closest(key.replace('-', '_'), fields)}")
    merged = {str(k).replace("-", "_"): v for k, v in values.items()}
    merged.update({k.replace("-", "_"): v for k, v in (overrides or {}).items()})
    return config_from_dict(cls, merged, source)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def save_config(config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


@dataclass
class DirectAlignmentArgs(TrainArgs):
    """What DPO and KTO share: data, the reference policy and its log-prob cache."""

    data: str = option("", "Training data: file (jsonl/json/parquet/csv), datasets directory or hub id.")
    data_split: str = option("train", "Split to read from a datasets directory or hub id.")
    eval_data: str = option("", "Held-out data; empty splits eval_fraction off the training data.")
    eval_fraction: float = option(0.05, "Share of training rows held out when eval_data is empty.")
    output_dir: str = option("runs/dpo", "Where checkpoints, the final model, metrics.jsonl and TensorBoard logs go.")
    learning_rate: float = option(1e-6, "Peak AdamW learning rate (TRL's DPO default; LoRA wants ~10-100x more).")
    beta: float | None = option(None, "Strength of the pull toward the reference (must be > 0); empty uses the loss's default: 0.1, 2.0 for simpo.")
    reference: str = option("auto", "Reference policy: auto (adapter with LoRA, else copy), copy (a frozen copy), adapter (the LoRA base with adapters off), precompute (log-probs computed once and cached on disk).")
    reference_model: str = option("", "Reference model; empty uses the starting policy (`model`).")
    ref_cache_dir: str = option("", "Folder for precomputed reference log-probs (keyed by model weights and data); empty uses $ALIGNKIT_CACHE/reference_logps.")
    merge_lora: bool = option(True, "With LoRA, also save the adapter merged into the base as <output_dir>/model.")

    def validate(self) -> None:
        super().validate()
        choose(self, "reference", ("auto", "copy", "adapter", "precompute"))
        if isinstance(self.beta, str):  # `_coerce` passes `float | None` values through as given
            self.beta = None if self.beta.strip().lower() in ("", "none", "null") else _coerce(self.beta, float, "beta", "config")
        if self.beta is not None and self.beta <= 0:
            raise AlignkitError(f"beta must be positive (it scales the log-ratios), got {self.beta}; DPO's usual range is 0.01-0.5")
        if self.reference == "adapter" and self.lora_r == 0:
            raise AlignkitError("reference: adapter needs LoRA (set lora_r > 0); full fine-tuning uses reference: copy or precompute")
        if not 0 <= self.eval_fraction < 1:
            raise AlignkitError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")


@dataclass
class DPOConfig(DirectAlignmentArgs):
    """`alignkit dpo`: direct preference optimization and its variants on (prompt, chosen, rejected) pairs."""

    loss_type: str = option("sigmoid", "sigmoid (DPO), ipo, hinge (SLiC), robust (rDPO), simpo (reference-free), orpo (reference-free, adds NLL).")
    label_smoothing: float = option(0.0, "sigmoid: conservative DPO flip rate; robust: the assumed label-noise rate (< 0.5); simpo: smoothing.")
    gamma_beta_ratio: float = option(0.5, "simpo: target margin gamma as a fraction of beta.")

    def validate(self) -> None:
        super().validate()
        choose(self, "loss_type", ("sigmoid", "ipo", "hinge", "robust", "simpo", "orpo"))
        if not 0 <= self.label_smoothing < 0.5:
            raise AlignkitError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


@dataclass
class KTOConfig(DirectAlignmentArgs):
    """`alignkit kto`: Kahneman-Tversky optimization on unpaired (prompt, completion, label) rows."""

    output_dir: str = option("runs/kto", "Where checkpoints, the final model, metrics.jsonl and TensorBoard logs go.")
    learning_rate: float = option(1e-6, "Peak AdamW learning rate (TRL's KTO default; LoRA wants ~10-100x more).")
    beta: float | None = option(None, "Sharpness of the KTO value function (must be > 0); empty uses 0.1.")
    desirable_weight: float = option(1.0, "lambda_D, the weight of desirable rows; keep lambda_D*n_D / (lambda_U*n_U) in [1, 4/3].")
    undesirable_weight: float = option(1.0, "lambda_U, the weight of undesirable rows.")
    from_preference: bool = option(False, "Read (prompt, chosen, rejected) data as one desirable and one undesirable row per pair.")

    def validate(self) -> None:
        super().validate()
        for key in ("desirable_weight", "undesirable_weight"):
            if getattr(self, key) <= 0:
                raise AlignkitError(f"{key} must be positive, got {getattr(self, key)}")
