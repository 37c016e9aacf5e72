"""Loading tokenizers and models by directory, hub id, run directory or alias, with optional LoRA."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from alignkit.errors import AlignkitError
from alignkit.models.embedded import ALIASES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
log = logging.getLogger(__name__)


def resolve_model_path(name: str) -> str:
    """An alias, a run directory (its `model/`), a Hugging Face directory, or a hub id, as a from_pretrained argument."""
    if not name:
        raise AlignkitError("no model given; set `model:` to a directory, a hub id, or an alias (smollm2-135m-instruct, tiny-llama)")
    if name in ALIASES:
        return str(ALIASES[name]())
    path = Path(name).expanduser()
    if path.is_dir():
        for candidate in (path, path / "model", path / "adapter"):  # a model folder, or an alignkit run directory
            if (candidate / "config.json").is_file() or (candidate / "adapter_config.json").is_file():
                return str(candidate)
        raise AlignkitError(f"model directory {name} holds no config.json or adapter_config.json (nor model/ inside); point to a saved model")
    if path.exists():
        raise AlignkitError(f"model path {name} is a file; point to the directory that holds config.json")
    return name  # a hub id; from_pretrained reports whether it exists


def _hub_error(name: str, exc: Exception) -> AlignkitError:
    aliases = ", ".join(ALIASES)
    return AlignkitError(
        f"model '{name}' was not found: it is not a local directory, not an alias ({aliases}), "
        f"and loading it as a hub id failed ({str(exc).splitlines()[0][:160]})"
    )


def is_adapter_dir(path: str) -> bool:
    return Path(path, "adapter_config.json").is_file() and not Path(path, "config.json").is_file()


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer, with a pad token (EOS when the model has none) and left padding off by default."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    if is_adapter_dir(path) and not Path(path, "tokenizer_config.json").is_file():
        path = json.loads(Path(path, "adapter_config.json").read_text())["base_model_name_or_path"]
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise _hub_error(name, exc) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def check_safe_weights(path: str, allow_unsafe_pickle: bool) -> None:
    """Refuses a local model folder whose weights exist only as pickles, which can run code when loaded."""
    folder = Path(path)
    if not folder.is_dir() or allow_unsafe_pickle or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise AlignkitError(
            f"{path} holds pickle-based weights ({', '.join(pickles[:3])}), which can run arbitrary code when loaded; "
            f"convert them to safetensors, or pass --allow_unsafe_pickle true if you trust their source"
        )


def load_causal_lm(name: str, dtype: str = "float32", trust_remote_code: bool = False, model_class=None,
                   allow_unsafe_pickle: bool = False, **kwargs):
    """A causal LM (or `model_class`, e.g. a sequence classifier); an adapter directory loads base + adapter.

    Only safetensors weights load unless `allow_unsafe_pickle`; hub model code runs only with `trust_remote_code`.
    """
    from transformers import AutoModelForCausalLM

    model_class = model_class or AutoModelForCausalLM
    path = resolve_model_path(name)
    if dtype not in DTYPES:
        raise AlignkitError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    check_safe_weights(path, allow_unsafe_pickle)
    if not allow_unsafe_pickle and not Path(path).is_dir():
        kwargs.setdefault("use_safetensors", True)  # a hub id: never fall back to pickles
    try:
        if is_adapter_dir(path):
            from peft import PeftModel

            base = json.loads(Path(path, "adapter_config.json").read_text())["base_model_name_or_path"]
            model = model_class.from_pretrained(resolve_model_path(base), dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, **kwargs)
            return PeftModel.from_pretrained(model, path, is_trainable=True)
        return model_class.from_pretrained(path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, **kwargs)
    except OSError as exc:
        raise _hub_error(name, exc) from None


def add_lora(model, r: int, alpha: int, dropout: float, target_modules: list[str], task_type: str = "CAUSAL_LM", modules_to_save=None):
    """Wraps `model` with fresh LoRA adapters; only adapter weights (and `modules_to_save`) train."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in target_modules if m not in present]
    if missing:
        raise AlignkitError(f"target_modules {missing} are not in this model; it has e.g. {sorted(present - {''})[:12]}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        task_type=task_type, modules_to_save=modules_to_save)
    return get_peft_model(model, config)


def load_policy(args, model_class=None, **kwargs):
    """Model and tokenizer for a training stage from `ModelArgs` fields (LoRA, dtype, checkpointing)."""
    tokenizer = load_tokenizer(args.model, args.trust_remote_code)
    model = load_causal_lm(args.model, args.dtype, args.trust_remote_code, model_class=model_class,
                           allow_unsafe_pickle=getattr(args, "allow_unsafe_pickle", False), **kwargs)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if args.lora_r > 0 and not hasattr(model, "peft_config"):
        model = add_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, args.target_modules)
    return model, tokenizer


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
