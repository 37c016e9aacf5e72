"""Scoring a rollout: per-token log-probs under the policy (pi, pi_old), the reference (pi_ref) and values (V_old).

Everything goes through the training code path (`models.logprobs.token_logprobs`, the LM head
applied at response positions only), so pi_old at rollout time and pi in the update agree to
the bit when the weights have not moved. GRPO has no critic: its log-probs come from
`batch_logprobs` alone; PPO's value head reads the hidden states of the same forward.
"""

from __future__ import annotations

import contextlib

import torch

from alignkit.models.logprobs import token_logprobs
from alignkit.models.wrapping import adapters_disabled
from alignkit.rl.rollout import Rollout, select
from alignkit.rl.value_model import ValueHead, captured_head_inputs, scored_positions


def batch_logprobs(model, batch: dict, temperature: float = 1.0, with_entropy: bool = False, entropy_grad: bool = True):
    """(N, T) log-probs (and entropies, with gradients only if `entropy_grad`) of the response tokens of a `select`ed batch."""
    return token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                          position_ids=batch["position_ids"], with_entropy=with_entropy, temperature=temperature,
                          prompt_mask=batch.get("prompt_mask"), entropy_grad=entropy_grad)


@torch.no_grad()
def rollout_logprobs(model, rollout: Rollout, batch_size: int, temperature: float = 1.0, autocast=None) -> torch.Tensor:
    """(N, T) log-probs of every response token, in micro-batches of `batch_size` responses."""
    device = next(model.parameters()).device
    out = torch.zeros(rollout.input_ids.shape, dtype=torch.float32)
    tensors = rollout.tensors()
    was_training = model.training
    model.eval()
    for start in range(0, rollout.num_responses, batch_size):
        rows = list(range(start, min(start + batch_size, rollout.num_responses)))
        batch = select(tensors, rows, device)
        with autocast() if autocast else contextlib.nullcontext():
            logps, _ = batch_logprobs(model, batch, temperature)
        first = int(tensors["attention_mask"][rows].any(0).nonzero()[0])
        out[rows, first:first + logps.shape[1]] = logps.float().cpu()
    model.train(was_training)
    return out


def logprobs_and_values(model, value_model, batch: dict, temperature: float = 1.0, with_entropy: bool = False,
                        entropy_grad: bool = True):
    """Log-probs (N, T), entropies (N, T) or None, and values (N, T) (None without a value model)."""
    if isinstance(value_model, ValueHead):
        with captured_head_inputs(model) as captured:
            logps, entropy = batch_logprobs(model, batch, temperature, with_entropy, entropy_grad)
        hidden = torch.cat(captured) if captured else logps.new_zeros(0, value_model.linear.in_features)
        rows, cols = scored_positions(batch["response_mask"])
        values = torch.zeros_like(logps).index_put((rows, cols), value_model(hidden).float())
        return logps, entropy, values
    logps, entropy = batch_logprobs(model, batch, temperature, with_entropy, entropy_grad)
    values = value_model(batch) if value_model is not None else None
    return logps, entropy, values


def reference_mode(policy, reference_model):
    """The model that computes pi_ref: a frozen copy, or the LoRA policy with adapters disabled (a context manager)."""
    return contextlib.nullcontext(reference_model) if reference_model is not None else adapters_disabled(policy)


@torch.no_grad()
def old_logps_and_values(policy, value_model, rollout: Rollout, batch_size: int, temperature: float, autocast):
    """pi_old log-probs and V_old for every response token, through the training code path."""
    device = next(policy.parameters()).device
    tensors = rollout.tensors()
    logps = torch.zeros(rollout.input_ids.shape, dtype=torch.float32)
    values = torch.zeros_like(logps)
    for start in range(0, rollout.num_responses, batch_size):
        rows = list(range(start, min(start + batch_size, rollout.num_responses)))
        batch = select(tensors, rows, device)
        with autocast():
            lp, _, v = logprobs_and_values(policy, value_model, batch, temperature)
        first = int(tensors["attention_mask"][rows].any(0).nonzero()[0])
        logps[rows, first:first + lp.shape[1]] = lp.float().cpu()
        if v is not None:
            values[rows, first:first + v.shape[1]] = v.float().cpu()
    return logps, values
