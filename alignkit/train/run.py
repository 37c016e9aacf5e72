"""The run skeleton every recipe calls in order: start, record, resume, step, log, checkpoint, finish.

    run = start_run(config, "dpo")                 # accelerator and seed; nothing written yet
    model, data = ...                              # the recipe's own setup
    record_config(run)                             # <output_dir>/config.yaml, once the inputs are known good
    steps, model, optimizer, scheduler = build_training(run, model, len(train))
    resume(run, model, optimizer, scheduler, stream)   # a checkpoint (config.resume), then the metrics log
    for step in steps_left(run, steps, "dpo"):
        result = optimizer_step(run, model, optimizer, scheduler, micro_batches, micro_loss, step)
        log_step(run, step, steps, metrics)
        if checkpoint_due(run, step, steps): save_checkpoint(...)
    finish_run(run, final_eval, summarize, format_summary)

Plain functions, no base class: a recipe reads top to bottom and shows its algorithm lines;
the plumbing (micro-batches, accumulation, the DDP correction, clipping, the NaN guard,
logging cadence, resume) lives here once.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from alignkit.config import save_config
from alignkit.io import write_json
from alignkit.train.checkpoint import load_checkpoint, resolve_resume
from alignkit.train.loop import (
    MetricsLogger, NanGuard, Throughput, build_optimizer, build_scheduler, log, make_accelerator, total_optimizer_steps,
)


@dataclass
class Run:
    """One run's plumbing: what `start_run` sets up, the recipe reads, and `finish_run` closes."""

    config: object
    stage: str
    accelerator: object
    started: float
    output_dir: Path
    nan_guard: NanGuard
    throughput: Throughput = field(default_factory=Throughput)
    logger: MetricsLogger | None = None
    start_step: int = 0
    extra: dict = field(default_factory=dict)  # the recipe state a resumed checkpoint carried
    history: list = field(default_factory=list)  # every step's metrics (the summary reads first and last)
    setup_seconds: float = 0.0


def start_run(config, stage: str, output_dir: str | Path | None = None) -> Run:
    """The accelerator (devices, mixed precision, process group) and the seed, from the validated config."""
    started = time.time()
    accelerator = make_accelerator(config)
    return Run(config, stage, accelerator, started, Path(output_dir or config.output_dir), NanGuard(config.max_nan_steps))


def record_config(run: Run, output_dir: str | Path | None = None) -> None:
    """Writes the config the run uses to `<output_dir>/config.yaml` (main process)."""
    if run.accelerator.is_main_process:
        folder = Path(output_dir or run.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        save_config(run.config, folder / "config.yaml")


def build_training(run: Run, model, num_rows: int):
    """(steps, model, optimizer, scheduler): AdamW and the schedule for the run's optimizer steps, prepared for devices."""
    config, accelerator = run.config, run.accelerator
    steps = total_optimizer_steps(num_rows, config, accelerator.num_processes)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    return steps, model, optimizer, scheduler


def resume(run: Run, model, optimizer, scheduler, stream, **checkpointed) -> int:
    """Restores `config.resume`'s checkpoint (if any) and opens the metrics log from its step; returns that step.

    `checkpointed`: the `modules` and `generators` a recipe checkpoints besides the model (see train/checkpoint.py).
    """
    config, accelerator = run.config, run.accelerator
    if checkpoint := resolve_resume(config.resume, run.output_dir):
        state = load_checkpoint(checkpoint, accelerator, model, optimizer, scheduler, stream, **checkpointed)
        run.start_step, run.extra = state["step"], state["extra"]
        log.info(f"{run.stage}: resumed from {checkpoint} at step {run.start_step}")
    run.logger = MetricsLogger(run.output_dir, config.report_to, accelerator.is_main_process, resume_step=run.start_step)
    return run.start_step


def steps_left(run: Run, steps: int, desc: str | None = None, **tqdm_options):
    """The optimizer steps still to run (after a resumed checkpoint), with a progress bar on the main process."""
    run.setup_seconds = time.time() - run.started
    return tqdm(range(run.start_step + 1, steps + 1), desc=desc or run.stage,
                disable=not run.accelerator.is_local_main_process, **tqdm_options)


@dataclass
class StepResult:
    losses: list  # each micro-batch's loss on this process, detached, as `micro_loss` returned it
    outputs: list  # each micro-batch's other output from `micro_loss`
    grad_norm: torch.Tensor | None
    stepped: bool  # False when the NaN guard skipped the step


def optimizer_step(run: Run, model, optimizer, scheduler, micro_batches: list, micro_loss: Callable, step: int,
                   parameters=None, undo_ddp_mean: bool = True, autocast: bool = True,
                   max_grad_norm: float | None = None) -> StepResult:
    """One optimizer step over this process's micro-batches: accumulate, clip, guard, step.

    `micro_loss(batch) -> (loss, output)`: the loss of one micro-batch, already divided by the
    whole step's item count (tokens, rows or pairs over every micro-batch and process), so that
    accumulation equals one big batch. With `undo_ddp_mean` the backward is scaled by the process
    count, because DDP averages gradients over processes and a global sum must not be averaged
    (PPO's per-process means leave it off). `autocast` wraps forward and backward in the
    accelerator's autocast; recipes that autocast only their forward pass False. Gradients are
    synchronised only on the last micro-batch. A step whose summed loss or gradient norm is
    NaN/inf takes no optimizer step (the run's NaN guard decides, on every process at once).
    """
    accelerator = run.accelerator
    max_grad_norm = run.config.max_grad_norm if max_grad_norm is None else max_grad_norm
    scale = accelerator.num_processes if undo_ddp_mean else 1
    losses, outputs = [], []
    for index, batch in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        with (contextlib.nullcontext() if last else accelerator.no_sync(model)), \
                (accelerator.autocast() if autocast else contextlib.nullcontext()):
            loss, output = micro_loss(batch)
            accelerator.backward(loss * scale if scale != 1 else loss)
        losses.append(loss.detach())
        outputs.append(output)
    parameters = model.parameters() if parameters is None else parameters
    grad_norm = accelerator.clip_grad_norm_(parameters, max_grad_norm) if max_grad_norm > 0 else None
    stepped = not run.nan_guard.should_skip(accelerator, step, sum(loss.float() for loss in losses), grad_norm)
    if stepped:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(losses, outputs, grad_norm, stepped)


def step_timing(run: Run, tokens: int) -> dict:
    """The step's throughput and wall time (call `run.throughput.start()` when the step begins)."""
    tokens_per_s = run.throughput.stop(tokens)
    return {"throughput/tokens_per_s": tokens_per_s, "time/step_s": run.throughput.last_seconds,
            "step_seconds": run.throughput.last_seconds}  # step_seconds: the old name, kept for one release


def due(every: int, step: int, steps: int) -> bool:
    """Whether an every-N-steps event (eval, checkpoint) falls on `step`; the last step has its own."""
    return bool(every) and step % every == 0 and step != steps


def log_step(run: Run, step: int, steps: int, metrics: dict, force: bool = False) -> None:
    """Keeps the step's metrics for the summary and logs them every `logging_every` steps, on the last, or when forced."""
    if step % run.config.logging_every == 0 or step == steps or force:
        run.logger.log(step, metrics)
    run.history.append(metrics)


def first_and_last_loss(run: Run) -> dict:
    return {"first_loss": run.history[0]["loss"] if run.history else None,
            "final_loss": run.history[-1]["loss"] if run.history else None}


def finish_run(run: Run, steps: int, final_eval: dict, summarize: Callable[[], dict], format_summary: Callable[[dict], str],
               summary_dir: str | Path | None = None) -> dict:
    """Logs the final evaluation, closes the log, writes `summary.json` (main process) and prints the summary.

    Call after saving the model: `summarize()` builds the recipe's summary (its seconds then include the save).
    """
    if final_eval:
        run.logger.log(steps, final_eval)
    run.logger.close()
    summary = summarize()
    if run.accelerator.is_main_process:
        write_json(Path(summary_dir or run.output_dir) / "summary.json", summary)
        log.info(format_summary(summary))
    return summary
