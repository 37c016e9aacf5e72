"""Batches of prompt + completions for direct alignment, and their summed log-probs in one forward.

An example is a fixed list of (prompt_ids, completion_ids) *sequences*: DPO's are
(prompt, chosen) and (prompt, rejected); KTO's are (prompt, completion) and the
mismatched (prompt, other completion) its KL baseline needs. Log-probs come back
column-major, (len(columns) * B,): every example's first sequence, then every
example's second, so `.chunk(2)` splits chosen from rejected.

Two layouts, the same numbers:

- shared prompt (default): one row per example, `prompt + completion_1 + completion_2`,
  with a 4D attention mask that lets each completion see the prompt and itself but not
  the other completion, and position ids that restart each completion right after the
  prompt. The prompt goes through the model once instead of once per completion, and a
  short chosen answer is not padded to the length of a long rejected one. On hhh-mini
  (prompts ~41 tokens, chosen ~16, rejected ~45) this halves the positions computed.
- separate rows: one right-padded row per (prompt, completion), for attention kernels
  that take no custom mask (flash-attention) or with `share_prompt: false`.

Mask convention as everywhere: 1 / True = the token counts (attends, is scored).
"""

from __future__ import annotations

import torch

from alignkit.data.collate import collate_prompt_completions, pad_sequences
from alignkit.models.logprobs import _head_logprobs, final_hidden_states, sequence_logprobs, token_logprobs
from alignkit.models.wrapping import is_sharded, unwrap

SHARED_PROMPT_ATTENTION = ("sdpa", "eager")  # implementations that accept a custom 4D mask


def supports_shared_prompt(model) -> bool:
    """Whether `model`'s attention takes the custom 4D mask the shared-prompt layout needs.

    Not under FSDP: there the LM head must run inside the wrapped forward, which only
    `token_logprobs` (the separate-rows path) arranges. Recipes ask before `accelerator.prepare`
    wraps the model, so the run's accelerator state is asked too.
    """
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    fsdp_run = AcceleratorState._shared_state.get("distributed_type") == DistributedType.FSDP
    return getattr(unwrap(model).config, "_attn_implementation", "eager") in SHARED_PROMPT_ATTENTION and not (is_sharded(model) or fsdp_run)


def collate_sequences(examples: list[dict], columns: tuple[int, ...], pad_id: int, share_prompt: bool = False) -> dict[str, torch.Tensor]:
    """The batch of `examples`' sequences `columns`, in the shared-prompt or the separate-rows layout."""
    if share_prompt:
        return collate_shared_prompt(examples, columns, pad_id)
    pairs = [e["sequences"][c] for c in columns for e in examples]
    return collate_prompt_completions([p for p, _ in pairs], [c for _, c in pairs], pad_id)  # (len(columns) * B, T)


def collate_shared_prompt(examples: list[dict], columns: tuple[int, ...], pad_id: int) -> dict[str, torch.Tensor]:
    """One row per example: prompt, then each completion of `columns`, all sharing the prompt.

    Returns input_ids (B, T), position_ids (B, T), attention_mask (B, 1, T, T) bool, and the
    scored tokens as flat (N,) indices: score_row, score_pos (the token), score_from (the
    position whose hidden state predicts it) and score_seq (its column-major sequence index).
    """
    batch_size = len(examples)
    ids, positions, segments = [], [], []
    rows, pos, pred, seq = [], [], [], []
    for b, example in enumerate(examples):
        prompt = example["sequences"][columns[0]][0]
        if any(example["sequences"][c][0] != prompt for c in columns):
            raise ValueError("the shared-prompt layout needs every sequence of an example to have the same prompt")
        row_ids, row_pos, row_seg = list(prompt), list(range(len(prompt))), [-1] * len(prompt)
        for k, column in enumerate(columns):
            completion = example["sequences"][column][1]
            start = len(row_ids)
            for i, token in enumerate(completion):
                predictor = start + i - 1 if i else len(prompt) - 1  # a completion's first token follows the prompt
                if predictor >= 0:
                    rows.append(b), pos.append(start + i), pred.append(predictor), seq.append(k * batch_size + b)
            row_ids += completion
            row_pos += range(len(prompt), len(prompt) + len(completion))
            row_seg += [k] * len(completion)
        ids.append(row_ids), positions.append(row_pos), segments.append(row_seg)
    segment = pad_sequences(segments, -2)  # (B, T): -1 prompt, k completion k, -2 padding
    length = segment.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()  # (T, T)
    same = segment[:, :, None] == segment[:, None, :]  # (B, T, T) query and key in one segment
    sees_prompt = (segment == -1)[:, None, :]  # (B, 1, T) every query may read the prompt
    mask = causal & (same | sees_prompt)  # padding reads only padding (itself), so no row is empty
    return {
        "input_ids": pad_sequences(ids, pad_id),
        "position_ids": pad_sequences(positions, 0),
        "attention_mask": mask[:, None],  # (B, 1, T, T)
        "score_row": torch.tensor(rows, dtype=torch.long), "score_pos": torch.tensor(pos, dtype=torch.long),
        "score_from": torch.tensor(pred, dtype=torch.long), "score_seq": torch.tensor(seq, dtype=torch.long),
        "num_sequences": torch.tensor(len(columns) * batch_size),
    }


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs (N,) and completion lengths (N,) of a collated batch, in one forward."""
    if "score_seq" in batch:
        return _shared_prompt_logps(model, batch)
    logps, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])  # (N, T)
    scored = batch["loss_mask"].clone()
    scored[:, 0] = 0  # token_logprobs never scores column 0 (nothing predicts it)
    return sequence_logprobs(logps, scored), scored.sum(-1).float()


def _shared_prompt_logps(model, batch):
    mask = batch["attention_mask"]
    if getattr(unwrap(model).config, "_attn_implementation", "eager") != "sdpa":  # eager adds the mask to the scores
        mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    hidden = final_hidden_states(model, batch["input_ids"], mask, batch["position_ids"])  # (B, T, H)
    selected = hidden[batch["score_row"], batch["score_from"]]  # (N, H): the state that predicts each scored token
    targets = batch["input_ids"][batch["score_row"], batch["score_pos"]]  # (N,)
    logp, _ = _head_logprobs(unwrap(model).get_output_embeddings(), selected, targets, with_entropy=False)
    count = int(batch["num_sequences"])
    sums = torch.zeros(count, dtype=logp.dtype, device=logp.device).index_add(0, batch["score_seq"], logp)  # (S,)
    lengths = torch.bincount(batch["score_seq"], minlength=count).float()
    return sums, lengths


def to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}
