"""Per-token log-probs, computing the LM head only where a loss needs it.

A 135M model with a 49k vocabulary spends a large share of its step in the LM head
and log-softmax over (B, T, V) logits. Losses only ever need the log-prob of the
next token at completion positions, so we run the backbone once, gather the hidden
states at those positions (N of them, N << B*T) and project only those, in chunks
so that a large vocabulary never materialises a (N, V) float32 tensor at once.

The forward still goes through the top-level model (with `logits_to_keep=1`, so the
full head is skipped) so that DDP/FSDP wrappers see it and synchronise gradients.

RL batches hold G responses to each prompt. Given the prompt columns, a prompt shared
by several rows runs through the backbone once; its KV cache (gradients flow through
it) is indexed out to those rows, and only the responses run per row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from alignkit.models.wrapping import is_sharded, unwrap

CHUNK_ROWS = 2048  # (2048, 49152) float32 logits = 400 MB: the most we materialise at once


def final_hidden_states(model, input_ids, attention_mask, position_ids=None):
    """Last-layer hidden states (B, T, H), after the final norm, without the full LM head."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                output_hidden_states=True, logits_to_keep=1, use_cache=False)
    return out.hidden_states[-1]


def shared_prompt_hidden_states(model, input_ids, attention_mask, position_ids, prompt_mask):
    """Like `final_hidden_states`, with each distinct prompt run once; None when no two rows share one.

    `prompt_mask` (B, T) marks the prompt tokens, which fill the leftmost columns
    (left-padded prompts, then the responses). Not for wrapped (DDP, FSDP) models, which
    expect one forward per backward, nor with activation checkpointing, which drops the cache.
    """
    base = unwrap(model)
    if hasattr(model, "module") or is_sharded(model) or getattr(base, "is_activation_checkpointing", False):
        return None
    prompt_columns = prompt_mask.bool().any(0).nonzero()
    if len(prompt_columns) == 0:
        return None
    width = int(prompt_columns[-1]) + 1
    if width == input_ids.shape[1]:  # no response columns
        return None
    keys = torch.where(prompt_mask[:, :width].bool(), input_ids[:, :width], -1)  # (B, width)
    distinct, inverse = torch.unique(keys, dim=0, return_inverse=True)  # (U, width), (B,)
    if len(distinct) == len(keys):
        return None
    rows = torch.arange(len(keys), device=keys.device)
    first = torch.full((len(distinct),), len(keys), device=keys.device).scatter_reduce(0, inverse, rows, "amin")  # (U,)
    cache = DynamicCache(config=base.config)
    prompts = model(input_ids=input_ids[first, :width], attention_mask=attention_mask[first, :width],
                    position_ids=None if position_ids is None else position_ids[first, :width], past_key_values=cache,
                    use_cache=True, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]  # (U, width, H)
    cache.batch_select_indices(inverse)  # each row gets its prompt's keys and values
    responses = model(input_ids=input_ids[:, width:], attention_mask=attention_mask,
                      position_ids=None if position_ids is None else position_ids[:, width:], past_key_values=cache,
                      use_cache=True, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]  # (B, T - width, H)
    return torch.cat([prompts[inverse], responses], dim=1)  # (B, T, H)


def _head_logprobs(head, hidden, targets, with_entropy: bool, temperature: float = 1.0, entropy_grad: bool = True):
    """Log-probs (N,) of `targets` under head(hidden) (N, H), and entropies (N,) if asked, in chunks.

    Entropies carry gradients only with `entropy_grad` (an entropy bonus in the loss); as a metric
    they are computed without building their graph, as TRL does.
    """
    logps, entropies = [], []
    for start in range(0, hidden.shape[0], CHUNK_ROWS):
        logits = head(hidden[start:start + CHUNK_ROWS]).float()  # (n, V)
        if temperature != 1.0:  # x / 1.0 is x: skip a pass over the logits (and its backward)
            logits = logits / temperature
        log_softmax = F.log_softmax(logits, dim=-1)
        logps.append(log_softmax.gather(-1, targets[start:start + CHUNK_ROWS, None]).squeeze(-1))
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                entropies.append(-(log_softmax.exp() * log_softmax).sum(-1))
    logp = torch.cat(logps) if logps else hidden.new_zeros(0, dtype=torch.float32)
    entropy = torch.cat(entropies) if entropies else None
    return logp, entropy


def token_logprobs(model, input_ids, attention_mask, loss_mask, position_ids=None, with_entropy: bool = False, temperature: float = 1.0,
                   prompt_mask=None, entropy_grad: bool = True):
    """Log-prob of each token given the ones before it, at loss positions only.

    Args:
        input_ids: (B, T) token ids.
        attention_mask: (B, T) 1 for real tokens, 0 for padding.
        loss_mask: (B, T) 1 where the token at that position is scored (its log-prob
            comes from the hidden state one position earlier, so column 0 is never scored).
        temperature: logits are divided by it (RL scores sampled tokens at the sampling temperature).
        prompt_mask: (B, T) 1 on prompt tokens, which fill the leftmost columns: rows with the
            same prompt then share its forward (`shared_prompt_hidden_states`).
        entropy_grad: whether the entropies carry gradients (False: a metric only).

    Returns:
        logps: (B, T) float32, log p(input_ids[b, t] | input_ids[b, :t]) where loss_mask is 1, else 0.
        entropy: (B, T) float32 entropy of the predicting distribution at the same places, or None.
    """
    scored = loss_mask.bool().clone()
    scored[:, 0] = False
    batch_idx, pos_idx = scored.nonzero(as_tuple=True)  # (N,), (N,)
    targets = input_ids[batch_idx, pos_idx]  # (N,)
    if is_sharded(model):
        # FSDP keeps the head's weight sharded outside the wrapped forward, so the head must
        # run inside it: full logits, then log-softmax only at the scored positions.
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).logits
        logp, entropy = _head_logprobs(torch.nn.Identity(), logits[batch_idx, pos_idx - 1], targets, with_entropy, temperature,
                                       entropy_grad)
    else:
        hidden = None if prompt_mask is None else shared_prompt_hidden_states(model, input_ids, attention_mask, position_ids, prompt_mask)
        if hidden is None:
            hidden = final_hidden_states(model, input_ids, attention_mask, position_ids)  # (B, T, H)
        head = unwrap(model).get_output_embeddings()
        selected = hidden[batch_idx, pos_idx - 1]  # (N, H): the state that predicts each scored token
        logp, entropy = _head_logprobs(head, selected, targets, with_entropy, temperature, entropy_grad)
    logps = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    logps = logps.index_put((batch_idx, pos_idx), logp)
    if entropy is None:
        return logps, None
    entropies = torch.zeros_like(logps).index_put((batch_idx, pos_idx), entropy)
    return logps, entropies


def sequence_logprobs(token_logps, loss_mask, average: bool = False):
    """Sum (or mean) of per-token log-probs over the scored positions: (B, T) -> (B,)."""
    total = (token_logps * loss_mask).sum(-1)
    return total / loss_mask.sum(-1).clamp(min=1) if average else total
