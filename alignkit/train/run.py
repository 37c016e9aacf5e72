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
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from alignkit.config import save_config, to_dict
from alignkit.errors import AlignkitError
from alignkit.io import append_jsonl, write_json
from alignkit.train.checkpoint import load_checkpoint, read_trainer_state, remove_partial_saves, resolve_resume, save_checkpoint
from alignkit.train.hub import push_to_hub
from alignkit.train.loop import (
    MetricsLogger, NanGuard, Throughput, build_optimizer, build_scheduler, log, make_accelerator, total_optimizer_steps,
)
from alignkit.train.model_card import write_model_cards


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
    checkpoint: Path | None = None  # the checkpoint this run resumes from
    changed: dict = field(default_factory=dict)  # key -> (checkpoint's value, this run's): what --resume_override let through
    first_loss: float | None = None  # the first step's loss of the whole run, kept across resumes


# keys a resumed run may change without breaking exactness: where and how often things are written or checked
FREE_ON_RESUME = ("resume", "resume_override", "output_dir", "save_every", "save_total_limit", "logging_every", "report_to",
                  "max_nan_steps", "eval_every", "tracker_project", "push_to_hub", "hub_model_id", "hub_private", "hub_token")


def start_run(config, stage: str, output_dir: str | Path | None = None) -> Run:
    """The accelerator (devices, mixed precision, process group) and the seed, from the validated config.

    A resume is checked here, before any model loads: the checkpoint must come from the same stage, and a
    key that would change the resumed steps (data, batch, seed, schedule, model, LoRA shape, loss, ...) must
    equal the checkpoint's unless `resume_override` names it.
    """
    started = time.time()
    output_dir = Path(output_dir or config.output_dir)
    checkpoint = resolve_resume(config.resume, output_dir)
    changed = check_resume(checkpoint, config, stage) if checkpoint else {}
    resume_step = read_trainer_state(checkpoint).get("step", 0) if checkpoint else 0  # TensorBoard purges what followed it
    accelerator = make_accelerator(config, output_dir, resume_step)
    return Run(config, stage, accelerator, started, output_dir, NanGuard(config.max_nan_steps), checkpoint=checkpoint, changed=changed)


def _plain(config) -> dict:
    return json.loads(json.dumps(to_dict(config), default=str))


def check_resume(checkpoint: Path, config, stage: str) -> dict:
    """{key: (checkpoint's value, this run's)} of the overridden changes; any other change or another stage is refused."""
    state = read_trainer_state(checkpoint)
    if state.get("stage", stage) != stage:
        raise AlignkitError(f"--resume {checkpoint}: that checkpoint was written by `alignkit {state['stage']}`, not `alignkit {stage}`; "
                            f"resume it with `alignkit {state['stage']}`, or start this run without --resume")
    before, now = state.get("config"), _plain(config)
    if before is None:  # a checkpoint from before configs were recorded: nothing to compare
        return {}
    changed = {k: (before.get(k), v) for k, v in now.items() if k not in FREE_ON_RESUME and k in before and before[k] != v}
    refused = [k for k in changed if k not in config.resume_override]
    if refused:
        shown = "; ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused[:4])
        raise AlignkitError(f"--resume {checkpoint}: this run changes what the checkpoint ran with ({shown}), which would make the "
                            f"resumed steps differ from an uninterrupted run; resume with the checkpoint's values, or pass "
                            f"--resume_override {','.join(refused)} to accept the change")
    unused = sorted(set(config.resume_override) - set(changed))
    if unused:
        log.warning(f"resume_override names {', '.join(unused)}, which the resumed run does not change")
    return changed


def record_config(run: Run, output_dir: str | Path | None = None) -> None:
    """Writes the config to `<output_dir>/config.yaml` and a line to `config_history.jsonl` (main process).

    A fresh run writes both anew. A resumed run keeps `config.yaml` (what the first steps ran with) and
    appends its own config, the checkpoint and any overridden changes to the history.
    """
    if not run.accelerator.is_main_process:
        return
    folder = Path(output_dir or run.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    history = folder / "config_history.jsonl"
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stage": run.stage, "resumed_from": str(run.checkpoint) if run.checkpoint else None,
             "changed": {k: list(v) for k, v in run.changed.items()}, "config": _plain(run.config)}
    if run.checkpoint is None or not (folder / "config.yaml").is_file():
        save_config(run.config, folder / "config.yaml")
        history.unlink(missing_ok=True)
    append_jsonl(history, entry)


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
    if run.checkpoint is not None:
        state = load_checkpoint(run.checkpoint, accelerator, model, optimizer, scheduler, stream, **checkpointed)
        run.start_step, run.extra = state["step"], state["extra"]
        run.first_loss = state.get("run", {}).get("first_loss")
        if accelerator.is_main_process and (stale := remove_partial_saves(run.output_dir)):
            log.info(f"removed {len(stale)} half-written folder(s) a killed save left: {', '.join(p.name for p in stale)}")
        log.info(f"{run.stage}: resumed from {run.checkpoint} at step {run.start_step}")
    run.logger = MetricsLogger(run.output_dir, accelerator.is_main_process, resume_step=run.start_step, accelerator=accelerator,
                               project=config.tracker_project, run_name=tracker_run_name(run), config={"stage": run.stage, **_plain(config)})
    return run.start_step


def tracker_run_name(run: Run) -> str:
    """The trackers' run name: the output folder's name (`sft`), with the sub-run's for a folder inside it (`reward-member-0`)."""
    top = Path(run.config.output_dir)
    return top.name if run.output_dir == top else f"{top.name}-{run.output_dir.name}"


def checkpoint(run: Run, step: int, model, optimizer, scheduler, stream, extra: dict | None = None, **checkpointed) -> Path:
    """`checkpoint-<step>` with the recipe's state (`extra`), and the run's own record: stage, full config, first loss."""
    first_loss = run.history[0]["loss"] if run.history and "loss" in run.history[0] and run.first_loss is None else run.first_loss
    record = {"stage": run.stage, "config": _plain(run.config), "run": {"first_loss": first_loss}}
    return save_checkpoint(run.output_dir, step, run.accelerator, model, optimizer, scheduler, stream, extra,
                           run.config.save_total_limit, record=record, **checkpointed)


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
    """The run's first and last step losses; after a resume the first is the original run's, from the checkpoint."""
    first = run.first_loss if run.first_loss is not None else (run.history[0]["loss"] if run.history else None)
    return {"first_loss": first, "final_loss": run.history[-1]["loss"] if run.history else None}


def finish_run(run: Run, steps: int, final_eval: dict, summarize: Callable[[], dict], format_summary: Callable[[dict], str],
               summary_dir: str | Path | None = None) -> dict:
    """Logs the final evaluation, closes the log and the trackers, writes `summary.json`, the model cards (README.md in
    model/ and adapter/) and, with `push_to_hub`, uploads them (main process); prints the summary.

    Call after saving the model: `summarize()` builds the recipe's summary (its seconds then include the save).
    """
    if final_eval:
        run.logger.log(steps, final_eval)
    run.logger.close()
    summary = summarize()
    if run.accelerator.is_main_process:
        write_json(Path(summary_dir or run.output_dir) / "summary.json", summary)
        write_model_cards(run.config, run.stage, summary)
        log.info(format_summary(summary))
        if run.config.push_to_hub:
            push_to_hub(run.config)
    return summary
