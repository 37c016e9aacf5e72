"""Resumable checkpoints: model, optimizer, scheduler, RNG states, data position and any recipe state.

A checkpoint is `<output_dir>/checkpoint-<step>/`, written into a temporary folder and
renamed into place, so a crash mid-save leaves the previous checkpoint as the newest
complete one. Nothing here is unpickled with arbitrary code: tensors go through
`torch.load(weights_only=True)`, everything else is JSON, model weights are safetensors.

    model/                 the trained weights (a PEFT adapter folder under LoRA)
    <name>.safetensors     the trainable parameters of each further module a recipe names (PPO's value model)
    optimizer.pt           optimizer.state_dict()   (tensors and numbers only)
    rng.pt                 torch CPU (and CUDA) generator states, and the recipe's own torch.Generators
    trainer_state.json     step, scheduler, data stream, python/numpy RNG, recipe extras
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from alignkit.errors import AlignkitError
from alignkit.io import atomic_directory
from alignkit.models.wrapping import is_sharded

_NAME = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save are ignored)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _NAME.match(p.name)) and (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str, output_dir: str | Path) -> Path | None:
    """`auto` -> the newest checkpoint in output_dir (or None); a path -> that checkpoint; '' -> None."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise AlignkitError(f"--resume {resume}: not a checkpoint folder (no trainer_state.json); use `auto` or a checkpoint-N folder")
    return path


def _rng_state(generators: dict[str, torch.Generator]) -> tuple[dict, dict]:
    tensors = {"torch": torch.get_rng_state(), "generators": {name: g.get_state() for name, g in generators.items()}}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    plain = {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
             "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}
    return tensors, plain


def _set_rng_state(tensors: dict, plain: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(tensors["torch"])
    for name, generator in generators.items():
        generator.set_state(tensors["generators"][name])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(tensors["cuda"]))
    version, state, gauss = plain["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def full_states(model, optimizer=None) -> tuple[dict, dict] | None:
    """Under FSDP, the whole model's and optimizer's state dicts on the main process ({} elsewhere); None otherwise.

    FSDP keeps each parameter (and its optimizer state) in shards, one per process, so every process must call
    this: the shards are gathered into plain tensors keyed by parameter name, which one process can save and load.
    """
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    first = {}  # tied parameters (input and output embeddings) stay one tensor, so save_pretrained writes it once
    for name, param in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(param), name) != name and name in model_state and first[id(param)] in model_state:
            model_state[name] = model_state[first[id(param)]]
    optimizer_state = get_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), options=options) if optimizer else {}
    return model_state, optimizer_state


def _trainable_state(module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in module.named_parameters() if p.requires_grad}


def save_checkpoint(output_dir: str | Path, step: int, accelerator, model, optimizer, scheduler, stream,
                    extra: dict | None = None, save_total_limit: int = 0, modules: dict | None = None,
                    generators: dict[str, torch.Generator] | None = None, record: dict | None = None) -> Path:
    """Writes `checkpoint-<step>` atomically and prunes the oldest beyond `save_total_limit` (0 keeps all).

    `modules` ({name: module}) are trained alongside `model` (a value model): their trainable
    parameters go to `<name>.safetensors`. `generators` ({name: torch.Generator}) are the
    recipe's own random streams (e.g. minibatch shuffling); `extra` is JSON recipe state; `record`
    (JSON) is what the run skeleton keeps about the run itself: its stage and full config, checked on resume.
    """
    from safetensors.torch import save_file

    target = Path(output_dir) / f"checkpoint-{step}"
    accelerator.wait_for_everyone()
    sharded = full_states(model, optimizer)  # FSDP: every process hands in its shards
    if accelerator.is_main_process:
        with atomic_directory(target) as tmp:
            accelerator.unwrap_model(model).save_pretrained(tmp / "model", safe_serialization=True,
                                                            **({"state_dict": sharded[0]} if sharded else {}))
            for name, module in (modules or {}).items():
                save_file(_trainable_state(accelerator.unwrap_model(module)), tmp / f"{name}.safetensors")
            torch.save(sharded[1] if sharded else optimizer.state_dict(), tmp / "optimizer.pt")
            tensors, plain = _rng_state(generators or {})
            torch.save(tensors, tmp / "rng.pt")
            state = {"step": step, "scheduler": scheduler.state_dict(), "stream": stream.state_dict(),
                     "rng": plain, "extra": extra or {}, **(record or {})}
            (tmp / "trainer_state.json").write_text(json.dumps(state, default=float))
        if save_total_limit > 0:
            for old in list_checkpoints(output_dir)[:-save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def _load_model_weights(model, folder: Path) -> None:
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
        return
    files = sorted(folder.glob("*.safetensors"))
    state = {k: v for f in files for k, v in load_file(f).items()}
    if is_sharded(model):  # FSDP: each process keeps its own shard of the whole tensors
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        missing, unexpected = set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k}  # tied to the embeddings, not saved separately
    if set(missing) - tied or unexpected:
        raise AlignkitError(f"checkpoint {folder} does not match this model ({len(missing)} missing, {len(unexpected)} unexpected tensors); resume with the config that wrote it")


def _load_trainable_state(module, file: Path) -> None:
    from safetensors.torch import load_file

    if not file.is_file():
        raise AlignkitError(f"checkpoint {file.parent} has no {file.name}; resume with the config that wrote it")
    state = load_file(file)
    expected = {name for name, p in module.named_parameters() if p.requires_grad}
    if set(state) != expected:
        raise AlignkitError(f"{file} does not match this model's trainable parameters ({len(expected - set(state))} missing, "
                            f"{len(set(state) - expected)} unexpected); resume with the config that wrote it")
    module.load_state_dict(state, strict=False)


def load_checkpoint(path: str | Path, accelerator, model, optimizer, scheduler, stream, modules: dict | None = None,
                    generators: dict[str, torch.Generator] | None = None) -> dict:
    """Restores everything `save_checkpoint` wrote; returns the trainer state (step, extra)."""
    path = Path(path)
    state = json.loads((path / "trainer_state.json").read_text())
    _load_model_weights(accelerator.unwrap_model(model), path / "model")
    for name, module in (modules or {}).items():
        _load_trainable_state(accelerator.unwrap_model(module), path / f"{name}.safetensors")
    optimizer_state = torch.load(path / "optimizer.pt", weights_only=True)
    if is_sharded(model):  # the whole state, keyed by parameter name (full_states): each process takes its shard
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), optimizer_state,
                                 options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(state["scheduler"])
    stream.load_state_dict(state["stream"])
    _set_rng_state(torch.load(path / "rng.pt", weights_only=True), state["rng"], generators or {})
    return state


def read_trainer_state(path: str | Path) -> dict:
    """A checkpoint's trainer_state.json (step, stage, config, ...), or a sentence saying why it cannot be read."""
    file = Path(path) / "trainer_state.json"
    try:
        return json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AlignkitError(f"{file}: not a readable checkpoint ({exc}); resume from another checkpoint-N folder") from None


def remove_partial_saves(output_dir: str | Path) -> list[Path]:
    """Removes the temporary folders (`.name.tmp-*`, `.name.old-*`) a save killed halfway left in `output_dir`."""
    output_dir = Path(output_dir)
    stale = [p for p in output_dir.glob(".*.tmp-*") if p.is_dir()] + [p for p in output_dir.glob(".*.old-*") if p.is_dir()] \
        if output_dir.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale
