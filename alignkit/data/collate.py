"""Batching: right padding for training, with the attention and loss masks alongside."""

from __future__ import annotations

import torch


def pad_sequences(sequences: list[list[int]], value: int, side: str = "right") -> torch.Tensor:
    """(B, T) tensor of `sequences` padded with `value` to the longest one."""
    length = max(len(s) for s in sequences)
    out = torch.full((len(sequences), length), value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            if side == "right":
                out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            else:
                out[i, length - len(seq):] = torch.tensor(seq, dtype=torch.long)
    return out


def collate_lm(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """`{"input_ids", "loss_mask"}` examples -> padded (B, T) input_ids, attention_mask, loss_mask."""
    ids = [e["input_ids"] for e in examples]
    return {
        "input_ids": pad_sequences(ids, pad_token_id),
        "attention_mask": pad_sequences([[1] * len(s) for s in ids], 0),
        "loss_mask": pad_sequences([e["loss_mask"] for e in examples], 0),
    }


def collate_prompt_completions(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Rows of prompt + completion, the loss mask on the completion: the shape every preference loss consumes.

    Chosen and rejected go through together by passing both lists concatenated
    (chosen rows first), so one forward pass serves both.
    """
    examples = [{"input_ids": p + c, "loss_mask": [0] * len(p) + [1] * len(c)} for p, c in zip(prompt_ids, completion_ids)]
    return collate_lm(examples, pad_token_id)


def length_grouped_order(lengths: list[int], batch_size: int, generator: torch.Generator, mega: int = 50) -> list[int]:
    """A shuffled order where each batch holds rows of similar length (less padding), batches in random order."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    groups = [order[i:i + batch_size * mega] for i in range(0, len(order), batch_size * mega)]
    batches = []
    for group in groups:
        group.sort(key=lambda i: -lengths[i])
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [i for b in shuffled for i in batches[b]]


def collate_packed(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Padding-free batch: every example in one (1, sum T) row, positions restarting at each example.

    With no attention mask, transformers derives a block-diagonal causal mask from the
    restarting `position_ids`, so no token attends across examples and no compute goes
    to padding. An example's first token is never scored (as in a padded batch, it has
    no predecessor of its own).
    """
    ids, positions, mask = [], [], []
    for e in examples:
        ids += e["input_ids"]
        positions += range(len(e["input_ids"]))
        mask += [0] + e["loss_mask"][1:]
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "loss_mask": torch.tensor([mask], dtype=torch.long),
    }
