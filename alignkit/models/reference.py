"""The reference policy of direct alignment (DPO, KTO), three ways, shared by both recipes.

Each strategy answers `logps(policy, examples, columns, batch, autocast)`: the reference's
summed log-probs of those sequences (models/sequences.py), column-major, (len(columns) * B,).

Reference strategies (config key `reference`):
- copy: a frozen copy of the starting model, run beside the policy every step.
- adapter: with LoRA, the policy itself with its adapters disabled: no second copy in memory.
- precompute: every example's reference log-probs computed once, before training, and
  cached on disk under a key made of the reference weights, the token ids and the
  precision, so a second run (another loss, another seed) on the same model and data
  reuses them and runs no reference model at all.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from alignkit.errors import AlignkitError
from alignkit.io import atomic_file
from alignkit.models.wrapping import adapters_disabled
from alignkit.models.sequences import collate_sequences, sequence_logps, to_device
from alignkit.models.embedded import cache_dir
from alignkit.models.load import load_causal_lm

log = logging.getLogger("alignkit")
CACHE_FORMAT = 1  # bump when what a cache file holds, or how it is computed, changes


# ---------------------------------------------------------------- the three strategies

class FrozenCopy:
    """A second, frozen model (the starting policy, or `reference_model`) scored beside the policy."""

    name = "copy"

    def __init__(self, model):
        self.model = model.eval().requires_grad_(False)

    @torch.no_grad()
    def logps(self, policy, examples, columns, batch, autocast) -> torch.Tensor:
        with autocast():
            return sequence_logps(self.model, batch)[0]


class DisabledAdapter:
    """The LoRA policy with its adapters switched off: the base model, without a second copy in memory."""

    name = "adapter"

    @torch.no_grad()
    def logps(self, policy, examples, columns, batch, autocast) -> torch.Tensor:
        with adapters_disabled(policy) as peft_model:
            was_training = peft_model.training
            peft_model.eval()  # the reference is deterministic: no dropout
            try:
                with autocast():
                    return sequence_logps(peft_model, batch)[0]
            finally:
                peft_model.train(was_training)


class CachedLogps:
    """Reference log-probs looked up by example index from a table computed once (see `precompute_logps`)."""

    name = "precompute"

    def __init__(self, table: torch.Tensor):
        self.table = table  # (num_examples, num_sequences)

    def logps(self, policy, examples, columns, batch, autocast) -> torch.Tensor:
        rows = torch.tensor([e["index"] for e in examples])
        return self.table[rows][:, list(columns)].T.reshape(-1).to(batch["input_ids"].device)  # column-major, (len(columns) * B,)


# ---------------------------------------------------------------- the on-disk cache

def model_fingerprint(model) -> str:
    """A hash of the weights the model computes with; fresh (all-zero B) LoRA adapters are a no-op and left out."""
    params = dict(model.named_parameters())
    lora_b = [p for n, p in params.items() if "lora_B" in n]
    skip_lora = bool(lora_b) and all(not p.detach().any() for p in lora_b)
    digest = hashlib.blake2b(digest_size=16)
    for name, param in sorted(params.items()):
        if skip_lora and "lora_" in name:
            continue
        tensor = param.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def data_fingerprint(examples: list[dict]) -> str:
    """A hash of every example's token ids, in order."""
    digest = hashlib.blake2b(digest_size=16)
    for example in examples:
        for prompt, completion in example["sequences"]:
            digest.update(repr((prompt, completion)).encode())
    return digest.hexdigest()


def cache_path(cache_dir: str | Path, weights: str, examples: list[dict], precision: str) -> Path:
    key = hashlib.blake2b(f"{CACHE_FORMAT}|{weights}|{data_fingerprint(examples)}|{precision}".encode(), digest_size=16).hexdigest()
    return Path(cache_dir) / f"{key}.pt"


def default_cache_dir() -> Path:
    return cache_dir() / "reference_logps"


@torch.no_grad()
def compute_logps(model, examples: list[dict], pad_id: int, batch_size: int, autocast, device, share_prompt: bool = False,
                  desc: str = "reference") -> torch.Tensor:
    """(num_examples, num_sequences) summed log-probs of every sequence of every example under `model`."""
    from tqdm.auto import tqdm

    width = len(examples[0]["sequences"]) if examples else 0
    table = torch.zeros(len(examples), width)
    columns = tuple(range(width))
    order = sorted(range(len(examples)), key=lambda i: -max(len(p) + len(c) for p, c in examples[i]["sequences"]))  # little padding
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, mininterval=2):
        idx = order[start:start + batch_size]
        batch = to_device(collate_sequences([examples[i] for i in idx], columns, pad_id, share_prompt), device)
        with autocast():
            logps = sequence_logps(model, batch)[0].float().cpu()  # (width * b,)
        table[idx] = logps.view(width, len(idx)).T
    model.train(was_training)
    return table


def precompute_logps(model, examples: list[dict], pad_id: int, batch_size: int, accelerator, cache_dir: str | Path,
                     precision: str, weights: str | None = None, share_prompt: bool = False) -> torch.Tensor:
    """The reference table for `examples`, read from the cache or computed once and written there.

    The main process computes and writes first; the others then find the file.
    """
    weights = weights or model_fingerprint(model)
    path = cache_path(cache_dir, weights, examples, f"{precision}/{'shared' if share_prompt else 'rows'}")
    with accelerator.main_process_first():
        if path.is_file():
            table = torch.load(path, weights_only=True)["logps"]
            if table.shape[0] == len(examples):
                log.info(f"reference log-probs: reusing {path}")
                return table
        table = compute_logps(model, examples, pad_id, batch_size, accelerator.autocast, accelerator.device, share_prompt)
        if accelerator.is_main_process:
            with atomic_file(path) as tmp:
                torch.save({"logps": table, "format": CACHE_FORMAT, "weights": weights, "precision": precision}, tmp)
            log.info(f"reference log-probs: cached {len(examples)} examples in {path}")
    return table


# ---------------------------------------------------------------- choosing a strategy

def resolve_strategy(config) -> str:
    """auto -> adapter with LoRA (no second copy), copy otherwise."""
    if config.reference != "auto":
        return config.reference
    return "adapter" if config.lora_r > 0 and not config.reference_model else "copy"


def load_reference_model(config, accelerator):
    """The frozen reference model: `reference_model`, or a fresh load of the starting `model`."""
    model = load_causal_lm(config.reference_model or config.model, config.dtype, config.trust_remote_code,
                           allow_unsafe_pickle=config.allow_unsafe_pickle)
    return model.to(accelerator.device).eval().requires_grad_(False)


def build_reference(config, policy, accelerator, splits: dict[str, list[dict]], pad_id: int, share_prompt: bool = False) -> dict:
    """One reference per data split: {"train": ..., "eval": ...}. Call before `accelerator.prepare`.

    With `precompute`, the reference is `reference_model` when given, else the policy
    itself before its first step (with fresh LoRA adapters that is the base model),
    so no copy stays in memory during training.
    """
    strategy = resolve_strategy(config)
    if strategy == "adapter":
        if not hasattr(policy, "disable_adapter"):
            raise AlignkitError("reference: adapter needs LoRA (set lora_r > 0); full fine-tuning uses reference: copy or precompute")
        return {name: DisabledAdapter() for name in splits}
    if strategy == "copy":
        reference = FrozenCopy(load_reference_model(config, accelerator))
        return {name: reference for name in splits}
    scorer = load_reference_model(config, accelerator) if config.reference_model else policy.to(accelerator.device)
    weights = model_fingerprint(scorer)
    cache_dir = config.ref_cache_dir or default_cache_dir()
    precision = f"{config.dtype}/{config.mixed_precision}/{accelerator.device.type}"
    tables = {name: CachedLogps(precompute_logps(scorer, examples, pad_id, config.batch_size * 2, accelerator, cache_dir, precision,
                                                 weights, share_prompt))
              for name, examples in splits.items() if examples}
    del scorer
    return tables
