"""The `rewards:` list of a PPO/GRPO config, checked without building anything.

`check_reward_specs` runs when the config loads (PPOConfig.validate) and again in
`rl.rewards.build_rewards`, so a bad entry (an unknown type or key, a missing path, a weight
that is not a finite number) fails before any model loads. Standard library only: the config
layer imports it without pulling in torch or transformers.
"""

from __future__ import annotations

import math

from alignkit.errors import AlignkitError

# source type -> its keys besides `type` and `weight`, and the one it cannot do without
SOURCE_KEYS = {
    "model": {"path", "conservative_k", "batch_size", "standardize", "bf16", "device"},
    "function": {"function", "name"},
    "http": {"url", "timeout", "retries", "backoff"},
}
REQUIRED = {"model": "path", "function": "function", "http": "url"}

# numeric key -> (whole number?, admits, the range in words)
NUMBERS = {
    "weight": (False, lambda v: True, "a finite number"),
    "conservative_k": (False, lambda v: v >= 0, "0 or more"),
    "batch_size": (True, lambda v: v >= 1, "a whole number, at least 1"),
    "timeout": (False, lambda v: v > 0, "positive (seconds)"),
    "retries": (True, lambda v: v >= 0, "a whole number, 0 or more"),
    "backoff": (False, lambda v: v >= 0, "0 or more (seconds)"),
}


def _number_ok(value, whole: bool, admits) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        return False
    return math.isfinite(number) and (not whole or number.is_integer()) and admits(number)


def check_reward_specs(specs) -> None:
    """Every entry a mapping with a known `type`, only that type's keys, its required key, and numbers in range."""
    if not isinstance(specs, list):
        raise AlignkitError(f"rewards must be a list of sources [{{type: {' | '.join(SOURCE_KEYS)}, weight: 1.0, ...}}], got {specs!r}")
    for number, spec in enumerate(specs, 1):
        if not isinstance(spec, dict) or spec.get("type") not in SOURCE_KEYS:
            raise AlignkitError(f"rewards entry {number} must be a mapping with type: {' | '.join(SOURCE_KEYS)}; got {spec!r}")
        kind, allowed = spec["type"], SOURCE_KEYS[spec["type"]] | {"type", "weight"}
        where = f"rewards entry {number} (type {kind})"
        unknown = sorted(set(map(str, spec)) - allowed)
        if unknown:
            raise AlignkitError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")
        if not spec.get(REQUIRED[kind]):
            raise AlignkitError(f"{where} needs {REQUIRED[kind]}: add it to the entry")
        for key, (whole, admits, text) in NUMBERS.items():
            if key in spec and not _number_ok(spec[key], whole, admits):
                raise AlignkitError(f"{where}: {key} must be {text}, got {spec[key]!r}; fix the entry in the YAML")
