"""Preference pairs for reward modeling: screening (identical or empty pairs), tokenization, the report of every dropped row.

Each pair becomes {"prompt_ids", "chosen_ids", "rejected_ids", "margin", "strength", "row"};
`alignkit.models.reward.collate_pairs` batches them for one forward pass per pair.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from alignkit.data.formats import load_with_holdout
from alignkit.data.tokenize import TokenizeReport, encode_completions, fit_prompt_completions, is_empty, row_number
from alignkit.errors import AlignkitError

log = logging.getLogger("alignkit")

PREFERENCE_HINT = ("; a reward model learns from pairs: give each prompt a `chosen` and a `rejected` response "
                   "(rows with prompt, completion and label go to `alignkit kto`)")


@dataclass
class PairReport(TokenizeReport):
    """TokenizeReport summarised per reason with counts (identical pairs, empty responses, too long)."""

    def summary(self, source: str = "data") -> str:
        text = f"{source}: {self.kept}/{self.rows} pairs kept, {self.truncated} truncated, {self.dropped} dropped"
        for reason, count in self.counts.items():
            rows = self.examples[reason]
            text += f"; {reason}: {count} (rows {', '.join(map(str, rows))}{'...' if count > len(rows) else ''})"
        return text


def screen_pair(row: dict, number: int, config, source: str, report: PairReport) -> bool:
    """Whether to keep a pair, by `identical_pairs` and `empty_responses`; every case is counted in `report`."""
    checks = (("identical_pairs", row["chosen"] == row["rejected"], "chosen identical to rejected"),
              ("empty_responses", is_empty(row["chosen"]) or is_empty(row["rejected"]), "empty response"))
    for key, failed, what in checks:
        if not failed:
            continue
        action = getattr(config, key)
        if action == "error":
            raise AlignkitError(f"{source} row {number}: {what}; fix the row, or set `{key}: drop` (or keep) to continue")
        if action == "drop":
            report.drop(f"{what} (dropped)", number)
            return False
        report.note(f"{what} (kept)", number)
    return True


def tokenize_pairs(numbered_rows: list[tuple[int, dict]], tokenizer, config, source: str) -> tuple[list[dict], PairReport]:
    """Examples {"prompt_ids", "chosen_ids", "rejected_ids", "margin", "strength", "row"} and what happened to each row.

    Each prompt + response must fit `max_length` (as its own sequence); longer pairs
    have their prompt cut (`truncation_side`), then the responses, or are dropped
    (`truncation_mode: drop`).
    """
    report = PairReport(rows=len(numbered_rows))
    examples = []
    for number, row in numbered_rows:
        if not screen_pair(row, number, config, source, report):
            continue
        prompt_ids, (chosen, rejected) = encode_completions(tokenizer, row["prompt"], [row["chosen"], row["rejected"]])
        if len(prompt_ids) + max(len(chosen), len(rejected)) > config.max_length:
            if config.truncation_mode == "drop":
                report.drop(f"longer than max_length={config.max_length} (dropped)", number)
                continue
            prompt_ids, (chosen, rejected), _ = fit_prompt_completions(prompt_ids, [chosen, rejected], config.max_length, config.truncation_side)
            report.truncated += 1
            report.note(f"longer than max_length={config.max_length} (truncated)", number)
        examples.append({"prompt_ids": prompt_ids, "chosen_ids": chosen, "rejected_ids": rejected, "row": number,
                         "margin": row.get("margin", 0.0) if config.use_margin else 0.0, "strength": row.get("strength")})
    report.finish([row for _, row in numbered_rows], len(examples), source)
    return examples, report


def load_reward_data(config, tokenizer):
    """Tokenized train and held-out pairs, with their reports."""
    if not config.data:
        raise AlignkitError("no training data: set `data:` in the config or pass --data FILE (preference rows: prompt, chosen, rejected)")
    rows, fmt, eval_rows, _ = load_with_holdout(config.data, ("preference",), "reward modeling", config.data_split, config.eval_fraction,
                                                config.seed, hint=PREFERENCE_HINT, eval_data=config.eval_data)
    numbered = [(row_number(row, i), row) for i, row in enumerate(rows, start=1)]
    eval_numbered = [(row_number(row, i), row) for i, row in enumerate(eval_rows, start=1)]
    eval_source = config.eval_data or f"{config.data} (held out)"
    train, report = tokenize_pairs(numbered, tokenizer, config, config.data)
    held_out, eval_report = tokenize_pairs(eval_numbered, tokenizer, config, eval_source) if eval_numbered else ([], None)
    log.info(report.summary(f"{config.data} ({fmt})"))
    if eval_report:
        log.info(eval_report.summary(eval_source))
    if not train:
        raise AlignkitError(f"{config.data}: no training pairs are left; see the report above")
    return train, held_out, report, eval_report


