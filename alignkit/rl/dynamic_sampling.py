"""DAPO's dynamic sampling (Yu et al. 2025, "DAPO", sec. 3.2): keep only groups that carry a gradient.

With a group baseline (GRPO, RLOO), a prompt whose G responses all score alike gets advantage 0
for every response: its samples cost generation and a forward-backward and teach nothing. On
hhh-mini 575 of 800 prompts did that. Dynamic sampling drops such groups and draws fresh prompts
until the step has `prompts_per_step` groups whose rewards differ (or `max_rounds` extra rounds
were spent), then trains on those; DAPO over-samples and keeps the first full batch, as here.

The rewards of every round are scored without touching the running normalisation; the kept
responses are normalised once (`Rewards.finish`), so each response is scored once.
"""

from __future__ import annotations

from typing import Callable

import torch

from alignkit.rl.rollout import Rollout, pack_rollout


def zero_variance_groups(raw: torch.Tensor, valid: torch.Tensor, group_size: int) -> torch.Tensor:
    """(P,) True for groups whose valid rewards are all equal, or that have fewer than two valid responses.

    raw, valid: (P * G,) rewards and validity, grouped contiguously.
    """
    raw, valid = raw.view(-1, group_size), valid.view(-1, group_size)  # (P, G)
    high = torch.where(valid, raw, torch.full_like(raw, -torch.inf)).max(-1).values
    low = torch.where(valid, raw, torch.full_like(raw, torch.inf)).min(-1).values
    return (valid.sum(-1) < 2) | (high == low)


def sample_informative_groups(sample: Callable[[list], Rollout], score: Callable, prompt_ids: list, prompt_rows: list,
                              draw_prompts: Callable[[], tuple[list, list]], group_size: int, max_rounds: int, tokenizer):
    """Rounds of `sample` + `score` until len(prompt_ids) groups with differing rewards are kept.

    `sample(prompt_ids) -> Rollout`; `score(rollout, rows) -> (raw, valid, per_source)`;
    `draw_prompts() -> (prompt_ids, rows)` fresh prompts for another round.
    Returns (rollout, rows, raw, valid, per_source, metrics); when no group varies even after
    `max_rounds`, the first round is returned whole (its advantages are 0: the step learns nothing).
    """
    target, kept, seconds, rounds, first = len(prompt_ids), [], 0.0, 0, None
    ids, rows = prompt_ids, prompt_rows
    while True:
        rollout = sample(ids)
        raw, valid, per_source = score(rollout, rows)
        seconds += rollout.generation_seconds
        flat = zero_variance_groups(raw, valid, group_size)
        first = first or (rollout, rows, raw, valid, per_source, flat.float().mean().item())
        for p in (~flat).nonzero().flatten().tolist():
            part = slice(p * group_size, (p + 1) * group_size)
            kept.append((ids[p], rows[p], rollout.response_ids[part], rollout.finished[part].tolist(), raw[part], valid[part]))
        if len(kept) >= target or rounds >= max_rounds:
            break
        rounds += 1
        ids, rows = draw_prompts()
    metrics = {"dynamic/zero_variance_share": first[5], "dynamic/extra_rounds": rounds, "dynamic/groups": min(len(kept), target)}
    if not kept:
        return (*first[:5], metrics)
    kept = kept[:target]
    packed = pack_rollout([k[0] for k in kept for _ in range(group_size)], [r for k in kept for r in k[2]],
                          [f for k in kept for f in k[3]], tokenizer.pad_token_id, tokenizer,
                          [i for i in range(len(kept)) for _ in range(group_size)])
    packed.generation_seconds = seconds
    per_source = first[4] if len(first[4]) <= 1 else {}  # several sources: their means are not re-gathered over rounds
    return packed, [k[1] for k in kept], torch.cat([k[4] for k in kept]), torch.cat([k[5] for k in kept]), per_source, metrics
