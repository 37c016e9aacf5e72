"""The pipeline's `samples` stage: the SFT model's own answers, labelled once, feeding three later stages.

    prompts_rl --(SFT model, N samples each)--> records --(labeller: the preset's gold judge, or samples.reward_*)
        -> samples/pairs.jsonl         best vs worst of each prompt: DPO's pairs (on-policy DPO)
        -> samples/best.jsonl          each prompt's best answer: the `rs` stage's SFT data (rejection sampling)
        -> samples/reward_pairs.jsonl  the task's pairs plus the on-policy pairs: the reward model's data, so it
                                       learns to rank the policy's own answers, not only the task's phrasing

Off-policy pairs teach a small model mostly to push down text it would never write (DPO on hhh-mini's written
pairs lowered gold and raised refusals); a reward model trained only on written pairs learned their phrasing
(0.965 on its test pairs, ~0.72 on other templates). Labelled samples of the policy itself fix both.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from alignkit.config import ModelArgs
from alignkit.config_loader import option
from alignkit.config_sampling import SamplingArgs
from alignkit.data.load import load_rows
from alignkit.errors import AlignkitError
from alignkit.io import write_json, write_jsonl
from alignkit.rl.samples import best_of_n, pairs_from_records
from alignkit.train.rejection import load_prompts, sample_records

log = logging.getLogger("alignkit")


@dataclass
class SamplesConfig(SamplingArgs, ModelArgs):
    """The pipeline's `samples:` section: N answers per RL prompt from the SFT model, labelled."""

    output_dir: str = option("runs/pipeline/samples", "Where samples.jsonl, pairs.jsonl, best.jsonl and reward_pairs.jsonl go.")
    seed: int = option(0, "Sampling seed.", ge=0, lt=2**32, why="torch seeds with a 64-bit number; alignkit keeps every seed 32-bit")
    task_pairs: str = option("", "The task's own preference pairs, written into reward_pairs.jsonl before the on-policy ones.")
    min_gap: float = option(0.0, "Keep an on-policy pair only when best - worst >= this.", ge=0)
    min_score: float = option(0.0, "Keep a prompt's best answer for rejection sampling only when it scores at least this.")

    def validate(self) -> None:
        super().validate()
        if not self.prompts:
            raise AlignkitError("samples: prompts is empty; the pipeline sets it to data/prompts_rl.jsonl")
        self.check_labeller("the samples stage")


def run_samples(config: SamplesConfig) -> dict:
    """Samples, labels and writes the three files; summary.json last, so its presence means the stage finished."""
    out = Path(config.output_dir)
    records = sample_records(config, load_prompts(config, "samples"), config.model, "samples")
    write_jsonl(records, out / "samples.jsonl")
    pairs, pair_report = pairs_from_records(records, config.min_gap, config.greedy)
    best, best_report = best_of_n(records, config.min_score)
    log.info(f"samples: {pair_report.summary()}")
    log.info(f"samples: {best_report.summary()}")
    if not pairs:
        raise AlignkitError(f"samples: the labeller scored every prompt's {config.samples} answers alike ({len(records)} prompts, "
                            f"no pair with a gap of at least min_gap {config.min_gap}); the answers are in {out / 'samples.jsonl'}. "
                            f"Check the labeller, or raise samples.samples or samples.temperature")
    if not best:
        raise AlignkitError(f"samples: no prompt's best answer scored at least min_score ({config.min_score}); lower samples.min_score")
    task = load_rows(config.task_pairs) if config.task_pairs else []
    write_jsonl(pairs, out / "pairs.jsonl")
    write_jsonl(best, out / "best.jsonl")
    write_jsonl([*task, *pairs], out / "reward_pairs.jsonl")
    summary = {"prompts": len(records), "samples": config.samples, "pairs": dataclasses.asdict(pair_report),
               "best_of_n": dataclasses.asdict(best_report), "task_pairs": len(task), "reward_pairs": len(task) + len(pairs),
               "zero_variance_prompts": sum(len(set(r["scores"])) == 1 for r in records)}
    write_json(out / "summary.json", summary)
    return summary
