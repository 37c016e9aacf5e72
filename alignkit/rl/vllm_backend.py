"""vLLM rollouts for PPO / GRPO (`generation_backend: vllm`), in two modes as TRL's:

- colocate (`vllm_mode: colocate`): a `vllm.LLM` in the training process (rl/vllm_engine.py). Run the
  trainer from the vLLM environment: `make vllm-setup`, then `.venv-vllm/bin/alignkit grpo ...`.
- server (`vllm_mode: server`): `alignkit vllm-serve --model M` (rl/vllm_server.py) in its own process
  and environment; the trainer, in any environment, talks to it over HTTP (`vllm_server_url`).

After every update the policy's weights (LoRA merged in) go to vLLM: in process as tensors, to a
server as a safetensors file the server reloads (`<output_dir>/vllm_sync/`, so the server must see
the trainer's disk). Both use vLLM's `reload_weights`. Each sync is checked: vLLM's log-probs of a
fixed probe sequence (the first rollout's first response) must match the trainer's within
`vllm_sync_tolerance` (mean |delta log p|), else the run stops, saying so.

Each rollout keeps vLLM's log-prob of every sampled token (`extras["sampler_logps"]`):
rl/experience.py logs the mismatch against the trainer's and applies truncated importance
sampling (rl/mismatch.py).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch

from alignkit.errors import AlignkitError
from alignkit.http import post_json
from alignkit.models.logprobs import token_logprobs
from alignkit.models.wrapping import strip_wrappers, unwrap
from alignkit.rl.rollout import cut_at_eos, eos_token_ids, pack_rollout


class VLLMServerClient:
    """The trainer's end of `alignkit vllm-serve`: the same methods as `VLLMEngine`, over HTTP."""

    def __init__(self, url: str, timeout: float = 300.0):
        self.url, self.timeout = url.rstrip("/"), timeout

    def _post(self, route: str, payload: dict):
        return post_json(f"{self.url}{route}", payload, deadline=self.timeout, retries=2, backoff=1.0, name="vLLM server")

    def generate(self, prompt_ids, n, max_tokens, temperature=1.0, top_p=1.0, stop_token_ids=(), seed=None):
        reply = self._post("/generate", {"prompt_token_ids": prompt_ids, "n": n, "max_tokens": max_tokens, "temperature": temperature,
                                         "top_p": top_p, "stop_token_ids": sorted(stop_token_ids), "seed": seed})
        return reply["completion_ids"], reply["logprobs"]

    def sequence_logprobs(self, prompt_ids, completion_ids):
        return self._post("/sequence_logprobs", {"prompt_token_ids": prompt_ids, "completion_ids": completion_ids})["logprobs"]

    def load_weights_from(self, path: str) -> None:
        self._post("/reload_weights", {"path": path})


@contextlib.contextmanager
def policy_weights(policy):
    """The policy's weights named as in its Hugging Face checkpoint, LoRA merged in, for the block's duration.

    The tensors are the live parameters, not copies (a float32 copy of a 135M model is 540 MB per sync): send or read
    them inside the block, after which the adapters are unmerged again."""
    model = strip_wrappers(policy)
    merged = hasattr(model, "merge_adapter")
    if merged:
        model.merge_adapter()
    try:
        state = unwrap(model).state_dict()
        yield {name.replace(".base_layer", ""): tensor.detach() for name, tensor in state.items() if "lora_" not in name}
    finally:
        if merged:
            model.unmerge_adapter()


def trainer_logprobs(policy, prompt_ids: list[int], completion_ids: list[int], autocast=None) -> list[float]:
    """The trainer's log p(completion token | before), temperature 1, through the training code path."""
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    device = next(strip_wrappers(policy).parameters()).device
    mask = torch.zeros_like(ids)
    mask[0, len(prompt_ids):] = 1
    was_training = policy.training
    policy.eval()
    with torch.no_grad(), (autocast() if autocast else contextlib.nullcontext()):
        logps, _ = token_logprobs(policy, ids.to(device), torch.ones_like(ids).to(device), mask.to(device))
    policy.train(was_training)
    return logps[0, len(prompt_ids):].float().tolist()


class VLLMGenerator:
    """Samples with vLLM (in process or a server); `sync_weights(policy)` after each update keeps it on-policy."""

    def __init__(self, config, tokenizer, model_path: str, autocast=None):
        self.tokenizer, self.autocast, self.config = tokenizer, autocast, config
        self.tolerance = config.vllm_sync_tolerance
        if config.vllm_mode == "server":
            self.engine = VLLMServerClient(config.vllm_server_url, config.vllm_server_timeout)
            self.sync_dir = Path(config.output_dir).resolve() / "vllm_sync"
        else:
            from alignkit.rl.vllm_engine import VLLMEngine, engine_dtype

            self.engine = VLLMEngine(model_path, config.max_prompt_length + config.max_new_tokens,
                                     engine_dtype(config.mixed_precision),
                                     config.seed, config.vllm_gpu_memory_utilization)
            self.sync_dir = None
        self.eos, self.probe, self.last_sync = eos_token_ids(None, tokenizer), None, {}

    def sync_weights(self, policy) -> dict:
        """Sends the policy's weights to vLLM and checks the probe; returns `vllm/*` metrics."""
        started = time.perf_counter()
        with policy_weights(policy) as weights:
            if self.sync_dir is None:
                self.engine.load_weights(weights.items())
            else:
                self._send_file(weights)
        metrics = {"vllm/sync_s": time.perf_counter() - started}
        metrics.update(self.check_probe(policy, after="weight sync"))
        self.last_sync = metrics
        return metrics

    def _send_file(self, weights: dict) -> None:
        from safetensors.torch import save_file

        self.sync_dir.mkdir(parents=True, exist_ok=True)
        target, partial = self.sync_dir / "model.safetensors", self.sync_dir / "model.safetensors.partial"
        contiguous, seen = {}, set()
        for name, tensor in weights.items():  # tied weights (lm_head = embed_tokens) share memory: written once, the first name
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                contiguous[name] = tensor.contiguous()
        save_file(contiguous, str(partial))
        os.replace(partial, target)  # the server never reads a half-written file
        self.engine.load_weights_from(str(target))

    def check_probe(self, policy, after: str) -> dict:
        """vLLM's and the trainer's log-probs of the probe sequence; stops the run when they differ beyond tolerance."""
        if self.probe is None:
            return {}
        prompt, completion = self.probe
        ours = torch.tensor(trainer_logprobs(policy, prompt, completion, self.autocast))
        theirs = torch.tensor(self.engine.sequence_logprobs(prompt, completion), dtype=ours.dtype)
        gap = (ours - theirs).abs().mean().item() if len(ours) == len(theirs) else float("inf")
        if not gap <= self.tolerance:
            raise AlignkitError(f"vLLM after {after}: its log-probs of the probe sequence differ from the trainer's by {gap:.4g} "
                                f"nats per token on average (vllm_sync_tolerance={self.tolerance}); the weights did not reach vLLM "
                                f"intact or the two use different precisions (mixed_precision={self.config.mixed_precision}). "
                                f"Check the vLLM log, or raise vllm_sync_tolerance if the engines are known to differ this much")
        return {"vllm/probe_logp_abs_diff": gap}

    def __call__(self, tokenizer, prompt_ids: list[list[int]], group_size: int = 1, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 0, bf16: bool = True):
        """Same contract as `rl.rollout.generate` (without the model); adds `extras["sampler_logps"]`."""
        started = time.perf_counter()
        tokens, logps = self.engine.generate(prompt_ids, group_size, max_new_tokens, temperature, top_p, self.eos)
        seconds = time.perf_counter() - started
        repeated, responses, finished, sampled = [], [], [], []
        for row, (ids, lps) in enumerate(zip(tokens, logps)):
            cut, done = cut_at_eos(list(ids), self.eos, max_new_tokens)
            repeated.append(prompt_ids[row // group_size])
            responses.append(cut)
            finished.append(done)
            sampled.append(list(lps[:len(cut)]) + [float("nan")] * (len(cut) - len(lps)))
        prompt_index = [i for i in range(len(prompt_ids)) for _ in range(group_size)]
        rollout = pack_rollout(repeated, responses, finished, tokenizer.pad_token_id, tokenizer, prompt_index)
        rollout.generation_seconds = seconds
        rollout.extras["sampler_logps"] = sampler_logps_tensor(rollout, sampled)
        if self.probe is None and responses and responses[0]:
            self.probe = (list(repeated[0]), list(responses[0]))
        return rollout


def sampler_logps_tensor(rollout, sampled: list[list[float]]) -> torch.Tensor:
    """(N, T) float32: each response token's sampler log-prob at its column, 0 elsewhere."""
    out = torch.zeros(rollout.input_ids.shape, dtype=torch.float32)
    for row, values in enumerate(sampled):
        columns = rollout.response_mask[row].nonzero().flatten()
        out[row, columns[:len(values)]] = torch.tensor(values[:len(columns)], dtype=torch.float32)
    return out
