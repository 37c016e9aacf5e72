"""On-policy preference pairs: K samples per prompt from the model being aligned, scored, best against worst.

Off-policy pairs (someone else's chosen and rejected answers) teach a small model
mostly to push down text it would never write, and DPO then lowers the chosen
answers' likelihood too. Pairs drawn from the policy itself put the margin on its own
mistakes: the recipe of iterative / online DPO (Xu et al. 2023, "Some things are more
CRINGE than others"; Xiong et al. 2024, "Iterative preference learning from human
feedback"; TRL's OnlineDPOTrainer asks a judge about two fresh samples per step).
This module is one offline round of it:

    for each prompt: G samples (`rl.rollout.generate`, the RL sampler)
                     -> scores from any reward source (a function, a reward model, a URL)
                     -> chosen = best, rejected = worst, kept when they differ by >= min_gap

Rows are standard preference rows, so `alignkit dpo` reads them and `alignkit kto
--from_preference true` turns each into one desirable and one undesirable completion.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from alignkit.data.formats import ANSWER_COLUMNS, load_dataset, prompt_columns, PROMPT_KINDS
from alignkit.errors import AlignkitError
from alignkit.models.load import load_causal_lm, load_tokenizer
from alignkit.rl.rewards import build_rewards
from alignkit.rl.rollout import encode_prompts, generate

log = logging.getLogger("alignkit")


@dataclass
class PairReport:
    prompts: int = 0
    pairs: int = 0
    ties: int = 0  # prompts whose best and worst samples scored within min_gap
    chosen_score: float = 0.0  # mean over kept pairs
    rejected_score: float = 0.0
    sample_score: float = 0.0  # mean over every sample: the policy's own level

    def summary(self) -> str:
        return (f"{self.pairs} pairs from {self.prompts} prompts ({self.ties} skipped: best and worst within min_gap); "
                f"mean score of all samples {self.sample_score:.3f}, chosen {self.chosen_score:.3f}, rejected {self.rejected_score:.3f}")


def pair_rows(rows: list[dict], responses: list[str], scores: torch.Tensor, valid: torch.Tensor, samples: int,
              min_gap: float) -> tuple[list[dict], PairReport]:
    """Best-versus-worst pairs from `samples` scored responses per row (row i's are i*G .. i*G + G - 1)."""
    report = PairReport(prompts=len(rows), sample_score=scores[valid].mean().item() if valid.any() else float("nan"))
    pairs = []
    grouped, ok = scores.view(len(rows), samples), valid.view(len(rows), samples)
    for i, row in enumerate(rows):
        if ok[i].sum() < 2:
            report.ties += 1
            continue
        best = int(grouped[i].masked_fill(~ok[i], float("-inf")).argmax())  # invalid samples take no part
        worst = int(grouped[i].masked_fill(~ok[i], float("inf")).argmin())
        chosen, rejected = responses[i * samples + best], responses[i * samples + worst]
        high, low = float(grouped[i, best]), float(grouped[i, worst])
        if high - low < max(min_gap, 1e-12) or chosen == rejected:
            report.ties += 1
            continue
        extra = {k: v for k, v in row.items() if k not in ANSWER_COLUMNS and k != "prompt"}
        pairs.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected, "strength": round(high - low, 6),
                      "chosen_score": round(high, 6), "rejected_score": round(low, 6), **extra})
    report.pairs = len(pairs)
    if pairs:
        report.chosen_score = sum(p["chosen_score"] for p in pairs) / len(pairs)
        report.rejected_score = sum(p["rejected_score"] for p in pairs) / len(pairs)
    return pairs, report


def sample_pairs(model, tokenizer, rows: list[dict], rewards, samples: int = 4, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, min_gap: float = 0.0, batch_size: int = 64,
                 max_prompt_length: int = 512, keep_truncated: bool = False, bf16: bool = True,
                 progress: bool = True) -> tuple[list[dict], PairReport]:
    """Samples `samples` responses to each row's prompt from `model`, scores them with `rewards` (an `rl.rewards.Rewards`),
    and returns best-versus-worst preference rows and a report.

    A response cut at `max_new_tokens` takes part only with `keep_truncated` (an unfinished
    answer is a poor thing to prefer, and the chat template would close it as if finished).
    """
    from tqdm.auto import tqdm



    if samples < 2:
        raise AlignkitError(f"samples must be at least 2 to make a pair, got {samples}")
    if temperature <= 0:
        raise AlignkitError(f"temperature must be > 0 (identical greedy samples make no pairs), got {temperature}")
    ids, kept, encode_report = encode_prompts(tokenizer, [r["prompt"] for r in rows], max_prompt_length, "drop")
    if encode_report.dropped:
        log.info(encode_report.summary("prompts"))
    rows = [{k: v for k, v in rows[i].items() if k not in ANSWER_COLUMNS} for i in kept]  # the row's own answers are no input
    per_chunk = max(1, batch_size // samples)
    responses, scores, valid = [], [], []
    for start in tqdm(range(0, len(rows), per_chunk), desc="sample pairs", disable=not progress, mininterval=2):
        chunk = rows[start:start + per_chunk]
        rollout = generate(model, tokenizer, ids[start:start + per_chunk], group_size=samples, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, bf16=bf16)
        result = rewards([chunk[i]["prompt"] for i in rollout.prompt_index], rollout.responses,
                         prompt_columns(chunk, rollout.prompt_index), update_stats=False, completion_ids=rollout.response_ids)
        responses += rollout.responses
        scores.append(result.raw)
        valid.append(result.valid & (rollout.finished | keep_truncated))
    return pair_rows(rows, responses, torch.cat(scores), torch.cat(valid), samples, min_gap)


def run_sample_pairs(args) -> None:
    """`alignkit data sample-pairs`: writes the pairs as JSONL (atomically) and prints the report."""
    import json
    from pathlib import Path


    specs = []
    if args.reward_function:
        specs.append({"type": "function", "function": args.reward_function})
    if args.reward_model:
        specs.append({"type": "model", "path": args.reward_model, "bf16": not args.no_bf16})
    if args.reward_url:
        specs.append({"type": "http", "url": args.reward_url})
    if not specs:
        raise AlignkitError("sample-pairs needs a score: pass --reward-function MODULE:FN (or a registered name such as "
                            "hhh-mini-gold), --reward-model DIR or --reward-url URL")
    rows, _ = load_dataset(args.prompts, PROMPT_KINDS, "sample-pairs", args.split, hint="; sample-pairs needs rows with a `prompt` column")
    rows = rows[:args.limit] if args.limit else rows
    rewards = build_rewards(specs)
    torch.manual_seed(args.seed)
    tokenizer, model = load_tokenizer(args.model), load_causal_lm(args.model)
    pairs, report = sample_pairs(model, tokenizer, rows, rewards, args.samples, args.max_new_tokens, args.temperature, args.top_p,
                                 args.min_gap, args.batch_size, args.max_prompt_length, args.keep_truncated, bf16=not args.no_bf16)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    tmp.replace(out)  # an interrupted run leaves no half-written file
    print(f"{out}: {report.summary()}")
