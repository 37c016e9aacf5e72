"""Stage 1, supervised fine-tuning: teach the model the format and style of good answers.

config -> setup (model, data, optimizer) -> loop (accumulate, clip, step, log, eval, save) -> save.
The loss is the mean NLL of completion tokens only (prompt and template tokens carry
mask 0), computed with the LM head applied to those positions alone.
"""

from __future__ import annotations

import math
import time
from functools import partial

import torch

from alignkit.config import SFTConfig, config_with_overrides
from alignkit.data.collate import collate_lm, collate_packed
from alignkit.data.formats import load_with_holdout
from alignkit.data.tokenize import tokenize_sft
from alignkit.errors import AlignkitError
from alignkit.losses.sft import sft_loss
from alignkit.models.load import count_parameters, load_policy
from alignkit.models.logprobs import token_logprobs
from alignkit.models.wrapping import is_sharded
from alignkit.train.loop import BatchStream, global_sum, log, save_model
from alignkit.train.run import (
    build_training, checkpoint, due, finish_run, first_and_last_loss, log_step, optimizer_step, record_config, resume, Run,
    start_run, step_timing, steps_left,
)

SFT_KINDS = ("language_modeling", "prompt_completion")


def load_sft_data(config: SFTConfig, tokenizer):
    """Tokenized train and held-out examples, with the report of truncated and dropped rows."""
    if not config.data:
        raise AlignkitError("no training data: set `data:` in the config or pass --data FILE")
    rows, fmt, eval_rows, eval_fmt = load_with_holdout(config.data, SFT_KINDS, "SFT", config.data_split, config.eval_fraction, config.seed,
                                                       hint="; preference data goes to `alignkit reward` or `alignkit dpo`",
                                                       eval_data=config.eval_data)
    tokenize = dict(max_length=config.max_length, truncation_side=config.truncation_side, truncation_mode=config.truncation_mode)
    train, report = tokenize_sft(rows, fmt, tokenizer, **tokenize)
    held_out, eval_report = tokenize_sft(eval_rows, eval_fmt, tokenizer, **tokenize) if eval_rows else ([], None)
    log.info(report.summary(f"{config.data} ({fmt})"))
    if eval_report:
        log.info(eval_report.summary("held-out"))
    return train, held_out, report, eval_report


def batch_loss(model, batch, num_items=None):
    """SFT loss of one padded or packed batch; `num_items` is the token count the whole step divides by."""
    logps, _ = token_logprobs(model, batch["input_ids"], batch.get("attention_mask"), batch["loss_mask"], batch.get("position_ids"))
    return sft_loss(logps, batch["loss_mask"], num_items)


@torch.no_grad()
def evaluate_sft(model, examples, pad_id, batch_size, accelerator) -> dict:
    """Held-out token NLL and perplexity."""
    model.eval()
    total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    stride = batch_size * accelerator.num_processes
    for first in range(0, len(examples), stride):
        start = first + accelerator.process_index * batch_size
        own = start < len(examples)
        if not own and not is_sharded(model):
            break
        # FSDP gathers the parameters in every forward, so all processes run each one: one without rows left scores row 0 and drops it
        batch = {k: v.to(accelerator.device) for k, v in collate_lm(examples[start:start + batch_size] if own else examples[:1], pad_id).items()}
        with accelerator.autocast():
            logps, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        if own:
            total += -(logps * batch["loss_mask"]).sum()
            count += batch["loss_mask"].sum()
    total, count = global_sum(accelerator, total), global_sum(accelerator, count)
    model.train()
    loss = (total / count.clamp(min=1)).item()
    return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50))}


def sft_step(run: Run, model, optimizer, scheduler, micro_batches: list[dict], step: int) -> dict:
    """One optimizer step; each micro-batch's loss divides by the whole step's token count."""
    accelerator = run.accelerator
    num_items = global_sum(accelerator, sum(b["loss_mask"].sum() for b in micro_batches).to(accelerator.device))

    def micro_loss(batch):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        return batch_loss(model, batch, num_items)[0], None

    result = optimizer_step(run, model, optimizer, scheduler, micro_batches, micro_loss, step)
    step_loss = torch.zeros((), device=accelerator.device)
    for loss in result.losses:
        step_loss += loss
    tokens = sum(b["input_ids"].numel() if "position_ids" in b else int(b["attention_mask"].sum()) for b in micro_batches)
    metrics = {"loss": global_sum(accelerator, step_loss).item(), "lr": scheduler.get_last_lr()[0],
               "tokens": int(global_sum(accelerator, torch.tensor(tokens)))}
    if result.grad_norm is not None:
        metrics["grad_norm"] = float(result.grad_norm)
    return metrics


def train_sft(config: SFTConfig) -> dict:
    """Runs SFT end to end and returns the summary (also written to `<output_dir>/summary.json`)."""
    run = start_run(config, "sft")
    model, tokenizer = load_policy(config)
    train, held_out, report, eval_report = load_sft_data(config, tokenizer)
    record_config(run)
    steps, model, optimizer, scheduler = build_training(run, model, len(train))
    stream = BatchStream(len(train), config.batch_size, config.seed, run.accelerator.process_index, run.accelerator.num_processes)
    resume(run, model, optimizer, scheduler, stream)
    trainable, total = count_parameters(model)
    log.info(f"SFT: {len(train)} rows, {steps} steps, {trainable:,}/{total:,} trainable parameters")
    collate = collate_packed if config.packing else partial(collate_lm, pad_token_id=tokenizer.pad_token_id)
    evaluate = partial(evaluate_sft, model, held_out, tokenizer.pad_token_id, config.batch_size, run.accelerator)

    model.train()
    for step in (progress := steps_left(run, steps, mininterval=5)):
        run.throughput.start()
        micro_batches = [collate([train[i] for i in rows]) for rows in stream.next_step(config.grad_accum_steps)]
        metrics = sft_step(run, model, optimizer, scheduler, micro_batches, step)
        metrics.update({"epoch": stream.fractional_epoch, **step_timing(run, metrics.pop("tokens")), "nan_skipped": run.nan_guard.skipped})
        if held_out and due(config.eval_every, step, steps):
            metrics.update(evaluate())
        log_step(run, step, steps, metrics)
        progress.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['throughput/tokens_per_s']:.0f}")
        if due(config.save_every, step, steps):
            checkpoint(run, step, model, optimizer, scheduler, stream)

    final_eval = evaluate() if held_out else {}
    saved = save_model(run.accelerator, model, tokenizer, config.output_dir, merge_lora=config.merge_lora)
    summarize = lambda: {  # noqa: E731
        "stage": "sft", "model": str(saved), "steps": steps, "train_rows": len(train), "eval_rows": len(held_out),
        "data": report.as_dict(), "eval_data": eval_report.as_dict() if eval_report else None, **first_and_last_loss(run),
        "nan_skipped": run.nan_guard.skipped, **final_eval, "tokens_per_s": run.throughput.mean, "seconds": time.time() - run.started,
    }
    return finish_run(run, steps, final_eval, summarize, format_summary)


def format_summary(summary: dict) -> str:
    lines = [f"SFT done in {summary['seconds']:.0f}s: {summary['steps']} steps over {summary['train_rows']} rows "
             f"({summary['data']['truncated']} truncated, {summary['data']['dropped']} dropped), "
             f"{summary['tokens_per_s']:.0f} tokens/s"]
    if summary["first_loss"] is not None:
        lines.append(f"  train loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}")
    if summary["nan_skipped"]:
        lines.append(f"  {summary['nan_skipped']} steps skipped for NaN/inf loss or gradients")
    if "eval/loss" in summary:
        lines.append(f"  held-out loss {summary['eval/loss']:.3f}, perplexity {summary['eval/perplexity']:.2f}")
    lines.append(f"  model saved to {summary['model']}")
    return "\n".join(lines)


def sft(config: SFTConfig | dict | None = None, **overrides) -> dict:
    """Python entry point: `alignkit.train.sft({"model": ..., "data": ...})` or with keyword overrides."""
    return train_sft(config_with_overrides(SFTConfig, config, overrides, "sft config"))
