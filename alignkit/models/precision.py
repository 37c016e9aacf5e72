"""Whether bf16 autocast is fast here: `mixed_precision: auto` and every `bf16=True` below it ask this module.

bf16 autocast is the largest speed lever on CPUs that compute bf16 natively (AVX-512 BF16 or AMX: about 3x
float32 for training), and on GPUs from Ampere on. A CPU without those instructions (AVX2 only, many AMD EPYC and
older Intel parts) emulates them: a bf16 matrix product measured 0.9 GFLOP/s against 146 for float32 on such a
2-core AMD EPYC, so a run that asks for bf16 there is about 100x slower. `auto` therefore means bf16 where it is
native and float32 elsewhere; an explicit `bf16` is kept, with a warning where it is emulated.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger("alignkit")
MIXED_PRECISION = ("auto", "bf16", "no")


@functools.cache
def bf16_is_native(device_type: str = "cpu") -> bool:
    """True when `device_type` computes bf16 matrix products in hardware (CUDA: Ampere or later; CPU: AVX-512 BF16 or AMX)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return True  # other accelerators (xpu, mps, npu) that torch autocasts in bf16 do it natively
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN: assume the old default
        return True


def default_device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_mixed_precision(value: str, key: str = "mixed_precision") -> str:
    """`auto` -> bf16 where it is native on the device training will use, else no; `bf16` where it is emulated is kept
    with a warning; `no` stays."""
    native = bf16_is_native(default_device_type())
    if value == "auto":
        return "bf16" if native else "no"
    if value == "bf16" and not native:
        _warn_emulated(key)
    return value


@functools.cache
def _warn_emulated(key: str) -> None:
    log.warning(f"{key}: bf16 on this {default_device_type().upper()} is emulated (no AVX-512 BF16 or AMX), about 100x slower "
                f"than float32; set {key}: auto (bf16 only where native) or no")


def autocast_bf16(wanted: bool, device) -> bool:
    """Whether a `bf16=True` primitive (sampling, scoring, KL) autocasts on `device`: only where bf16 is native."""
    return bool(wanted) and bf16_is_native(torch.device(device).type)


def bf16_autocast(wanted: bool, device):
    """torch.autocast in bf16 on `device` when `wanted` and native there (`autocast_bf16`), else a disabled one."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16(wanted, device))
