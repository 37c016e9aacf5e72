"""What DPO and KTO share around their losses: the optimizer step over rows, token counts, the summary.

Both recipes score fixed (prompt, completion) sequences per example (models/sequences.py)
against a reference (models/reference.py); their losses divide each micro-batch's row sum
by the rows of the whole global step, so accumulation and extra processes leave the step alone.
"""

from __future__ import annotations

import time

import torch

from alignkit.train.loop import global_sum
from alignkit.train.run import Run, first_and_last_loss, optimizer_step

BOTH = (0, 1)  # sequence columns of a pair: chosen, rejected


def direct_step(run: Run, model, optimizer, scheduler, micro_batches: list[list[dict]], micro_loss, step: int) -> dict:
    """One optimizer step over this process's micro-batches of examples; metrics averaged over micro-batches and processes.

    `micro_loss(examples, num_items)` returns (loss, metrics) for one micro-batch, its loss summed over
    rows and divided by `num_items`, the row count of the whole global step.
    """
    accelerator = run.accelerator
    num_items = global_sum(accelerator, torch.tensor(float(sum(map(len, micro_batches))), device=accelerator.device))
    result = optimizer_step(run, model, optimizer, scheduler, micro_batches, lambda examples: micro_loss(examples, num_items), step,
                            autocast=False)  # the recipes autocast their forward passes only
    metrics = {k: global_sum(accelerator, torch.stack([m[k] for m in result.outputs]).nanmean()).item() / accelerator.num_processes
               for k in result.outputs[0]}
    metrics.update({"lr": scheduler.get_last_lr()[0], "rows": num_items.item()})
    if result.grad_norm is not None:
        metrics["grad_norm"] = float(result.grad_norm)
    return metrics


def sequence_tokens(accelerator, micro_batches: list[list[dict]], columns=BOTH) -> int:
    """Tokens of the step's (prompt + completion) sequences over all processes, as if each ran alone."""
    tokens = sum(len(e["sequences"][c][0]) + len(e["sequences"][c][1]) for examples in micro_batches for e in examples for c in columns)
    return int(global_sum(accelerator, torch.tensor(tokens, device=accelerator.device)))


def sequence_lengths(examples: list[dict]) -> list[int]:
    """Each example's longest (prompt + completion), for length-grouped batches."""
    return [max(len(p) + len(c) for p, c in e["sequences"]) for e in examples]


def direct_summary(run: Run, steps: int, saved, loss_type: str, beta: float, reference: str, train: list, held_out: list,
                   report, eval_report, final_eval: dict) -> dict:
    """summary.json of a DPO or KTO run."""
    history = run.history
    return {
        "stage": run.stage, "loss_type": loss_type, "beta": beta, "reference": reference,
        "model": str(saved), "steps": steps, "train_rows": len(train), "eval_rows": len(held_out),
        "data": report.as_dict(), "eval_data": eval_report.as_dict() if eval_report else None,
        **first_and_last_loss(run),
        "final_train_metrics": history[-1] if history else {}, "nan_skipped": run.nan_guard.skipped, **final_eval,
        "tokens_per_s": run.throughput.mean, "setup_seconds": run.setup_seconds, "seconds": time.time() - run.started,
    }


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
