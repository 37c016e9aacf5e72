"""Stage 1, supervised fine-tuning: teach the model the format and style of good answers.

config -> setup (model, data, optimizer) -> loop (accumulate, clip, step, log, eval, save) -> save.
The loss is the mean NLL of completion tokens only (prompt and template tokens carry
mask 0), computed with the LM head applied to those positions alone.
"""

from __future__ import annotations

import contextlib
import math
from functools import partial
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from alignkit.config import SFTConfig, save_config
from alignkit.data.collate import collate_lm, collate_packed
from alignkit.data.formats import load_dataset
from alignkit.data.tokenize import tokenize_sft
from alignkit.errors import AlignkitError
from alignkit.losses.sft import sft_loss
from alignkit.models.load import count_parameters, load_policy
from alignkit.models.logprobs import token_logprobs
from alignkit.train.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from alignkit.train.loop import BatchStream, MetricsLogger, NanGuard, Throughput, build_optimizer, build_scheduler, global_sum, log, make_accelerator, save_model, split_holdout, total_optimizer_steps
from alignkit.io import write_json

SFT_KINDS = ("language_modeling", "prompt_completion")


def load_sft_data(config: SFTConfig, tokenizer):
    """Tokenized train and held-out examples, with the report of truncated and dropped rows."""
    if not config.data:
        raise AlignkitError("no training data: set `data:` in the config or pass --data FILE")
    rows, fmt = load_dataset(config.data, SFT_KINDS, "SFT", config.data_split,
                             hint="; preference data goes to `alignkit reward` or `alignkit dpo`")
    if config.eval_data:
        eval_rows, eval_fmt = load_dataset(config.eval_data, SFT_KINDS, "SFT evaluation", "test")
    else:
        rows, eval_rows = split_holdout(rows, config.eval_fraction, config.seed)
        eval_fmt = fmt
    tokenize = dict(max_length=config.max_length, truncation_side=config.truncation_side, truncation_mode=config.truncation_mode)
    train, report = tokenize_sft(rows, fmt, tokenizer, **tokenize)
    held_out, eval_report = tokenize_sft(eval_rows, eval_fmt, tokenizer, **tokenize) if eval_rows else ([], None)
    log.info(report.summary(f"{config.data} ({fmt})"))
    if eval_report:
        log.info(eval_report.summary("held-out"))
    return train, held_out, report, eval_report


def batch_loss(model, batch, num_items=None, world_size: int = 1):
    """SFT loss of one padded or packed batch; `num_items` is the token count the whole step divides by."""
    logps, _ = token_logprobs(model, batch["input_ids"], batch.get("attention_mask"), batch["loss_mask"], batch.get("position_ids"))
    loss, metrics = sft_loss(logps, batch["loss_mask"], num_items)
    return loss * world_size, metrics  # DDP averages gradients over ranks; the token sum must not be


@torch.no_grad()
def evaluate_sft(model, examples, pad_id, batch_size, accelerator) -> dict:
    """Held-out token NLL and perplexity."""
    model.eval()
    total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    for start in range(accelerator.process_index * batch_size, len(examples), batch_size * accelerator.num_processes):
        batch = {k: v.to(accelerator.device) for k, v in collate_lm(examples[start:start + batch_size], pad_id).items()}
        with accelerator.autocast():
            logps, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        total += -(logps * batch["loss_mask"]).sum()
        count += batch["loss_mask"].sum()
    total, count = global_sum(accelerator, total), global_sum(accelerator, count)
    model.train()
    loss = (total / count.clamp(min=1)).item()
    return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50))}


def train_step(accelerator, model, optimizer, scheduler, micro_batches, config, step: int, nan_guard) -> dict:
    """One optimizer step over this process's micro-batches; the loss divides by the whole step's token count."""
    num_items = global_sum(accelerator, sum(b["loss_mask"].sum() for b in micro_batches).to(accelerator.device))
    step_loss = torch.zeros((), device=accelerator.device)
    for index, batch in enumerate(micro_batches):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        sync = index == len(micro_batches) - 1
        with (contextlib.nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
            loss, _ = batch_loss(model, batch, num_items, accelerator.num_processes)
            accelerator.backward(loss)
        step_loss += loss.detach() / accelerator.num_processes
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm) if config.max_grad_norm > 0 else None
    if not nan_guard.should_skip(accelerator, step, step_loss, grad_norm):
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    metrics = {"loss": global_sum(accelerator, step_loss).item(), "lr": scheduler.get_last_lr()[0],
               "tokens": int(global_sum(accelerator, torch.tensor(sum(b["input_ids"].numel() if "position_ids" in b else int(b["attention_mask"].sum()) for b in micro_batches))))}
    if grad_norm is not None:
        metrics["grad_norm"] = float(grad_norm)
    return metrics


def train_sft(config: SFTConfig) -> dict:
    """Runs SFT end to end and returns the summary (also written to `<output_dir>/summary.json`)."""
    started = time.time()
    accelerator = make_accelerator(config)
    model, tokenizer = load_policy(config)
    train, held_out, report, eval_report = load_sft_data(config, tokenizer)
    if accelerator.is_main_process:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        save_config(config, f"{config.output_dir}/config.yaml")

    steps = total_optimizer_steps(len(train), config, accelerator.num_processes)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    stream = BatchStream(len(train), config.batch_size, config.seed, accelerator.process_index, accelerator.num_processes)
    start_step = 0
    if checkpoint := resolve_resume(config.resume, config.output_dir):
        start_step = load_checkpoint(checkpoint, accelerator, model, optimizer, scheduler, stream)["step"]
        log.info(f"resumed from {checkpoint} at step {start_step}")
    logger = MetricsLogger(config.output_dir, config.report_to, accelerator.is_main_process, resume_step=start_step)
    throughput, nan_guard = Throughput(), NanGuard(config.max_nan_steps)
    trainable, total = count_parameters(model)
    log.info(f"SFT: {len(train)} rows, {steps} steps, {trainable:,}/{total:,} trainable parameters")

    model.train()
    history = []
    progress = tqdm(range(start_step + 1, steps + 1), desc="sft", disable=not accelerator.is_local_main_process, mininterval=5)
    for step in progress:
        throughput.start()
        rows = stream.next_step(config.grad_accum_steps)
        collate = collate_packed if config.packing else partial(collate_lm, pad_token_id=tokenizer.pad_token_id)
        metrics = train_step(accelerator, model, optimizer, scheduler, [collate([train[i] for i in r]) for r in rows], config, step, nan_guard)
        metrics.update({"epoch": stream.fractional_epoch, "throughput/tokens_per_s": throughput.stop(metrics.pop("tokens")),
                        "step_seconds": throughput.last_seconds, "nan_skipped": nan_guard.skipped})
        if held_out and config.eval_every and step % config.eval_every == 0 and step != steps:
            metrics.update(evaluate_sft(model, held_out, tokenizer.pad_token_id, config.batch_size, accelerator))
        if step % config.logging_every == 0 or step == steps:
            logger.log(step, metrics)
        history.append(metrics)
        progress.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['throughput/tokens_per_s']:.0f}")
        if config.save_every and step % config.save_every == 0 and step != steps:
            save_checkpoint(config.output_dir, step, accelerator, model, optimizer, scheduler, stream, save_total_limit=config.save_total_limit)

    final_eval = evaluate_sft(model, held_out, tokenizer.pad_token_id, config.batch_size, accelerator) if held_out else {}
    if final_eval:
        logger.log(steps, final_eval)
    logger.close()
    saved = save_model(accelerator, model, tokenizer, config.output_dir, merge_lora=config.merge_lora)
    summary = {
        "stage": "sft", "model": str(saved), "steps": steps, "train_rows": len(train), "eval_rows": len(held_out),
        "data": report.as_dict(), "eval_data": eval_report.as_dict() if eval_report else None,
        "first_loss": history[0]["loss"] if history else None, "final_loss": history[-1]["loss"] if history else None,
        "nan_skipped": nan_guard.skipped, **final_eval,
        "tokens_per_s": throughput.mean, "seconds": time.time() - started,
    }
    if accelerator.is_main_process:
        write_json(f"{config.output_dir}/summary.json", summary)
        log.info(format_summary(summary))
    return summary


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
    from alignkit.config import config_from_dict

    if isinstance(config, SFTConfig):
        values = {**asdict(config), **overrides}
    else:
        values = {**(config or {}), **overrides}
    return train_sft(config_from_dict(SFTConfig, values, "sft config"))
