"""Sampled answers, labelled: the one pass behind on-policy pairs, rejection sampling and `alignkit iterate` rounds.

`sample_scored` draws N answers per prompt from a model (`rl.rollout.generate`, the RL sampler) and scores them
with any reward source (`rl.rewards.Rewards`: a function, a reward model, a URL): one record per prompt,
{"prompt", the row's other columns, "responses", "scores", "valid"}. From those records

    pairs_from_records -> best-versus-worst preference rows (DPO, IPO, KTO, the reward model's data)
    best_of_n          -> each prompt's best answer as a prompt-completion row (rejection-sampling SFT)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from alignkit.data.formats import ANSWER_COLUMNS, prompt_columns
from alignkit.errors import AlignkitError
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
              min_gap: float, greedy: bool = False) -> tuple[list[dict], PairReport]:
    """Best-versus-worst pairs from `samples` scored responses per row (row i's are i*G .. i*G + G - 1).

    `greedy`: each row's first response is its greedy answer (`sample_scored(greedy=True)`), and it is the rejected
    one whenever it scores at least `min_gap` under the best: the mistake an evaluation would see is pushed down
    rather than a worse sample the model rarely writes."""
    report = PairReport(prompts=len(rows), sample_score=scores[valid].mean().item() if valid.any() else float("nan"))
    pairs, gap = [], max(min_gap, 1e-12)  # a pair needs some gap even at min_gap 0
    grouped, ok = scores.view(len(rows), samples), valid.view(len(rows), samples)
    for i, row in enumerate(rows):
        if ok[i].sum() < 2:
            report.ties += 1
            continue
        best = int(grouped[i].masked_fill(~ok[i], float("-inf")).argmax())  # invalid samples take no part
        worst = int(grouped[i].masked_fill(~ok[i], float("inf")).argmin())
        if greedy and ok[i, 0] and grouped[i, best] - grouped[i, 0] >= gap:
            worst = 0
        chosen, rejected = responses[i * samples + best], responses[i * samples + worst]
        high, low = float(grouped[i, best]), float(grouped[i, worst])
        if high - low < gap or chosen == rejected:
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


def sample_scored(model, tokenizer, rows: list[dict], rewards, samples: int = 4, max_new_tokens: int = 64,
                  temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64, max_prompt_length: int = 512,
                  keep_truncated: bool = False, bf16: bool = True, progress: bool = True, greedy: bool = False) -> list[dict]:
    """Samples `samples` responses to each row's prompt from `model` and scores them with `rewards` (an
    `rl.rewards.Rewards`; None leaves them unscored, at 0.0, for a labeller that comes later, see `label_records`):
    one record per prompt, {"prompt", the row's other columns, "responses", "scores", "valid"}.

    The one sampling pass behind on-policy pairs (`pairs_from_records`), rejection sampling (`best_of_n`) and a
    round of `alignkit iterate`. A response cut at `max_new_tokens` is valid only with `keep_truncated` (an
    unfinished answer is a poor thing to prefer or imitate, and the chat template would close it as if finished);
    a response the reward source could not score is invalid too. Prompts longer than `max_prompt_length` are
    skipped (logged). `greedy` decodes each prompt's greedy answer too and puts it first (samples + 1 responses):
    evaluations decode greedily, and at temperature 1 a small model's samples are mostly worse than its greedy answer,
    so pairs of samples alone rarely touch what an evaluation sees.
    """
    from tqdm.auto import tqdm


    if samples < 1:
        raise AlignkitError(f"samples must be at least 1, got {samples}")
    if temperature <= 0:
        raise AlignkitError(f"temperature must be > 0 (greedy samples are all alike), got {temperature}")
    ids, kept, encode_report = encode_prompts(tokenizer, [r["prompt"] for r in rows], max_prompt_length, "drop")
    if encode_report.dropped:
        log.info(encode_report.summary("prompts"))
    rows = [{k: v for k, v in rows[i].items() if k not in ANSWER_COLUMNS} for i in kept]  # the row's own answers are no input
    per_chunk = max(1, batch_size // samples)
    records = []
    for start in tqdm(range(0, len(rows), per_chunk), desc="sample", disable=not progress, mininterval=2):
        chunk = rows[start:start + per_chunk]
        rollout = generate(model, tokenizer, ids[start:start + per_chunk], group_size=samples, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, bf16=bf16)
        finished = (rollout.finished | keep_truncated).tolist()
        texts, token_ids = rollout.responses, rollout.response_ids
        if greedy:
            first = generate(model, tokenizer, ids[start:start + per_chunk], group_size=1, max_new_tokens=max_new_tokens,
                             temperature=0.0, bf16=bf16)
            order = [j for i in range(len(chunk)) for j in (len(texts) + i, *range(i * samples, (i + 1) * samples))]
            joined = (texts + first.responses, token_ids + first.response_ids, finished + (first.finished | keep_truncated).tolist())
            texts, token_ids, finished = ([column[j] for j in order] for column in joined)
        group_size = samples + greedy
        for i, row in enumerate(chunk):
            group = range(i * group_size, (i + 1) * group_size)
            records.append({**row, "responses": [texts[j] for j in group], "scores": [0.0] * group_size,
                            "valid": [bool(finished[j]) for j in group]})
        if rewards is not None:
            label_records(records[-len(chunk):], rewards, token_ids)
    return records


def label_records(records: list[dict], rewards, completion_ids: list | None = None) -> list[dict]:
    """Scores every response of `records` with `rewards` (an `rl.rewards.Rewards`), in place: "scores" are the raw
    scores, and a response the reward source could not score turns invalid. `completion_ids` (the responses' token
    ids, in order) go to TRL-style reward functions. Returns `records`."""
    rows = [{k: v for k, v in r.items() if k not in RECORD_KEYS} for r in records]
    index = [i for i, r in enumerate(records) for _ in r["responses"]]
    responses = [text for r in records for text in r["responses"]]
    if not responses:
        return records
    result = rewards([rows[i]["prompt"] for i in index], responses, prompt_columns(rows, index), update_stats=False,
                     completion_ids=completion_ids)
    scores, valid, position = result.raw.tolist(), result.valid.tolist(), 0
    for record in records:
        n = len(record["responses"])
        record["scores"] = [round(float(x), 6) for x in scores[position:position + n]]
        record["valid"] = [bool(a and b) for a, b in zip(record["valid"], valid[position:position + n])]
        position += n
    return records


def pairs_from_records(records: list[dict], min_gap: float = 0.0, greedy: bool = False) -> tuple[list[dict], PairReport]:
    """Best-versus-worst preference rows of `sample_scored`'s records (see `pair_rows`; `greedy`: the records' first
    answers are greedy ones)."""
    samples = max((len(r["responses"]) for r in records), default=1)
    if any(len(r["responses"]) != samples for r in records):
        raise AlignkitError("pairs_from_records: every record must hold the same number of samples")
    rows = [{k: v for k, v in r.items() if k not in RECORD_KEYS} for r in records]
    responses = [text for r in records for text in r["responses"]]
    scores = torch.tensor([s for r in records for s in r["scores"]], dtype=torch.float32)
    valid = torch.tensor([v for r in records for v in r["valid"]], dtype=torch.bool)
    return pair_rows(rows, responses, scores, valid, samples, min_gap, greedy)


RECORD_KEYS = ("responses", "scores", "valid")


@dataclass
class BestOfNReport:
    prompts: int = 0
    kept: int = 0
    below_threshold: int = 0  # prompts whose best valid sample scored under min_score
    no_valid: int = 0  # prompts with no valid sample at all
    best_score: float = 0.0  # mean over kept rows
    sample_score: float = 0.0  # mean over every valid sample

    def summary(self) -> str:
        return (f"best-of-n: kept {self.kept} of {self.prompts} prompts ({self.below_threshold} best under min_score, "
                f"{self.no_valid} without a valid sample); mean score of kept {self.best_score:.3f}, of all samples {self.sample_score:.3f}")


def best_of_n(records: list[dict], min_score: float = float("-inf")) -> tuple[list[dict], BestOfNReport]:
    """Rejection sampling (best-of-N, as in Llama 2's and RAFT's fine-tuning rounds): each prompt's best valid sample,
    as a prompt-completion row, kept when it scores at least `min_score`. Ties go to the first sample."""
    report, rows, every = BestOfNReport(prompts=len(records)), [], []
    for record in records:
        scored = [(s, t) for s, t, ok in zip(record["scores"], record["responses"], record["valid"]) if ok]
        every += [s for s, _ in scored]
        if not scored:
            report.no_valid += 1
            continue
        score, text = max(scored, key=lambda pair: pair[0])  # max keeps the first of equal scores
        if score < min_score:
            report.below_threshold += 1
            continue
        extra = {k: v for k, v in record.items() if k not in RECORD_KEYS and k != "prompt"}
        rows.append({"prompt": record["prompt"], "completion": text, "score": score, **extra})
    report.kept = len(rows)
    report.best_score = sum(r["score"] for r in rows) / len(rows) if rows else float("nan")
    report.sample_score = sum(every) / len(every) if every else float("nan")
    return rows, report


def sample_pairs(model, tokenizer, rows: list[dict], rewards, samples: int = 4, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, min_gap: float = 0.0, batch_size: int = 64,
                 max_prompt_length: int = 512, keep_truncated: bool = False, bf16: bool = True,
                 progress: bool = True) -> tuple[list[dict], PairReport]:
    """`sample_scored` then `pairs_from_records`: best-versus-worst preference rows and their report."""
    if samples < 2:
        raise AlignkitError(f"samples must be at least 2 to make a pair, got {samples}")
    records = sample_scored(model, tokenizer, rows, rewards, samples, max_new_tokens, temperature, top_p, batch_size,
                            max_prompt_length, keep_truncated, bf16, progress)
    return pairs_from_records(records, min_gap)
