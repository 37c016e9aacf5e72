"""Batched answering: prompts through the chat template, left-padded, KV-cached `generate`."""

from __future__ import annotations

import torch

from alignkit.data.collate import pad_sequences
from alignkit.data.tokenize import encode_prompt


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list, max_new_tokens: int = 64, batch_size: int = 16,
                     do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, bf16: bool = True,
                     progress: bool = False) -> list[str]:
    """One answer per prompt (strings or message lists), decoded without special tokens.

    Prompts are sorted by length so each batch pads little, then returned in input order.
    """
    from tqdm.auto import tqdm

    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    answers: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress, mininterval=2):
        idx = order[start:start + batch_size]
        ids = pad_sequences([encoded[i] for i in idx], tokenizer.pad_token_id, side="left").to(device)
        attention = pad_sequences([[1] * len(encoded[i]) for i in idx], 0, side="left").to(device)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                 top_k=None, **sampling)
        for row, i in enumerate(idx):
            answers[i] = tokenizer.decode(out[row, ids.shape[1]:], skip_special_tokens=True).strip()
    model.train(was_training)
    return answers
