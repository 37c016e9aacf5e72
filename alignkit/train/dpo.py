"""Direct alignment from preference pairs: DPO and its variants (IPO, hinge, robust, SimPO, ORPO).

config -> setup (model, pairs, reference, optimizer) -> loop (accumulate, clip, step, log, eval, save) -> save.
Chosen and rejected completions go through the policy in one forward (the LM head
only on completion tokens); the reference log-probs come from a frozen copy, the
LoRA base with adapters off, or a cache computed once (models/reference.py). The
loss is `losses.preference.preference_loss(config.loss, ...)`: a variant is a
table entry there, not a branch here.
"""

from __future__ import annotations

from functools import partial

import torch

from alignkit.config import DPOConfig, config_with_overrides
from alignkit.data.formats import load_with_holdout
from alignkit.data.tokenize import TokenizeReport, encode_completions, fit_or_drop, pair_problem, row_number
from alignkit.errors import AlignkitError
from alignkit.losses.preference import PREFERENCE_LOSSES, PairLogps, preference_loss
from alignkit.models.load import count_parameters, load_policy
from alignkit.models.reference import build_reference
from alignkit.models.sequences import collate_sequences, sequence_logps, supports_shared_prompt, to_device
from alignkit.train.direct import BOTH, direct_step, direct_summary, format_summary, sequence_lengths, sequence_tokens
from alignkit.train.loop import BatchStream, log, save_model
from alignkit.train.monitor import monitor_or_null
from alignkit.train.run import (
    build_training, checkpoint, due, finish_run, log_step, record_config, resume, start_run, step_timing, steps_left,
)

PAIR_KINDS = ("preference",)


def tokenize_pairs(rows: list[dict], tokenizer, max_length: int, truncation_side: str = "left",
                   truncation_mode: str = "truncate") -> tuple[list[dict], TokenizeReport]:
    """Examples {"index", "sequences": [(prompt, chosen), (prompt, rejected)]} of token ids, and the report."""
    report, examples = TokenizeReport(rows=len(rows)), []
    for position, row in enumerate(rows, 1):
        number, problem = row_number(row, position), pair_problem(row["chosen"], row["rejected"])
        if problem:  # no preference signal: counted, never trained on
            report.drop(problem, number)
            continue
        prompt_ids, completions = encode_completions(tokenizer, row["prompt"], [row["chosen"], row["rejected"]])
        fitted = fit_or_drop(prompt_ids, completions, max_length, truncation_side, truncation_mode, report, number)
        if fitted is None:
            continue
        prompt_ids, completions = fitted
        examples.append({"index": len(examples), "row": number, "sequences": [(prompt_ids, c) for c in completions]})
    report.finish(rows, len(examples))
    return examples, report


def load_pairs(config, tokenizer):
    """Tokenized train and held-out pairs, with their reports."""
    if not config.data:
        raise AlignkitError("no training data: set `data:` in the config or pass --data FILE")
    hint = "; unpaired (prompt, completion, label) rows go to `alignkit kto`"
    rows, fmt, eval_rows, _ = load_with_holdout(config.data, PAIR_KINDS, "DPO", config.data_split, config.eval_fraction, config.seed,
                                                hint=hint, eval_data=config.eval_data)
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


def train_dpo(config: DPOConfig, monitor=None) -> dict:
    """Runs DPO (or the variant `config.loss`) end to end; returns the summary (also `<output_dir>/summary.json`)."""
    run = start_run(config, "dpo")
    monitor = monitor_or_null(monitor, config, "dpo")
    model, tokenizer = load_policy(config)
    train, held_out, report, eval_report = load_pairs(config, tokenizer)
    record_config(run)
    accelerator, pad_id = run.accelerator, tokenizer.pad_token_id
    share_prompt = config.share_prompt and supports_shared_prompt(model)
    splits = {"train": train, "eval": held_out}
    references = build_reference(config, model, accelerator, splits, pad_id, share_prompt) if PREFERENCE_LOSSES[config.loss].uses_reference else {}
    reference, eval_reference = references.get("train"), references.get("eval")
    options = loss_options(config)
    steps, model, optimizer, scheduler = build_training(run, model, len(train))
    stream = BatchStream(len(train), config.batch_size, config.seed, accelerator.process_index, accelerator.num_processes, sequence_lengths(train))
    monitor.bind(accelerator=accelerator, tokenizer=tokenizer, reference=getattr(reference, "model", None), implicit_beta=options["beta"])
    resume(run, model, optimizer, scheduler, stream)
    monitor.load_state_dict(run.extra.get("monitor", {}))  # its checks, alarm streak and hacking history
    trainable, total = count_parameters(model)
    strategy = reference.name if reference is not None else "none (reference-free loss)"
    log.info(f"DPO ({config.loss}, beta={options['beta']}): {len(train)} pairs, {steps} steps, "
             f"{trainable:,}/{total:,} trainable parameters, reference: {strategy}")

    def micro_loss(examples, num_items):
        logps = pair_logps(model, reference, examples, pad_id, accelerator.device, accelerator.autocast, share_prompt)
        return preference_loss(config.loss, logps, num_items=num_items, **options)

    def evaluate() -> dict:
        if not held_out:
            return {}
        return evaluate_pairs(accelerator.unwrap_model(model), eval_reference, held_out, pad_id, config.batch_size, accelerator.device,
                              accelerator.autocast, config.loss, share_prompt, **options)

    model.train()
    for step in (progress := steps_left(run, steps, f"dpo-{config.loss}")):
        run.throughput.start()
        micro_batches = [[train[i] for i in rows] for rows in stream.next_step(config.grad_accum_steps)]
        metrics = direct_step(run, model, optimizer, scheduler, micro_batches, micro_loss, step)
        timing = step_timing(run, sequence_tokens(accelerator, micro_batches))
        metrics.update({"epoch": stream.fractional_epoch, **timing, "throughput/pairs_per_s": metrics.pop("rows") / run.throughput.last_seconds,
                        "nan_skipped": run.nan_guard.skipped})
        if due(config.eval_every, step, steps):
            metrics.update(evaluate())
        metrics.update(monitor.after_step(step, model))
        log_step(run, step, steps, metrics, force=monitor.stop)
        progress.set_postfix(loss=f"{metrics['loss']:.3f}", margin=f"{metrics['rewards/margin']:.3f}", tok_s=f"{timing['throughput/tokens_per_s']:.0f}")
        if due(config.save_every, step, steps):
            checkpoint(run, step, model, optimizer, scheduler, stream, extra={"monitor": monitor.state_dict()})
        if monitor.stop:
            break

    final_eval = evaluate()
    saved = save_model(accelerator, model, tokenizer, config.output_dir, merge_lora=config.merge_lora)
    summarize = partial(direct_summary, run, steps, saved, config.loss, options["beta"], strategy, train, held_out, report, eval_report, final_eval)
    return finish_run(run, steps, final_eval, summarize, format_summary)


def dpo(config: DPOConfig | dict | None = None, monitor=None, **overrides) -> dict:
    """Python entry point: `alignkit.train.dpo({"model": ..., "data": ..., "loss": "ipo"})` or keyword overrides.

    `monitor`: a built monitor (train/monitor.py); `alignkit.dpo(...)` builds one from the config's `monitor:` section.
    """
    return train_dpo(config_with_overrides(DPOConfig, config, overrides, "dpo config"), monitor)
