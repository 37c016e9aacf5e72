"""Frozen linear weights stored in bfloat16 while bf16 autocast is on: the same numbers, fewer casts.

Under `torch.autocast(dtype=bfloat16)` a linear layer casts its float32 weight to
bfloat16 on every call. Autocast caches that cast only for weights that require
grad, so with LoRA the frozen base weights (nearly all of them) are cast again at
every forward, and during generation at every decoded token: for a 135M model that
is ~400 MB of memory traffic per token on a CPU. Casting them once up front gives
bit-identical results (autocast would have made exactly that bfloat16 copy) and
removes the traffic. Trainable weights (LoRA, value head) stay float32.

The tied LM head of SmolLM2 is the largest single weight (49152 x 576) and is
applied at every decoded token, so it gets a bfloat16 copy too.

Only valid while every forward runs under bf16 autocast: the recipe does this only
with `mixed_precision: bf16`, and restores the float32 weights before saving.
"""

from __future__ import annotations

import torch
from torch import nn


def cast_frozen_linears(model: nn.Module) -> dict:
    """Gives every frozen float32 `nn.Linear` a bfloat16 copy of its weight; returns what `restore_frozen_linears` needs.

    A weight shared with an embedding (a tied LM head) gets its own bfloat16 copy and
    the embedding keeps the float32 original: embedding lookups are not autocast, so
    their precision must not change. Restoring re-ties them.
    """
    originals = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Linear) and isinstance(weight, nn.Parameter) and not weight.requires_grad and weight.dtype == torch.float32:
            originals[module] = weight
            module.weight = nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
    return originals


def restore_frozen_linears(originals: dict) -> None:
    """Puts the original float32 parameters (and so any weight tying) back."""
    for module, weight in originals.items():
        module.weight = weight
