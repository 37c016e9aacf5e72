"""Direct alignment from preference pairs: DPO and its variants (IPO, hinge, robust, SimPO, ORPO).

config -> setup (model, pairs, reference, optimizer) -> loop (accumulate, clip, step, log, eval, save) -> save.
Chosen and rejected completions go through the policy in one forward (the LM head
only on completion tokens); the reference log-probs come from a frozen copy, the
LoRA base with adapters off, or a cache computed once (models/reference.py). The
loss is `losses.preference.preference_loss(config.loss, ...)`: a variant is a
table entry there, not a branch here.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from alignkit.config import DPOConfig, save_config
from alignkit.data.formats import load_dataset
from alignkit.data.tokenize import TokenizeReport, encode_completions, fit_prompt_completions
from alignkit.errors import AlignkitError
from alignkit.evaluate.monitors import build_monitor
from alignkit.losses.preference import PREFERENCE_LOSSES, PairLogps, preference_loss
from alignkit.models.load import count_parameters, load_policy
from alignkit.train.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from alignkit.train.loop import BatchStream, MetricsLogger, NanGuard, Throughput, build_optimizer, build_scheduler, global_sum, log, make_accelerator, save_model, split_holdout, total_optimizer_steps
from alignkit.io import write_json
from alignkit.models.reference import build_reference
from alignkit.models.sequences import collate_sequences, sequence_logps, supports_shared_prompt, to_device

PAIR_KINDS = ("preference",)
BOTH = (0, 1)  # sequence columns: chosen, rejected


def tokenize_pairs(rows: list[dict], tokenizer, max_length: int, truncation_side: str = "left",
                   truncation_mode: str = "truncate") -> tuple[list[dict], TokenizeReport]:
    """Examples {"index", "sequences": [(prompt, chosen), (prompt, rejected)]} of token ids, and the report."""
    report, examples = TokenizeReport(rows=len(rows)), []
    for number, row in enumerate(rows, 1):
        prompt_ids, completions = encode_completions(tokenizer, row["prompt"], [row["chosen"], row["rejected"]])
        if not all(completions):
            report.dropped += 1
            report.note("empty chosen or rejected completion", number)
            continue
        prompt_ids, completions, truncated = fit_prompt_completions(prompt_ids, completions, max_length, truncation_side)
        if truncated and truncation_mode == "drop":
            report.dropped += 1
            report.note(f"longer than max_length={max_length}", number)
            continue
        if truncated:
            report.truncated += 1
            report.note(f"truncated to max_length={max_length}", number)
        examples.append({"index": len(examples), "row": number, "sequences": [(prompt_ids, c) for c in completions]})
    report.kept = len(examples)
    return examples, report


def load_pairs(config, tokenizer):
    """Tokenized train and held-out pairs, with their reports."""
    if not config.data:
        raise AlignkitError("no training data: set `data:` in the config or pass --data FILE")
    hint = "; unpaired (prompt, completion, label) rows go to `alignkit kto`"
    rows, fmt = load_dataset(config.data, PAIR_KINDS, "DPO", config.data_split, hint=hint)
    if config.eval_data:
        eval_rows, _ = load_dataset(config.eval_data, PAIR_KINDS, "DPO evaluation", "test", hint=hint)
    else:
        rows, eval_rows = split_holdout(rows, config.eval_fraction, config.seed)
    tokenize = dict(max_length=config.max_length, truncation_side=config.truncation_side, truncation_mode=config.truncation_mode)
    train, report = tokenize_pairs(rows, tokenizer, **tokenize)
    held_out, eval_report = tokenize_pairs(eval_rows, tokenizer, **tokenize) if eval_rows else ([], None)
    log.info(report.summary(f"{config.data} ({fmt})"))
    if eval_report:
        log.info(eval_report.summary("held-out"))
    return train, held_out, report, eval_report


def pair_logps(model, reference, examples: list[dict], pad_id: int, device, autocast, share_prompt: bool = False) -> PairLogps:
    """Policy (with grad) and reference log-probs of a micro-batch of pairs; chosen and rejected share one policy forward."""
    batch = to_device(collate_sequences(examples, BOTH, pad_id, share_prompt), device)
    with autocast():
        logps, lengths = sequence_logps(model, batch)  # (2B,), (2B,)
    ref = reference.logps(model, examples, BOTH, batch, autocast).float() if reference is not None else None
    chosen, rejected = logps.chunk(2)
    chosen_len, rejected_len = lengths.chunk(2)
    ref_chosen, ref_rejected = ref.chunk(2) if ref is not None else (None, None)
    return PairLogps(chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len)


def loss_options(config) -> dict:
    return {"beta": beta_of(config), "label_smoothing": config.label_smoothing, "gamma_beta_ratio": config.gamma_beta_ratio,
            "rpo_alpha": config.rpo_alpha}


def beta_of(config) -> float:
    return config.beta if config.beta is not None else PREFERENCE_LOSSES[config.loss].default_beta


@torch.no_grad()
def evaluate_pairs(model, reference, examples: list[dict], pad_id: int, batch_size: int, device, autocast,
                   loss_type: str = "sigmoid", share_prompt: bool = False, **options) -> dict:
    """Held-out metrics (`eval/` + the loss's metric names) over all `examples`, on the unwrapped model."""
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, len(examples), batch_size):
        parts.append(pair_logps(model, reference, examples[start:start + batch_size], pad_id, device, autocast, share_prompt))
    model.train(was_training)
    joined = PairLogps(*[torch.cat([getattr(p, f) for p in parts]) if parts[0][i] is not None else None
                         for i, f in enumerate(PairLogps._fields)])
    _, metrics = preference_loss(loss_type, joined, **options)
    return {f"eval/{k}": v.item() for k, v in metrics.items()}


def optimizer_step(accelerator, model, optimizer, scheduler, micro_batches: list[list[dict]], micro_loss, config, step: int, nan_guard) -> dict:
    """One optimizer step over this process's micro-batches; metrics averaged over micro-batches and processes.

    `micro_loss(examples, num_items)` returns (loss, metrics) for one micro-batch, its loss
    summed over rows and divided by `num_items`, the row count of the whole global step, so
    accumulation and extra processes do not change the step. Shared by DPO and KTO.
    """
    num_items = global_sum(accelerator, torch.tensor(float(sum(map(len, micro_batches))), device=accelerator.device))
    step_metrics = []
    for index, examples in enumerate(micro_batches):
        sync = index == len(micro_batches) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            loss, metrics = micro_loss(examples, num_items)
            accelerator.backward(loss * accelerator.num_processes)  # DDP averages gradients; the row sum must not be
        step_metrics.append(metrics)
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm) if config.max_grad_norm > 0 else None
    metrics = {k: global_sum(accelerator, torch.stack([m[k] for m in step_metrics]).nanmean()).item() / accelerator.num_processes
               for k in step_metrics[0]}
    if not nan_guard.should_skip(accelerator, step, metrics["loss"], grad_norm):
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    metrics.update({"lr": scheduler.get_last_lr()[0], "rows": num_items.item()})
    if grad_norm is not None:
        metrics["grad_norm"] = float(grad_norm)
    return metrics


def sequence_tokens(accelerator, micro_batches: list[list[dict]], columns=BOTH) -> int:
    """Tokens of the step's (prompt + completion) sequences over all processes, as if each ran alone."""
    tokens = sum(len(e["sequences"][c][0]) + len(e["sequences"][c][1]) for examples in micro_batches for e in examples for c in columns)
    return int(global_sum(accelerator, torch.tensor(tokens, device=accelerator.device)))


def train_dpo(config: DPOConfig) -> dict:
    """Runs DPO (or the variant `config.loss`) end to end; returns the summary (also `<output_dir>/summary.json`)."""
    started = time.time()
    accelerator = make_accelerator(config)
    model, tokenizer = load_policy(config)
    train, held_out, report, eval_report = load_pairs(config, tokenizer)
    if accelerator.is_main_process:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        save_config(config, f"{config.output_dir}/config.yaml")

    share_prompt, pad_id, device = config.share_prompt and supports_shared_prompt(model), tokenizer.pad_token_id, accelerator.device
    uses_reference = PREFERENCE_LOSSES[config.loss].uses_reference
    splits = {"train": train, "eval": held_out}
    references = build_reference(config, model, accelerator, splits, pad_id, share_prompt) if uses_reference else {}
    reference, eval_reference = references.get("train"), references.get("eval")
    options = loss_options(config)
    steps = total_optimizer_steps(len(train), config, accelerator.num_processes)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    lengths = [max(len(p) + len(c) for p, c in e["sequences"]) for e in train]
    stream = BatchStream(len(train), config.batch_size, config.seed, accelerator.process_index, accelerator.num_processes, lengths)
    monitor = build_monitor(config, "dpo", tokenizer, accelerator)  # over-optimization / hacking
    start_step = 0
    if checkpoint := resolve_resume(config.resume, config.output_dir):
        state = load_checkpoint(checkpoint, accelerator, model, optimizer, scheduler, stream)
        start_step = state["step"]
        monitor.load_state_dict(state["extra"].get("monitor", {}))  # its checks, alarm streak and hacking history
        log.info(f"resumed from {checkpoint} at step {start_step}")
    logger = MetricsLogger(config.output_dir, config.report_to, accelerator.is_main_process, resume_step=start_step)
    throughput, nan_guard = Throughput(), NanGuard(config.max_nan_steps)
    trainable, total = count_parameters(model)
    strategy = reference.name if reference is not None else "none (reference-free loss)"
    log.info(f"DPO ({config.loss}, beta={options['beta']}): {len(train)} pairs, {steps} steps, "
             f"{trainable:,}/{total:,} trainable parameters, reference: {strategy}")

    def micro_loss(examples, num_items):
        logps = pair_logps(model, reference, examples, pad_id, device, accelerator.autocast, share_prompt)
        return preference_loss(config.loss, logps, num_items=num_items, **options)

    def evaluate() -> dict:
        if not held_out:
            return {}
        return evaluate_pairs(accelerator.unwrap_model(model), eval_reference, held_out, pad_id, config.batch_size, device,
                              accelerator.autocast, config.loss, share_prompt, **options)

    setup_seconds = time.time() - started
    model.train()
    history = []
    progress = tqdm(range(start_step + 1, steps + 1), desc=f"dpo-{config.loss}", disable=not accelerator.is_local_main_process)
    for step in progress:
        throughput.start()
        micro_batches = [[train[i] for i in rows] for rows in stream.next_step(config.grad_accum_steps)]
        metrics = optimizer_step(accelerator, model, optimizer, scheduler, micro_batches, micro_loss, config, step, nan_guard)
        tokens_per_s = throughput.stop(sequence_tokens(accelerator, micro_batches))
        metrics.update({"epoch": stream.fractional_epoch, "throughput/tokens_per_s": tokens_per_s,
                        "throughput/pairs_per_s": metrics.pop("rows") / throughput.last_seconds,
                        "step_seconds": throughput.last_seconds, "nan_skipped": nan_guard.skipped})
        if config.eval_every and step % config.eval_every == 0 and step != steps:
            metrics.update(evaluate())
        metrics.update(monitor.after_step(step, model))
        if step % config.logging_every == 0 or step == steps or monitor.stop:
            logger.log(step, metrics)
        history.append(metrics)
        progress.set_postfix(loss=f"{metrics['loss']:.3f}", margin=f"{metrics['rewards/margin']:.3f}", tok_s=f"{tokens_per_s:.0f}")
        if config.save_every and step % config.save_every == 0 and step != steps:
            save_checkpoint(config.output_dir, step, accelerator, model, optimizer, scheduler, stream,
                            extra={"monitor": monitor.state_dict()}, save_total_limit=config.save_total_limit)
        if monitor.stop:
            break

    final_eval = evaluate()
    if final_eval:
        logger.log(steps, final_eval)
    logger.close()
    saved = save_model(accelerator, model, tokenizer, config.output_dir, merge_lora=config.merge_lora)
    summary = {
        "stage": "dpo", "loss_type": config.loss, "beta": options["beta"], "reference": strategy,
        "model": str(saved), "steps": steps, "train_rows": len(train), "eval_rows": len(held_out),
        "data": report.as_dict(), "eval_data": eval_report.as_dict() if eval_report else None,
        "first_loss": history[0]["loss"] if history else None, "final_loss": history[-1]["loss"] if history else None,
        "final_train_metrics": history[-1] if history else {}, "nan_skipped": nan_guard.skipped, **final_eval,
        "tokens_per_s": throughput.mean, "setup_seconds": setup_seconds, "seconds": time.time() - started,
    }
    if accelerator.is_main_process:
        write_json(f"{config.output_dir}/summary.json", summary)
        log.info(format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"{summary['stage'].upper()} ({summary.get('loss_type', summary['stage'])}) done in {summary['seconds']:.0f}s: "
             f"{summary['steps']} steps over {summary['train_rows']} rows "
             f"({summary['data']['truncated']} truncated, {summary['data']['dropped']} dropped), {summary['tokens_per_s']:.0f} tokens/s",
             f"  train loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}" if summary["first_loss"] is not None else "  (resumed at the end)"]
    if "eval/loss" in summary:
        kl = f", KL to reference on chosen {summary['eval/kl/ref']:.3f} nats" if "eval/kl/ref" in summary else ""
        lines.append(f"  held-out loss {summary['eval/loss']:.4f}, reward accuracy {summary['eval/rewards/accuracy']:.3f}, "
                     f"margin {summary['eval/rewards/margin']:.3f}{kl}")
    if summary.get("nan_skipped"):
        lines.append(f"  {summary['nan_skipped']} steps skipped for NaN/inf loss or gradients")
    lines.append(f"  model saved to {summary['model']}")
    return "\n".join(lines)


def dpo(config: DPOConfig | dict | None = None, **overrides) -> dict:
    """Python entry point: `alignkit.train.dpo({"model": ..., "data": ..., "loss": "ipo"})` or keyword overrides."""
    from alignkit.config import config_from_dict

    values = {**asdict(config), **overrides} if isinstance(config, DPOConfig) else {**(config or {}), **overrides}
    return train_dpo(config_from_dict(DPOConfig, values, "dpo config"))
