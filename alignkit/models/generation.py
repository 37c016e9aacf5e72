"""Batched answering: prompts through the chat template, then the KV-cached sampler of `models/sampling.py`.

The sampler is greedy-identical to `generate`; it drops a row from the batch once it
has answered, so a batch costs its answers' tokens rather than the longest one times
the batch size.
"""

from __future__ import annotations

import torch

from alignkit.data.tokenize import encode_prompt
from alignkit.models.precision import bf16_autocast
from alignkit.models.sampling import sample


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list, max_new_tokens: int = 64, batch_size: int = 16,
                     do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, bf16: bool = True,
                     progress: bool = False) -> list[str]:
    """One answer per prompt (strings or message lists), decoded without special tokens, in input order."""
    return [answers[0] for answers in sample_answers(model, tokenizer, prompts, 1, max_new_tokens, batch_size,
                                                     temperature if do_sample else 0.0, top_p, bf16, progress)]


@torch.no_grad()
def sample_answers(model, tokenizer, prompts: list, samples: int, max_new_tokens: int = 64, batch_size: int = 16,
                   temperature: float = 1.0, top_p: float = 1.0, bf16: bool = True, progress: bool = False) -> list[list[str]]:
    """`samples` answers per prompt, decoded without special tokens: answers[i] holds prompt i's, in input order.
    Each prompt is prefilled once for all its samples; `batch_size` prompts go to each sampler call."""
    answers: list[list[str]] = [[] for _ in prompts]
    for idx, _, (responses, _) in sampled_batches(model, tokenizer, prompts, max_new_tokens, batch_size, temperature, top_p, bf16,
                                                  progress=progress, group_size=samples):
        for k, tokens in enumerate(responses):  # sample g of the j-th prompt is row j * samples + g
            answers[idx[k // samples]].append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
    return answers


def sampled_batches(model, tokenizer, prompts: list, max_new_tokens: int, batch_size: int, temperature: float = 1.0,
                    top_p: float = 1.0, bf16: bool = True, logprobs: bool = False, progress: bool = False, group_size: int = 1):
    """Yields (indices into `prompts`, their prompt ids, `sample`'s output) for each batch of `batch_size` prompts,
    `group_size` answers to each.

    Prompts go through the chat template and are sorted by length, so each batch pads little. The model is in eval
    mode while this runs. `bf16` autocasts only where the device computes bf16 natively (`precision.autocast_bf16`),
    as sampling and scoring do.
    """
    from tqdm.auto import tqdm

    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="generate", disable=not progress, mininterval=2):
            idx = order[start:start + batch_size]
            prompt_ids = [encoded[i] for i in idx]
            with bf16_autocast(bf16, device):
                out = sample(model, prompt_ids, group_size, max_new_tokens, temperature, top_p, {tokenizer.eos_token_id},
                             tokenizer.pad_token_id, logprobs=logprobs)
            yield idx, prompt_ids, out
    finally:
        model.train(was_training)
