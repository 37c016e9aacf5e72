"""The small pieces every training recipe shares: accelerator, optimizer, schedule, batching, logging, saving.

Recipes (sft.py, reward.py, dpo.py, ...) read top to bottom and call these; there is
no base Trainer class with hooks to chase.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import torch

from alignkit.errors import AlignkitError
from alignkit.io import append_jsonl, atomic_directory, truncate_log
from alignkit.data.collate import length_grouped_order

log = logging.getLogger("alignkit")


# ---------------------------------------------------------------- setup

def make_accelerator(args, output_dir: str | Path | None = None, resume_step: int = 0):
    """An `accelerate.Accelerator` for the config's precision and trackers; DDP/FSDP/DeepSpeed come from `accelerate launch`.

    `report_to`'s trackers (all but `jsonl`, alignkit's own metrics.jsonl) become accelerate trackers; MetricsLogger starts
    and feeds them. TensorBoard writes to `<output_dir>/tensorboard` and, on a resume from `resume_step`, purges what a
    killed run logged after it, so replayed steps appear once.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.tracking import TensorBoardTracker
    from accelerate.utils import set_seed

    # Stages run one after another in one process (pipeline, tests) may want different
    # precisions; the process group (PartialState) survives the reset.
    AcceleratorState._reset_state(reset_partial_state=False)
    output_dir = Path(output_dir or args.output_dir)
    log_with = [TensorBoardTracker("tensorboard", str(output_dir), purge_step=resume_step + 1 if resume_step else None)
                if name == "tensorboard" else name for name in dict.fromkeys(args.report_to) if name != "jsonl"]
    # cpu=True when there is no GPU: accelerate then forms a gloo process group under torchrun (MULTI_CPU)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=not torch.cuda.is_available(), log_with=log_with or None)
    _fsdp_on_cpu(accelerator)
    set_seed(args.seed)
    return accelerator


def _fsdp_on_cpu(accelerator) -> None:
    """Keeps the FSDP that `accelerate launch` asked for on CPU processes (gloo), which accelerate 1.15 drops.

    AcceleratorState only turns a launch with `distributed_type: FSDP` into FSDP on GPU-like devices; with
    `use_cpu: true` it silently runs DDP (MULTI_CPU). FSDP2 itself works over gloo, so we set the state as accelerate
    does on a GPU: the plugin built from the launcher's FSDP_* variables, and the FSDP distributed type.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or accelerator.device.type != "cpu"
            or accelerator.num_processes < 2 or getattr(state, "fsdp_plugin", None) is not None):
        return
    plugin = FullyShardedDataParallelPlugin()
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin, state.distributed_type = plugin, DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def build_optimizer(model, args, learning_rates: dict[str, float] | None = None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; biases and norm weights get no weight decay.

    `learning_rates` maps a child module's name (in `model.named_children()`) to its own
    learning rate (PPO's value head); the rest use `args.learning_rate`.
    """
    rates = learning_rates or {}
    groups: dict[tuple[float, bool], list] = {}  # (lr, decay) -> params; the policy's rate first, as before
    for lr in (args.learning_rate, *rates.values()):
        for decay in (True, False):
            groups.setdefault((lr, decay), [])
    for name, param in model.named_parameters():
        if param.requires_grad:
            lr = rates.get(name.split(".", 1)[0], args.learning_rate)
            groups[(lr, not (param.ndim < 2 or "norm" in name.lower()))].append(param)
    if not any(groups.values()):
        raise AlignkitError("the model has no trainable parameters; check lora_r and target_modules")
    return torch.optim.AdamW([{"params": params, "lr": lr, "weight_decay": args.weight_decay if decay else 0.0}
                              for (lr, decay), params in groups.items()], lr=args.learning_rate, betas=tuple(args.adam_betas))


def build_scheduler(optimizer, args, total_steps: int):
    """Warmup then linear/cosine decay (or constant), stepped once per optimizer step."""
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(args.lr_scheduler, args.lr_scheduler)
    warmup = int(math.ceil(args.warmup_ratio * total_steps))
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def total_optimizer_steps(num_rows: int, args, world_size: int = 1) -> int:
    """Optimizer steps for the run: `max_steps`, or enough for `num_epochs` over `num_rows`."""
    if args.max_steps > 0:
        return args.max_steps
    per_step = args.batch_size * args.grad_accum_steps * world_size
    return max(1, math.ceil(num_rows * args.num_epochs / per_step))


# ---------------------------------------------------------------- batching

class BatchStream:
    """Endless micro-batches of row indices for one process, reshuffled each epoch.

    Each optimizer step consumes `grad_accum_steps` micro-batches per process; process
    `rank` of `world_size` takes every world_size-th micro-batch, so the union over
    processes is the same global batch a single process would see.
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, lengths=None):
        if num_rows == 0:
            raise AlignkitError("no training rows are left after tokenization; see the data report above")
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.rank, self.world_size, self.lengths = rank, world_size, lengths
        self.epoch, self.position = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.lengths is not None:  # grouped by the micro-batch of all processes: N x b rows order as 1 x Nb rows do
            return length_grouped_order(self.lengths, self.batch_size * self.world_size, generator)
        return torch.randperm(self.num_rows, generator=generator).tolist()

    def _take(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffle()
            take = self._order[self.position:self.position + count - len(out)]
            out += take
            self.position += len(take)
        return out

    def next_step(self, grad_accum_steps: int) -> list[list[int]]:
        """This process's micro-batches for the next optimizer step."""
        global_rows = self._take(self.batch_size * grad_accum_steps * self.world_size)
        micro = [global_rows[i:i + self.batch_size] for i in range(0, len(global_rows), self.batch_size)]
        return micro[self.rank::self.world_size]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._shuffle()

    @property
    def fractional_epoch(self) -> float:
        return self.epoch + self.position / max(1, len(self._order))


def global_sum(accelerator, value: torch.Tensor) -> torch.Tensor:
    """Sum of a scalar over processes (a no-op with one)."""
    if accelerator.num_processes == 1:
        return value
    return accelerator.reduce(value.detach().clone().to(accelerator.device), reduction="sum")


# ---------------------------------------------------------------- logging

class MetricsLogger:
    """One JSON object per logged step in `<output_dir>/metrics.jsonl` (always), and the accelerator's trackers.

    The trackers are the accelerator's (`make_accelerator` builds them from `report_to`): they are started here with
    the run's config, receive every logged step's finite numbers (NaN/inf and text stay in metrics.jsonl only), and
    are finished by `close`. Only the main process (`enabled`) writes or logs.
    """

    def __init__(self, output_dir: str | Path, enabled: bool = True, resume_step: int = 0, accelerator=None,
                 project: str = "alignkit", run_name: str = "", config: dict | None = None):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.accelerator = accelerator if accelerator is not None and accelerator.log_with else None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            truncate_log(self.path, resume_step)  # a resumed run keeps the history up to its checkpoint; a new one starts empty
            if self.accelerator:
                self._start_trackers(project, run_name or Path(output_dir).name, output_dir, tracker_config(config or {}))

    def _start_trackers(self, project: str, run_name: str, output_dir, config: dict) -> None:
        """Starts every tracker and gives it the run's config; TensorBoard gets none (config.yaml holds it, and accelerate
        would add a folder to <output_dir>/tensorboard each time)."""
        try:
            self.accelerator.init_trackers(project, None, tracker_init_kwargs(run_name, output_dir))
            for tracker in self.accelerator.trackers:
                if tracker.name != "tensorboard":
                    tracker.store_init_configuration(config)
        except Exception as exc:  # a tracker's own error (login, server, store); the config was validated already
            names = ", ".join(str(t) for t in self.accelerator.log_with)
            raise AlignkitError(f"report_to: starting the trackers ({names}) failed: {type(exc).__name__}: {exc}; fix the tracker's "
                                f"settings (e.g. `wandb login` or WANDB_MODE=offline, MLFLOW_TRACKING_URI) or remove it from report_to") from None

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        values = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}
        append_jsonl(self.path, {"step": step, **values})
        if self.accelerator:
            finite = {k: v for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
            if finite:
                self.accelerator.log(finite, step=step)

    def close(self) -> None:
        """Finishes the trackers (not `accelerator.end_training()`, which would also end the process group that later
        stages of a pipeline, or the rest of a DDP run, still use)."""
        if self.enabled and self.accelerator:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers.clear()
        self.accelerator = None


def tracker_config(config: dict, prefix: str = "") -> dict:
    """The run's config as the flat {key: bool/int/float/str} every tracker accepts: sections become `section/key`,
    lists and empty values their JSON text."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(tracker_config(value, f"{prefix}{key}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix + key] = value
        else:
            flat[prefix + key] = json.dumps(value, default=str)
    return flat


def tracker_init_kwargs(run_name: str, output_dir: str | Path) -> dict:
    """Per-tracker init options: the run is named after its output folder; W&B writes under output_dir unless $WANDB_DIR says."""
    wandb = {"name": run_name} if os.environ.get("WANDB_DIR") else {"name": run_name, "dir": str(output_dir)}
    return {"wandb": wandb, "trackio": {"name": run_name}, "mlflow": {"run_name": run_name}}  # the others: accelerate's defaults


class Throughput:
    """Tokens per second over the time spent in the training loop proper."""

    def __init__(self):
        self.tokens, self.seconds, self.last_seconds, self._start = 0, 0.0, 0.0, None

    def start(self) -> None:
        self._start = time.perf_counter()

    def stop(self, tokens: int) -> float:
        elapsed = self.last_seconds = time.perf_counter() - self._start
        self.tokens += tokens
        self.seconds += elapsed
        return tokens / elapsed if elapsed > 0 else 0.0

    @property
    def mean(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class NanGuard:
    """Skips optimizer steps whose loss or gradient norm is NaN/inf; stops the run after too many in a row."""

    def __init__(self, max_consecutive: int):
        self.max_consecutive, self.consecutive, self.skipped = max_consecutive, 0, 0

    def should_skip(self, accelerator, step: int, loss, grad_norm=None) -> bool:
        values = [torch.as_tensor(loss, dtype=torch.float32)]
        if grad_norm is not None:
            values.append(torch.as_tensor(grad_norm, dtype=torch.float32))
        bad = torch.tensor(float(not all(torch.isfinite(v).all() for v in values)))
        if global_sum(accelerator, bad.to(accelerator.device)).item() == 0:  # every rank must agree to skip
            self.consecutive = 0
            return False
        self.consecutive += 1
        self.skipped += 1
        log.warning(f"step {step}: NaN/inf loss or gradient; step skipped ({self.consecutive} in a row)")
        if self.consecutive >= self.max_consecutive:
            raise AlignkitError(
                f"stopped at step {step}: the loss or gradients were NaN/inf for {self.consecutive} steps in a row; "
                f"likely causes: a learning rate that is too high, a beta that is too small or large, or bad rows (empty or garbled completions)"
            )
        return True

    def state_dict(self) -> dict:
        return {"consecutive": self.consecutive, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive, self.skipped = state["consecutive"], state["skipped"]


# ---------------------------------------------------------------- saving

def save_model(accelerator, model, tokenizer, output_dir: str | Path, merge_lora: bool = True, extra_files: dict | None = None) -> Path:
    """Saves the final model as `<output_dir>/model` (a plain HF directory); LoRA adds `<output_dir>/adapter`.

    With LoRA and `merge_lora`, `model/` holds the adapter merged into the base, so
    `AutoModelForCausalLM.from_pretrained(output_dir + "/model")` needs no peft.
    """
    from alignkit.train.checkpoint import full_states

    output_dir = Path(output_dir)
    accelerator.wait_for_everyone()
    sharded = full_states(model)  # FSDP: every process hands in its shards
    if not accelerator.is_main_process:
        return output_dir / "model"
    model = accelerator.unwrap_model(model)
    is_peft = hasattr(model, "peft_config")
    if is_peft and sharded:
        raise AlignkitError("saving a LoRA model trained under FSDP is not supported; train LoRA with DDP (--num-processes N)")
    if is_peft:
        with atomic_directory(output_dir / "adapter") as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        if not merge_lora:
            return output_dir / "adapter"
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    with atomic_directory(output_dir / "model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": sharded[0]} if sharded else {}))
        tokenizer.save_pretrained(tmp)
        for name, content in (extra_files or {}).items():
            Path(tmp, name).write_text(content)
    return output_dir / "model"
