"""Optional vLLM generation backend for GPU machines (`pip install alignkit[vllm]`, `generation_backend: vllm`).

vLLM runs in the same process as training ("colocate" mode, as TRL's) with a share
of GPU memory; after each optimizer update the policy's weights (LoRA merged in) are
loaded into it, so it always samples from the current policy. Responses come back as
token ids and are laid out by `rl.rollout.pack_rollout`; their log-probs are then
computed by the training code path like any other rollout's, so vLLM's own numerics
never enter the loss.

Untested here: the machines this was written on have no GPU, and `make test` never
imports vLLM.
"""

from __future__ import annotations

import os
import time

from alignkit.errors import AlignkitError
from alignkit.rl.rollout import cut_at_eos, eos_token_ids, pack_rollout
from alignkit.models.wrapping import strip_wrappers, unwrap


def _import_vllm():
    try:
        import torch

        if not torch.cuda.is_available():
            raise AlignkitError("generation_backend: vllm needs a CUDA GPU; none is visible here. Use generation_backend: hf")
        import vllm
    except ImportError:
        raise AlignkitError("generation_backend: vllm needs the vllm package: pip install 'alignkit[vllm]' (GPU machines only), "
                            "or use generation_backend: hf") from None
    return vllm


class VLLMGenerator:
    """Samples with vLLM; `sync_weights(policy)` after each update keeps it on-policy."""

    def __init__(self, model_path: str, tokenizer, max_model_len: int, gpu_memory_utilization: float = 0.3,
                 dtype: str = "bfloat16", seed: int = 0):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # weights are loaded in-process
        vllm = _import_vllm()
        self.vllm, self.tokenizer = vllm, tokenizer
        self.llm = vllm.LLM(model=model_path, tokenizer=model_path, dtype=dtype, seed=seed, max_model_len=max_model_len,
                            gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=True)
        self.eos = None

    def _inner_model(self):
        engine = self.llm.llm_engine
        executor = getattr(engine, "model_executor", None) or engine.engine_core.engine_core.model_executor
        worker = executor.driver_worker
        runner = getattr(worker, "model_runner", None) or worker.worker.model_runner
        return runner.model

    def sync_weights(self, policy) -> None:
        """Loads the policy's current weights (LoRA merged) into vLLM."""
        model = strip_wrappers(policy)
        merged = hasattr(model, "merge_adapter")
        if merged:
            model.merge_adapter()
        try:
            state = unwrap(model).state_dict()
            weights = [(name.replace(".base_layer", ""), tensor) for name, tensor in state.items() if "lora_" not in name]
            self._inner_model().load_weights(weights)
        finally:
            if merged:
                model.unmerge_adapter()
        self.llm.reset_prefix_cache()

    def __call__(self, tokenizer, prompt_ids: list[list[int]], group_size: int = 1, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 0, bf16: bool = True):
        """Same contract as `rl.rollout.generate` (without the model)."""
        if self.eos is None:
            self.eos = eos_token_ids(None, tokenizer)
        params = self.vllm.SamplingParams(n=group_size, temperature=temperature, top_p=top_p, top_k=-1,
                                          max_tokens=max_new_tokens, stop_token_ids=sorted(self.eos))
        started = time.perf_counter()
        prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - started
        repeated, responses, finished = [], [], []
        for ids, output in zip(prompt_ids, outputs):
            for sample in output.outputs:
                tokens, done = cut_at_eos(list(sample.token_ids), self.eos, max_new_tokens)
                repeated.append(ids)
                responses.append(tokens)
                finished.append(done)
        prompt_index = [i for i in range(len(prompt_ids)) for _ in range(group_size)]
        rollout = pack_rollout(repeated, responses, finished, tokenizer.pad_token_id, tokenizer, prompt_index)
        rollout.generation_seconds = seconds
        return rollout
