"""Rejection-sampling fine-tuning (best-of-N): sample N answers per prompt, keep the best by a labeller, SFT on them.

The cheap baseline every RL method must beat (Llama 2's rejection-sampling rounds; RAFT, Dong et al. 2023;
ReST's "grow" and "improve" steps). One round:

    prompts --(model, N samples each)--> records --(labeller)--> best answer per prompt, if >= min_score
            --> <output_dir>/samples.jsonl, best.jsonl, best_of_n.json --> SFT of `model` on best.jsonl

The samples are written before SFT starts, so a run killed while training resumes its SFT from the last
checkpoint without sampling again; delete best.jsonl to sample anew.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from alignkit.config import SFTConfig, config_with_overrides
from alignkit.config_sampling import RejectionSamplingConfig
from alignkit.data.formats import PROMPT_KINDS, load_dataset
from alignkit.errors import AlignkitError
from alignkit.rl.samples import best_of_n, sample_scored
from alignkit.io import write_json, write_jsonl
from alignkit.models.load import load_causal_lm, load_tokenizer
from alignkit.rl.rewards import build_rewards
from alignkit.train.sft import train_sft

log = logging.getLogger("alignkit")


def sample_records(config, rows: list[dict], model_path: str, what: str, label: bool = True) -> list[dict]:
    """`config.samples` answers to each row from `model_path`, labelled by the config's labeller (SamplingArgs) unless
    `label` is False (then scored later, see `rl.samples.label_records`)."""
    rewards = build_rewards(config.reward_specs()) if label else None
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(model_path, config.trust_remote_code, config.chat_template, config.chat_template_path)
    model = load_causal_lm(model_path, trust_remote_code=config.trust_remote_code, allow_unsafe_pickle=config.allow_unsafe_pickle)
    log.info(f"{what}: sampling {config.samples} answers for each of {len(rows)} prompts from {model_path}")
    records = sample_scored(model, tokenizer, rows, rewards, config.samples, config.max_new_tokens, config.temperature,
                            config.top_p, config.sample_batch_size, config.max_prompt_length, config.keep_truncated,
                            bf16=config.mixed_precision == "bf16", greedy=config.greedy)
    if not records:
        raise AlignkitError(f"{what}: every prompt of {config.prompts} is longer than max_prompt_length ({config.max_prompt_length}); "
                            f"raise max_prompt_length")
    return records


def load_prompts(config, what: str) -> list[dict]:
    rows, _ = load_dataset(config.prompts, PROMPT_KINDS, what, config.prompts_split,
                           hint=f"; {what} samples answers to rows with a `prompt` column")
    return rows[:config.limit] if config.limit else rows


def best_of_n_data(config: RejectionSamplingConfig) -> tuple[Path, dict]:
    """<output_dir>/best.jsonl (sampled now, or kept from an earlier run of the same output_dir) and its report."""
    out = Path(config.output_dir)
    best_file, report_file = out / "best.jsonl", out / "best_of_n.json"
    if best_file.is_file() and report_file.is_file():
        log.info(f"rs: reusing the samples in {out} (delete best.jsonl to sample anew)")
        return best_file, json.loads(report_file.read_text())
    records = sample_records(config, load_prompts(config, "rs"), config.model, "rs")
    write_jsonl(records, out / "samples.jsonl")
    rows, report = best_of_n(records, config.min_score)
    log.info(report.summary())
    if not rows:
        raise AlignkitError(f"rs: no prompt's best answer scored at least min_score ({config.min_score}); the {len(records)} prompts' "
                            f"samples are in {out / 'samples.jsonl'}. Lower min_score, or raise samples or temperature")
    write_jsonl(rows, best_file)
    write_json(report_file, dataclasses.asdict(report))  # last: its presence means best.jsonl is complete
    return best_file, dataclasses.asdict(report)


def train_rejection_sampling(config: RejectionSamplingConfig) -> dict:
    """Samples, keeps the best answer per prompt, and fine-tunes `model` on them; returns the SFT summary plus `best_of_n`."""
    best_file, report = best_of_n_data(config)
    sft_keys = {f.name for f in dataclasses.fields(SFTConfig)}
    values = {k: v for k, v in dataclasses.asdict(config).items() if k in sft_keys}
    sft = config_with_overrides(SFTConfig, {**values, "data": str(best_file)}, {}, "rs")
    summary = train_sft(sft)
    summary["best_of_n"] = report
    write_json(Path(config.output_dir) / "summary.json", summary)
    return summary
