"""What wraps a model, and switches on it: one unwrap, one "adapters off", one dropout switch.

Recipes, the rollout, evaluation and monitors all reach through the same three doors:

- `unwrap(model)`: the innermost Hugging Face model under DDP / torch.compile / PEFT wrappers
  (where the LM head and config live); `strip_wrappers(model)` peels only DDP and compile, keeping
  a PEFT model whole (for generation, saving and switching adapters).
- `adapters_disabled(model)`: the LoRA policy with its adapters off, which is its own reference.
- `disable_dropout(model)`: every dropout to 0, nn.Dropout modules and attention's functional dropout.
"""

from __future__ import annotations

import contextlib

import torch

from alignkit.errors import AlignkitError


def strip_wrappers(model):
    """The model under DDP / accelerate (`.module`) and torch.compile (`._orig_mod`) wrappers; PEFT kept."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def unwrap(model):
    """The innermost Hugging Face model under DDP/compile/PEFT wrappers."""
    while True:
        model = strip_wrappers(model)
        if not hasattr(model, "get_base_model"):  # PEFT: LoRA layers live inside the base modules
            return model
        model = model.get_base_model()


def is_sharded(model) -> bool:
    """True under FSDP (1 or 2), whose parameters are only whole inside the wrapped forward."""
    return any(type(m).__name__.startswith(("FullyShardedDataParallel", "FSDP")) for m in (model, unwrap(model)))


@contextlib.contextmanager
def adapters_disabled(model):
    """Yields the LoRA model with its adapters switched off: the base model, without a second copy in memory."""
    peft_model = strip_wrappers(model)
    if not hasattr(peft_model, "disable_adapter"):
        raise AlignkitError("the reference needs either a LoRA policy (lora_r > 0, adapters disabled) or a reference model "
                            "(reference: copy or precompute)")
    with peft_model.disable_adapter():
        yield peft_model


def disable_dropout(model) -> None:
    """Sets every dropout in `model` to 0 (nn.Dropout modules and attention's functional dropout).

    RL and reward models compare scores of the same tokens across forwards; dropout would make
    PPO's step-0 ratio differ from 1 and r_chosen - r_rejected noisy.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
