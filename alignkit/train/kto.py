"""Direct alignment from unpaired feedback: KTO on (prompt, completion, label) rows.

config -> setup (model, rows, KL partners, reference, optimizer) -> loop -> save.
Each row carries a fixed *mismatched* partner: its prompt with another row's
completion (the next row, in a seeded shuffle, whose prompt differs). The batch
mean of the policy-vs-reference log-ratio on those pairs is KTO's reference point
z0 (clamped at zero, detached, averaged over processes). Fixing the partner per row,
as TRL does by rotating completions in dataset chunks before shuffling, is what
lets the reference log-probs of the mismatched pairs be cached like the others.
Preference pairs can be read with `from_preference: true` (one desirable and one
undesirable row per pair).
"""

from __future__ import annotations

from functools import partial

import torch

from alignkit.config import KTOConfig, config_with_overrides
from alignkit.data.formats import load_dataset, load_with_holdout, preference_to_unpaired
from alignkit.data.tokenize import TokenizeReport, encode_completions, fit_or_drop, row_number, unpaired_problems
from alignkit.errors import AlignkitError
from alignkit.losses.kto import kto_kl_estimate, kto_loss
from alignkit.models.load import count_parameters, load_policy
from alignkit.models.reference import build_reference
from alignkit.models.sequences import collate_sequences, sequence_logps, supports_shared_prompt, to_device
from alignkit.train.direct import direct_step, direct_summary, format_summary, sequence_lengths, sequence_tokens
from alignkit.train.loop import BatchStream, global_sum, log, save_model
from alignkit.train.run import (
    build_training, checkpoint, due, finish_run, log_step, record_config, resume, start_run, step_timing, steps_left,
)

UNPAIRED_KINDS = ("unpaired_preference",)
DEFAULT_BETA = 0.1
OWN, MISMATCHED = (0,), (1,)  # sequence columns: (prompt, own completion), (prompt, partner's completion)


def mismatched_partners(prompts: list, seed: int) -> list[int]:
    """For each row, another row whose prompt differs: the next such row in a seeded shuffle."""
    n = len(prompts)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    partners = []
    position = {row: pos for pos, row in enumerate(order)}
    for i in range(n):
        candidates = (order[(position[i] + step) % n] for step in range(1, n))
        partners.append(next((j for j in candidates if prompts[j] != prompts[i]), order[(position[i] + 1) % n]))
    return partners


def tokenize_unpaired(rows: list[dict], tokenizer, max_length: int, truncation_side: str = "left",
                      truncation_mode: str = "truncate", seed: int = 0) -> tuple[list[dict], TokenizeReport]:
    """Examples {"index", "row", "label", "sequences": [(prompt, completion), (prompt, partner completion)]}, and the report."""
    report, encoded = TokenizeReport(rows=len(rows)), []
    problems = unpaired_problems(rows)
    for position, row in enumerate(rows, 1):
        number = row_number(row, position)
        if position in problems:  # no signal: counted, never trained on
            report.drop(problems[position], number)
            continue
        prompt_ids, (completion_ids,) = encode_completions(tokenizer, row["prompt"], [row["completion"]])
        fitted = fit_or_drop(prompt_ids, [completion_ids], max_length, truncation_side, truncation_mode, report, number)
        if fitted is None:
            continue
        prompt_ids, (completion_ids,) = fitted
        encoded.append((number, row["label"], prompt_ids, completion_ids))
    partners = mismatched_partners([tuple(p) for _, _, p, _ in encoded], seed)
    examples = []
    for index, ((number, label, prompt_ids, completion_ids), partner) in enumerate(zip(encoded, partners)):
        other = encoded[partner][3][: max(1, max_length - len(prompt_ids))]
        examples.append({"index": index, "row": number, "label": bool(label),
                         "sequences": [(prompt_ids, completion_ids), (prompt_ids, other)]})
    report.finish(rows, len(examples))
    return examples, report


def read_unpaired(source: str, config, stage: str, split: str) -> list[dict]:
    """Unpaired rows from `source`; preference pairs are converted only when `from_preference` is set."""
    if config.from_preference:
        rows, _ = load_dataset(source, ("preference",), stage, split, hint="; from_preference expects (prompt, chosen, rejected) rows")
        return preference_to_unpaired(rows)
    hint = "; pass --from_preference true to turn each pair into one desirable and one undesirable row"
    rows, _ = load_dataset(source, UNPAIRED_KINDS, stage, split, hint=hint)
    return rows


def load_unpaired(config, tokenizer):
    """Tokenized train and held-out rows (with KL partners) and their reports."""
    if not config.data:
        raise AlignkitError("no training data: set `data:` in the config or pass --data FILE")
    read = lambda source, kinds, stage, split, hint: (read_unpaired(source, config, stage, split), None)  # noqa: E731
    rows, _, eval_rows, _ = load_with_holdout(config.data, UNPAIRED_KINDS, "KTO", config.data_split, config.eval_fraction, config.seed,
                                              eval_data=config.eval_data, read=read)
    tokenize = dict(max_length=config.max_length, truncation_side=config.truncation_side,
                    truncation_mode=config.truncation_mode, seed=config.seed)
    train, report = tokenize_unpaired(rows, tokenizer, **tokenize)
    held_out, eval_report = tokenize_unpaired(eval_rows, tokenizer, **tokenize) if eval_rows else ([], None)
    log.info(report.summary(f"{config.data} ({'preference pairs, converted' if config.from_preference else 'unpaired'})"))
    if eval_report:
        log.info(eval_report.summary("held-out"))
    check_balance(train, config)
    return train, held_out, report, eval_report


def check_balance(examples: list[dict], config) -> None:
    """Warns when lambda_D * n_D / (lambda_U * n_U) leaves [1, 4/3], the range the KTO paper recommends."""
    desirable = sum(e["label"] for e in examples)
    undesirable = len(examples) - desirable
    if not desirable or not undesirable:
        raise AlignkitError(f"{config.data}: KTO needs both desirable and undesirable rows; found {desirable} and {undesirable}")
    ratio = config.desirable_weight * desirable / (config.undesirable_weight * undesirable)
    if not 1 <= ratio <= 4 / 3:
        log.warning(f"KTO: desirable_weight*n_desirable / (undesirable_weight*n_undesirable) = {ratio:.2f}; the paper advises 1 to 4/3 "
                    f"({desirable} desirable, {undesirable} undesirable rows)")


def unpaired_logps(model, reference, examples: list[dict], pad_id: int, device, autocast, share_prompt: bool = False):
    """Policy log-probs of the rows (with grad), and of their mismatched pairs (no grad), plus reference log-probs of both.

    The policy scores the two apart (only the rows need a backward); the reference scores both in one forward.
    """
    own = to_device(collate_sequences(examples, OWN, pad_id), device)  # (B, T)
    mismatched = to_device(collate_sequences(examples, MISMATCHED, pad_id), device)  # (B, T')
    with autocast():
        logps = sequence_logps(model, own)[0]  # (B,)
    with torch.no_grad(), autocast():
        kl_logps = sequence_logps(model, mismatched)[0]  # (B,)
    both = to_device(collate_sequences(examples, OWN + MISMATCHED, pad_id, share_prompt), device) if reference.name != "precompute" else own
    ref_logps, kl_ref_logps = reference.logps(model, examples, OWN + MISMATCHED, both, autocast).float().chunk(2)
    return logps, ref_logps, kl_logps.float(), kl_ref_logps


@torch.no_grad()
def evaluate_kto(model, reference, examples, pad_id, batch_size, device, autocast, share_prompt: bool = False, **options) -> dict:
    """Held-out KTO metrics (`eval/` prefix), z0 estimated over the whole held-out set."""
    was_training = model.training
    model.eval()
    parts = [unpaired_logps(model, reference, examples[s:s + batch_size], pad_id, device, autocast, share_prompt)
             for s in range(0, len(examples), batch_size)]
    model.train(was_training)
    logps, ref_logps, kl_logps, kl_ref_logps = (torch.cat(t) for t in zip(*parts))
    labels = torch.tensor([e["label"] for e in examples], device=logps.device)
    _, metrics = kto_loss(logps, ref_logps, labels, kto_kl_estimate(kl_logps, kl_ref_logps), **options)
    return {f"eval/{k}": v.item() for k, v in metrics.items()}


def train_kto(config: KTOConfig) -> dict:
    """Runs KTO end to end; returns the summary (also `<output_dir>/summary.json`)."""
    run = start_run(config, "kto")
    model, tokenizer = load_policy(config)
    train, held_out, report, eval_report = load_unpaired(config, tokenizer)
    record_config(run)
    accelerator, pad_id = run.accelerator, tokenizer.pad_token_id
    share_prompt = config.share_prompt and supports_shared_prompt(model)
    references = build_reference(config, model, accelerator, {"train": train, "eval": held_out}, pad_id, share_prompt)
    reference, eval_reference = references.get("train"), references.get("eval")
    options = {"beta": config.beta or DEFAULT_BETA, "desirable_weight": config.desirable_weight, "undesirable_weight": config.undesirable_weight}
    steps, model, optimizer, scheduler = build_training(run, model, len(train))
    stream = BatchStream(len(train), config.batch_size, config.seed, accelerator.process_index, accelerator.num_processes, sequence_lengths(train))
    resume(run, model, optimizer, scheduler, stream)
    trainable, total = count_parameters(model)
    log.info(f"KTO (beta={options['beta']}): {len(train)} rows, {steps} steps, {trainable:,}/{total:,} trainable parameters, "
             f"reference: {reference.name}")

    def micro_loss(examples, num_items):
        logps, ref_logps, kl_logps, kl_ref_logps = unpaired_logps(model, reference, examples, pad_id, accelerator.device, accelerator.autocast, share_prompt)
        z0 = global_sum(accelerator, kto_kl_estimate(kl_logps, kl_ref_logps)) / accelerator.num_processes  # mean over processes
        labels = torch.tensor([e["label"] for e in examples], device=accelerator.device)
        return kto_loss(logps, ref_logps, labels, z0, num_items=num_items, **options)

    def evaluate() -> dict:
        if not held_out:
            return {}
        return evaluate_kto(accelerator.unwrap_model(model), eval_reference, held_out, pad_id, config.batch_size, accelerator.device,
                            accelerator.autocast, share_prompt, **options)

    model.train()
    for step in (progress := steps_left(run, steps)):
        run.throughput.start()
        micro_batches = [[train[i] for i in rows] for rows in stream.next_step(config.grad_accum_steps)]
        metrics = direct_step(run, model, optimizer, scheduler, micro_batches, micro_loss, step)
        metrics.pop("rows")
        metrics.update({"epoch": stream.fractional_epoch, **step_timing(run, sequence_tokens(accelerator, micro_batches, OWN)),
                        "nan_skipped": run.nan_guard.skipped})
        if due(config.eval_every, step, steps):
            metrics.update(evaluate())
        log_step(run, step, steps, metrics)
        progress.set_postfix(loss=f"{metrics['loss']:.3f}", kl=f"{metrics['kl/batch']:.3f}", tok_s=f"{metrics['throughput/tokens_per_s']:.0f}")
        if due(config.save_every, step, steps):
            checkpoint(run, step, model, optimizer, scheduler, stream)

    final_eval = evaluate()
    saved = save_model(accelerator, model, tokenizer, config.output_dir, merge_lora=config.merge_lora)
    summarize = partial(direct_summary, run, steps, saved, "kto", options["beta"], reference.name, train, held_out, report, eval_report, final_eval)
    return finish_run(run, steps, final_eval, summarize, format_summary)


def kto(config: KTOConfig | dict | None = None, **overrides) -> dict:
    """Python entry point: `alignkit.train.kto({"model": ..., "data": ..., "from_preference": True})` or keyword overrides."""
    return train_kto(config_with_overrides(KTOConfig, config, overrides, "kto config"))
