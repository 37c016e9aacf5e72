"""What a recipe needs of a training monitor, and the monitor that does nothing.

Recipes take a `monitor` argument and call it; they never build one. The over-optimization and
reward-hacking monitor (`alignkit.evaluate.monitors.TrainingMonitor`) is built from the config's
`monitor:` section by the command line, the pipeline and the Python entry points (`alignkit.dpo`,
`alignkit.grpo`, ...), which sit above the recipes; this keeps the arrow train -> evaluate out.

    monitor.bind(accelerator=..., tokenizer=..., reference=..., implicit_beta=..., proxy=..., gold=...)
    ...
        metrics.update(monitor.after_step(step, model, rollout, prompt_rows))
        if monitor.stop: break
"""

from __future__ import annotations

from typing import Protocol

from alignkit.errors import AlignkitError


class Monitor(Protocol):
    stop: bool

    def bind(self, *, accelerator, tokenizer, reference=None, implicit_beta: float = 0.0, proxy=None, gold=None) -> None:
        """What only the recipe has: its devices, tokenizer, reference model (None: LoRA adapters off, or load a
        copy when first needed), DPO's resolved beta, the training reward (proxy) and the gold judge."""

    def after_step(self, step: int, model, rollout=None, prompt_rows=None) -> dict:
        """Called once per optimizer step; returns metrics to log (empty on most steps)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class NullMonitor:
    stop = False

    def bind(self, **_) -> None:
        pass

    def after_step(self, step, model, rollout=None, prompt_rows=None) -> dict:
        return {}

    def summary(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: a run resumed without a monitor ignores a checkpointed monitor's memory."""


def monitor_or_null(monitor, config, stage: str):
    """`monitor`, or a NullMonitor when the config asks for none; a configured monitor that nobody built is an error."""
    if monitor is not None:
        return monitor
    settings = getattr(config, "monitor", None)
    if settings is not None and (settings.every or settings.hacking_every):
        raise AlignkitError(f"{stage}: the config has a `monitor:` section, but this recipe function does not build monitors; "
                            f"run `alignkit {stage}`, call alignkit.{stage}(...), or pass monitor=build_monitor(config, '{stage}') "
                            f"(alignkit.evaluate.monitors)")
    return NullMonitor()
