"""On-policy preference pairs: K samples per prompt from the model being aligned, scored, best against worst.

Off-policy pairs (someone else's chosen and rejected answers) teach a small model
mostly to push down text it would never write, and DPO then lowers the chosen
answers' likelihood too. Pairs drawn from the policy itself put the margin on its own
mistakes: the recipe of iterative / online DPO (Xu et al. 2023, "Some things are more
CRINGE than others"; Xiong et al. 2024, "Iterative preference learning from human
feedback"; TRL's OnlineDPOTrainer asks a judge about two fresh samples per step).
This module is one offline round of it (the sampling itself is `alignkit.rl.samples`, shared with rejection
sampling and `alignkit iterate`):

    for each prompt: G samples (`rl.rollout.generate`, the RL sampler)
                     -> scores from any reward source (a function, a reward model, a URL)
                     -> chosen = best, rejected = worst, kept when they differ by >= min_gap

Rows are standard preference rows, so `alignkit dpo` reads them and `alignkit kto
--from_preference true` turns each into one desirable and one undesirable completion.
"""

from __future__ import annotations

import torch

from alignkit.data.formats import load_dataset, PROMPT_KINDS
from alignkit.errors import AlignkitError
from alignkit.models.precision import autocast_bf16
from alignkit.models.load import load_causal_lm, load_tokenizer
from alignkit.rl.rewards import build_rewards
from alignkit.rl.samples import PairReport, best_of_n, pair_rows, pairs_from_records, sample_pairs, sample_scored

__all__ = ["PairReport", "best_of_n", "pair_rows", "pairs_from_records", "run_sample_pairs", "sample_pairs", "sample_scored"]  # re-exported


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
                                 args.min_gap, args.batch_size, args.max_prompt_length, args.keep_truncated,
                                 bf16=autocast_bf16(not args.no_bf16, next(model.parameters()).device))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    tmp.replace(out)  # an interrupted run leaves no half-written file
    print(f"{out}: {report.summary()}")
