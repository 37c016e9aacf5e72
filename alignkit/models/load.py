"""Loading tokenizers and models by directory, hub id, run directory or alias, with optional LoRA."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from alignkit.data.tokenize import chat_template_mode, set_chat_template
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
            configs = [candidate / c for c in ("config.json", "adapter_config.json") if (candidate / c).is_file()]
            if configs:
                for config in configs:  # a damaged one is named here, not reported as a missing hub model later
                    read_json_config(config)
                return str(candidate)
        raise AlignkitError(f"model directory {name} holds no config.json or adapter_config.json (nor model/ inside); point to a saved model")
    if path.exists():
        raise AlignkitError(f"model path {name} is a file; point to the directory that holds config.json")
    return name  # a hub id; from_pretrained reports whether it exists


def read_json_config(path: Path) -> dict:
    """A model folder's config.json (or adapter_config.json) as a dict; a damaged one is refused naming the file."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AlignkitError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); restore it from where the model came from, "
                            f"or save the model again") from None
    except UnicodeDecodeError:
        raise AlignkitError(f"{path} is not UTF-8 text; restore it from where the model came from, or save the model again") from None
    if not isinstance(config, dict):
        raise AlignkitError(f"{path} must hold a JSON object, got {type(config).__name__}; restore it from where the model came from")
    return config


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a .safetensors file, judged from its header and size (the tensors are not read), or None.

    The format: 8 bytes giving the header length N, N bytes of JSON header whose entries give each tensor's
    `data_offsets`, then the tensor bytes; a file shorter than the header says was cut off in a copy or download.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little") if size >= 8 else 0
        if size < 8 or length > size - 8:
            return f"truncated or not a safetensors file ({size:,} bytes, shorter than its own header)"
        try:
            header = json.loads(handle.read(length))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "corrupt (its header is not a valid safetensors header)"
    if 8 + length + end > size:
        return f"truncated: {size:,} bytes where its header describes {8 + length + end:,}"
    return None


def check_model_files(path: str) -> None:
    """Refuses a local model folder with a damaged config or a truncated or corrupt .safetensors file, before loading."""
    folder = Path(path)
    if not folder.is_dir():
        return
    for config in ("config.json", "adapter_config.json"):
        if (folder / config).is_file():
            read_json_config(folder / config)
    for weights in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            raise AlignkitError(f"{weights} is {problem}; copy, download or save the model again")


def _hub_error(name: str, exc: Exception, path: str = "") -> AlignkitError:
    """The error for a model `name` (resolved to `path`) that from_pretrained could not load."""
    reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    if path and Path(path).is_dir():
        return AlignkitError(f"model folder {path} could not be loaded ({reason}); check that it holds a complete saved model")
    aliases = ", ".join(ALIASES)
    return AlignkitError(
        f"model '{name}' was not found: it is not a local directory, not an alias ({aliases}), "
        f"and loading it as a hub id failed ({reason})"
    )


def is_adapter_dir(path: str) -> bool:
    return Path(path, "adapter_config.json").is_file() and not Path(path, "config.json").is_file()


def adapter_base(path: str) -> str:
    """The base model an adapter folder names in adapter_config.json (`base_model_name_or_path`)."""
    base = read_json_config(Path(path, "adapter_config.json")).get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise AlignkitError(f"{Path(path, 'adapter_config.json')} names no base model (base_model_name_or_path); add it, or point to a full model")
    return base


def load_tokenizer(name: str, trust_remote_code: bool = False, chat_template: str | None = None, chat_template_path: str = ""):
    """The tokenizer, with a pad token (EOS when the model has none) and left padding off by default.

    `chat_template` (auto, always, never) and `chat_template_path` are `ModelArgs`' (see `data.tokenize.set_chat_template`);
    left out, the tokenizer keeps the mode it was saved with (a model trained by alignkit), else auto.
    """
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    if is_adapter_dir(path) and not Path(path, "tokenizer_config.json").is_file():
        path = resolve_model_path(adapter_base(path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise _hub_error(name, exc, path) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template is not None or chat_template_path:
        set_chat_template(tokenizer, chat_template or chat_template_mode(tokenizer), chat_template_path)
    return tokenizer


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def check_safe_weights(path: str, allow_unsafe_pickle: bool, what: str = "") -> None:
    """Refuses a local model folder whose weights exist only as pickles, which can run code when loaded.

    An adapter folder's base model is checked too: every model a run loads falls under the rule.
    `what` says which model `path` is in the message (e.g. an adapter's base).
    """
    folder = Path(path)
    if not folder.is_dir() or allow_unsafe_pickle:
        return
    if is_adapter_dir(path):
        base = resolve_model_path(adapter_base(path))
        check_safe_weights(base, allow_unsafe_pickle, f" (the base model named in {folder / 'adapter_config.json'})")
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise AlignkitError(
            f"{path}{what} holds pickle-based weights ({', '.join(pickles[:3])}), which can run arbitrary code when loaded; "
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
    base = resolve_model_path(adapter_base(path)) if is_adapter_dir(path) else path
    for folder in dict.fromkeys((path, base)):
        check_model_files(folder)
    if not allow_unsafe_pickle and not Path(base).is_dir():
        kwargs.setdefault("use_safetensors", True)  # a hub id (or an adapter's hub base): never fall back to pickles
    try:
        if is_adapter_dir(path):
            from peft import PeftModel

            model = model_class.from_pretrained(base, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, **kwargs)
            return PeftModel.from_pretrained(model, path, is_trainable=True)
        return model_class.from_pretrained(path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, **kwargs)
    except OSError as exc:
        raise _hub_error(name, exc, path) from None


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
    tokenizer = load_tokenizer(args.model, args.trust_remote_code, args.chat_template, args.chat_template_path)
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
