"""Rollouts: sample responses from the current policy and score their tokens with the training code path.

Layout of a rollout (N = prompts x G responses, each prompt's G responses contiguous):

    input_ids       (N, T)  [pad .. pad | prompt tokens | response tokens, EOS | pad .. pad]
    attention_mask  (N, T)  1 on prompt and response tokens
    position_ids    (N, T)  cumsum(attention_mask) - 1, as `generate` numbers them
    response_mask   (N, T)  1 on response tokens (EOS included): the loss mask
    prompt_mask     (N, T)  1 on prompt tokens: rows with the same prompt share its forward

Prompts are left-padded (so generation appends on the right) and responses
right-padded. Passing `position_ids` explicitly makes a training forward number the
tokens exactly as the KV-cached generation did, which is what makes old and new
log-probs agree at step 0. Every log-prob here comes from
`alignkit.models.logprobs.token_logprobs`, the function the losses use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from alignkit.data.collate import pad_sequences
from alignkit.data.tokenize import TokenizeReport, encode_prompt
from alignkit.errors import AlignkitError
from alignkit.models.precision import bf16_autocast
from alignkit.models.sampling import position_ids_from_mask, sample


@dataclass
class Rollout:
    input_ids: torch.Tensor  # (N, T)
    attention_mask: torch.Tensor  # (N, T)
    position_ids: torch.Tensor  # (N, T)
    response_mask: torch.Tensor  # (N, T)
    prompt_mask: torch.Tensor  # (N, T)
    finished: torch.Tensor  # (N,) bool: the response ended with EOS
    response_ids: list[list[int]]
    responses: list[str]
    prompt_index: list[int]  # (N,) which prompt (position in the step's prompt list) each response answers
    generation_seconds: float = 0.0
    extras: dict = field(default_factory=dict)  # per-token tensors added later: logps, ref_logps, values, ...
    rewards: torch.Tensor | None = None  # (N,) each response's raw reward, once scored (the monitor reads it)
    prompt_rows: list = field(default_factory=list)  # the prompt rows `prompt_index` points into, once scored

    @property
    def num_responses(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)  # (N,)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything indexable by response: the layout tensors plus `extras`."""
        base = {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids, "response_mask": self.response_mask, "prompt_mask": self.prompt_mask}
        return {**base, **self.extras}


# ---------------------------------------------------------------- prompts

def encode_prompts(tokenizer, prompts: list, max_prompt_length: int, mode: str = "drop",
                   use_template: bool = True) -> tuple[list[list[int]], list[int], TokenizeReport]:
    """Token ids of the prompts that fit, their indices, and the report of what was cut or dropped.

    mode="drop" leaves a too-long prompt out (counted); "truncate" keeps its last
    `max_prompt_length` tokens (the text nearest the answer); "error" refuses it.
    """
    report = TokenizeReport(rows=len(prompts))
    kept_ids, kept_index = [], []
    for number, prompt in enumerate(prompts, 1):
        ids = encode_prompt(tokenizer, prompt, use_template)
        if len(ids) > max_prompt_length:
            if mode == "error":
                raise AlignkitError(f"prompt row {number} is {len(ids)} tokens, longer than max_prompt_length="
                                    f"{max_prompt_length}; raise max_prompt_length or set prompt_truncation: drop")
            if mode == "drop":
                report.dropped += 1
                report.note(f"longer than max_prompt_length={max_prompt_length}", number)
                continue
            ids = ids[-max_prompt_length:]
            report.truncated += 1
            report.note(f"truncated to max_prompt_length={max_prompt_length}", number)
        kept_ids.append(ids)
        kept_index.append(number - 1)
    report.kept = len(kept_ids)
    return kept_ids, kept_index, report


# ---------------------------------------------------------------- layout

def cut_at_eos(tokens: list[int], eos_ids: set[int], max_new_tokens: int) -> tuple[list[int], bool]:
    """The response up to and including its first EOS, and whether it had one."""
    for i, token in enumerate(tokens[:max_new_tokens]):
        if token in eos_ids:
            return tokens[: i + 1], True
    return tokens[:max_new_tokens], False


def pack_rollout(prompt_ids: list[list[int]], response_ids: list[list[int]], finished: list[bool], pad_id: int,
                 tokenizer=None, prompt_index: list[int] | None = None) -> Rollout:
    """Lays prompt + response pairs out as a `Rollout`: prompts left-padded, responses right-padded."""
    prompts = pad_sequences(prompt_ids, pad_id, side="left")  # (N, P)
    prompt_attention = pad_sequences([[1] * len(p) for p in prompt_ids], 0, side="left")
    width = max(1, max(len(r) for r in response_ids))
    responses = pad_sequences([r or [pad_id] for r in response_ids], pad_id)[:, :width]  # (N, R)
    response_mask = torch.zeros(responses.shape, dtype=torch.long)
    for i, r in enumerate(response_ids):
        response_mask[i, : len(r)] = 1
    attention = torch.cat([prompt_attention, response_mask], dim=1)  # (N, P + R)
    return Rollout(
        input_ids=torch.cat([prompts, responses], dim=1),
        attention_mask=attention,
        position_ids=position_ids_from_mask(attention),
        response_mask=torch.cat([torch.zeros_like(prompt_attention), response_mask], dim=1),
        prompt_mask=torch.cat([prompt_attention, torch.zeros_like(response_mask)], dim=1),
        finished=torch.tensor(finished, dtype=torch.bool),
        response_ids=[list(r) for r in response_ids],
        responses=[tokenizer.decode(r, skip_special_tokens=True).strip() for r in response_ids] if tokenizer else [],
        prompt_index=list(prompt_index if prompt_index is not None else range(len(prompt_ids))),
    )


def eos_token_ids(model, tokenizer) -> set[int]:
    """The tokenizer's EOS plus any the model's generation config stops at."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return ids


# ---------------------------------------------------------------- sampling

@torch.no_grad()
def generate(model, tokenizer, prompt_ids: list[list[int]], group_size: int = 1, max_new_tokens: int = 64,
             temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 0, bf16: bool = True) -> Rollout:
    """Samples `group_size` responses per prompt (`alignkit.models.sampling.sample`: KV cache, one prefill per prompt), stopping at EOS.

    Args:
        prompt_ids: token ids of each prompt (already through the chat template).
        batch_size: responses sampled together (0 = all at once); a chunk holds whole groups.

    Returns:
        A `Rollout` whose responses for prompt i are rows i*G .. i*G + G - 1.
    """
    device = next(model.parameters()).device
    eos = eos_token_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    responses, finished = [], []
    per_chunk = max(1, batch_size // group_size) if batch_size else len(prompt_ids)
    for start in range(0, len(prompt_ids), per_chunk):
        with bf16_autocast(bf16, device):
            chunk_responses, chunk_finished = sample(model, prompt_ids[start:start + per_chunk], group_size, max_new_tokens,
                                                     temperature, top_p, eos, tokenizer.pad_token_id)
        responses += chunk_responses
        finished += chunk_finished
    seconds = time.perf_counter() - started
    model.train(was_training)
    repeated = [ids for ids in prompt_ids for _ in range(group_size)]
    prompt_index = [i for i in range(len(prompt_ids)) for _ in range(group_size)]
    rollout = pack_rollout(repeated, responses, finished, tokenizer.pad_token_id, tokenizer, prompt_index)
    rollout.generation_seconds = seconds
    return rollout


# ---------------------------------------------------------------- scoring with the training code path

def select(tensors: dict[str, torch.Tensor], rows, device=None) -> dict[str, torch.Tensor]:
    """Rows `rows` of every (N, ...) tensor, with the columns no selected row attends to cut off.

    Cut columns are all-padding at the left or right edge, so positions are unchanged.
    """
    index = torch.as_tensor(rows, dtype=torch.long)
    attended = tensors["attention_mask"][index].any(0).nonzero().flatten()
    first, last = int(attended[0]), int(attended[-1]) + 1
    width = tensors["attention_mask"].shape[1]
    out = {}
    for name, value in tensors.items():
        value = value[index]
        if value.dim() == 2 and value.shape[1] == width:
            value = value[:, first:last]
        out[name] = value.to(device) if device is not None else value
    return out


