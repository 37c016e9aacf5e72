"""AI feedback (RLAIF, Constitutional AI): a judge model compares two responses under a constitution.

Pairwise judging (Bai et al. 2022, "Constitutional AI", sec. 4; Lee et al. 2023, "RLAIF"): the
judge sees the constitution, the prompt and "Response A" / "Response B", and its preference is
read from the next-token log-probs of "A" vs "B":

    P(A) = exp(l_A) / (exp(l_A) + exp(l_B))        l_X = logsumexp over the tokens "X" and " X"

which costs one forward pass and gives a graded strength, not just a verdict. Every pair is
judged in both orders and the two probabilities averaged, which cancels a constant position
bias; how often the verdict flips with the order (self-consistency) and how often slot A wins
(position bias) are reported, as the RLAIF paper recommends.

Critique-and-revise (CAI sec. 3): for (prompt, response) the judge writes a critique under one
principle, then a revision; (prompt, revision, response) becomes a (prompt, chosen, rejected) row.

The backends (`local`: a model through transformers; `http`: an OpenAI-compatible
/v1/chat/completions endpoint) are in `alignkit.feedback.judge_backends`; this module holds the
prompt templates and the workflows, which need only a backend's `first_slot_probs` and `generate`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from alignkit.data.formats import detect_format, validate_rows
from alignkit.errors import AlignkitError
from alignkit.feedback.judge_backends import ANSWER_PREFIX, BACKENDS, HTTPJudge, LocalJudge, make_judge
from alignkit.feedback.quality import as_text as _as_text

# The backends live in judge_backends; they are re-exported so that `from alignkit.feedback.judge import
# make_judge` (and LocalJudge, HTTPJudge, BACKENDS, ANSWER_PREFIX) keeps working.
__all__ = ["ANSWER_PREFIX", "BACKENDS", "HTTPJudge", "LocalJudge", "Verdict", "bias_report", "compare_messages",
           "critique_and_revise", "judge_pairs", "make_judge", "pair_items", "preference_rows", "principles",
           "read_constitution", "response_items"]

# alignkit/configs (a link to the checkout's configs/, package data once installed), so an installed alignkit finds it too
DEFAULT_CONSTITUTION = Path(__file__).resolve().parents[1] / "configs" / "constitution.md"

COMPARE_TEMPLATE = """Compare two responses to the user's prompt, following the principles in your instructions.

[Prompt]
{prompt}

[Response A]
{a}

[Response B]
{b}

Which response is better? Answer with a single letter: A or B."""

CRITIQUE_TEMPLATE = """[Prompt]
{prompt}

[Response]
{response}

Critique the response against this principle: {principle}
Name its specific problems in at most two sentences."""

REVISE_TEMPLATE = """[Prompt]
{prompt}

[Response]
{response}

[Critique]
{critique}

Rewrite the response so that it follows the principle ({principle}) and fixes the problems in the critique.
Reply with the rewritten response only."""


def read_constitution(path: str | None = None) -> str:
    """The constitution text: `path`, or configs/constitution.md."""
    path = Path(path) if path else DEFAULT_CONSTITUTION
    if not path.is_file():
        raise AlignkitError(f"constitution file {path} does not exist; pass --constitution FILE (a Markdown list of principles)")
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise AlignkitError(f"constitution file {path} is empty; write the principles the judge should apply")
    return text


def principles(constitution: str) -> list[str]:
    """The bullet items ('- ...' or '1. ...') of a constitution; the whole text if it has none."""
    items = [m.group(1).strip() for m in re.finditer(r"^\s*(?:[-*]|\d+[.)])\s+(.+)$", constitution, re.MULTILINE)]
    return items or [constitution.strip()]


def compare_messages(constitution: str, prompt, a: str, b: str) -> list[dict]:
    return [{"role": "system", "content": constitution},
            {"role": "user", "content": COMPARE_TEMPLATE.format(prompt=_as_text(prompt), a=a, b=b)}]


# ---------------------------------------------------------------- pairwise judging


@dataclass
class Verdict:
    """One pair judged in both orders. `p_*` are probabilities that response x (not slot A) is better."""

    p_x_first: float  # x shown as A
    p_x_second: float  # x shown as B
    mass: float  # mean probability the judge put on answering A or B at all

    @property
    def p_x(self) -> float:
        return (self.p_x_first + self.p_x_second) / 2

    @property
    def consistent(self) -> bool:
        return (self.p_x_first > 0.5) == (self.p_x_second > 0.5)

    @property
    def strength(self) -> float:
        return abs(2 * self.p_x - 1)


def judge_pairs(judge, constitution: str, items: list[tuple]) -> list[Verdict]:
    """`items` are (prompt, x, y); each is shown as (A=x, B=y) and (A=y, B=x)."""
    conversations = []
    for prompt, x, y in items:
        conversations.append(compare_messages(constitution, prompt, _as_text(x), _as_text(y)))
        conversations.append(compare_messages(constitution, prompt, _as_text(y), _as_text(x)))
    p_a, mass = judge.first_slot_probs(conversations)
    return [Verdict(p_a[2 * k], 1.0 - p_a[2 * k + 1], (mass[2 * k] + mass[2 * k + 1]) / 2) for k in range(len(items))]


def bias_report(verdicts: list[Verdict], labels: list[bool] | None = None) -> dict:
    """Position bias, self-consistency and (when labels say x is the better one) agreement.

    - `first_slot_rate`: share of the 2N single-order verdicts that picked slot A (0.5 = unbiased).
    - `self_consistency`: share of pairs whose winner is the same in both orders.
    - `inconsistent_first_slot`: share of pairs that picked slot A both times (flipped with the order).
    - `agreement`: share of pairs where the order-averaged probability favours the labelled winner.
    """
    n = len(verdicts)
    if not n:
        return {"pairs": 0}
    picks_a = sum(v.p_x_first > 0.5 for v in verdicts) + sum(v.p_x_second <= 0.5 for v in verdicts)
    report = {
        "pairs": n,
        "first_slot_rate": picks_a / (2 * n),
        "mean_first_slot_prob": sum(v.p_x_first + (1 - v.p_x_second) for v in verdicts) / (2 * n),
        "self_consistency": sum(v.consistent for v in verdicts) / n,
        "inconsistent_first_slot": sum(v.p_x_first > 0.5 and v.p_x_second <= 0.5 for v in verdicts) / n,
        "inconsistent_second_slot": sum(v.p_x_first <= 0.5 and v.p_x_second > 0.5 for v in verdicts) / n,
        "mean_strength": sum(v.strength for v in verdicts) / n,
        "mean_answer_mass": sum(v.mass for v in verdicts) / n,
    }
    if labels is not None:
        agree = [(v.p_x > 0.5) == bool(label) for v, label in zip(verdicts, labels)]
        consistent = [a for a, v in zip(agree, verdicts) if v.consistent]
        report["agreement"] = sum(agree) / n
        report["agreement_x_first_only"] = sum((v.p_x_first > 0.5) == bool(l) for v, l in zip(verdicts, labels)) / n
        report["agreement_x_second_only"] = sum((v.p_x_second > 0.5) == bool(l) for v, l in zip(verdicts, labels)) / n
        report["agreement_on_consistent"] = sum(consistent) / len(consistent) if consistent else None
    return report


def pair_items(rows: list[dict], source: str = "data") -> tuple[list[tuple], list[bool] | None]:
    """(prompt, x, y) from preference rows (x = chosen, labels known) or `response_a`/`response_b` rows."""
    if all("chosen" in r and "rejected" in r for r in rows):
        rows = validate_rows(rows, detect_format(rows, source), source)
        return [(r["prompt"], r["chosen"], r["rejected"]) for r in rows], [True] * len(rows)
    items = []
    for number, row in enumerate(rows, start=1):
        missing = [c for c in ("prompt", "response_a", "response_b") if row.get(c) in (None, "")]
        if missing:
            raise AlignkitError(f"{source} row {number}: missing column '{missing[0]}'; the judge needs prompt+chosen+rejected or prompt+response_a+response_b rows")
        items.append((row["prompt"], row["response_a"], row["response_b"]))
    return items, None


def preference_rows(items: list[tuple], verdicts: list[Verdict], labels: list[bool] | None, judge_name: str,
                    drop_inconsistent: bool = False, min_strength: float = 0.0) -> tuple[list[dict], dict]:
    """Judged rows (chosen = the judge's winner, `strength` from the averaged probability) and drop counts."""
    rows, dropped = [], {"inconsistent across orders": 0, f"strength below {min_strength}": 0}
    for k, ((prompt, x, y), verdict) in enumerate(zip(items, verdicts)):
        if drop_inconsistent and not verdict.consistent:
            dropped["inconsistent across orders"] += 1
            continue
        if verdict.strength < min_strength:
            dropped[f"strength below {min_strength}"] += 1
            continue
        x_wins = verdict.p_x > 0.5
        row = {"prompt": prompt, "chosen": x if x_wins else y, "rejected": y if x_wins else x,
               "strength": round(verdict.strength, 4), "judge_prob": round(max(verdict.p_x, 1 - verdict.p_x), 4),
               "judge_consistent": verdict.consistent, "judge": judge_name}
        if labels is not None:
            row["agrees_with_label"] = x_wins == bool(labels[k])
        rows.append(row)
    return rows, {k: v for k, v in dropped.items() if v}


# ---------------------------------------------------------------- critique and revise


def critique_and_revise(judge, constitution: str, items: list[tuple], seed: int = 0, max_new_tokens: int = 128) -> tuple[list[dict], dict]:
    """(prompt, response) items -> rows (prompt, chosen=revision, rejected=response) and drop counts.

    Each item gets one principle drawn at random from the constitution (as in CAI, which samples a
    principle per revision step). Revisions that come back empty or unchanged are dropped.
    """
    rng = random.Random(seed)
    rules = principles(constitution)
    picked = [rng.choice(rules) for _ in items]
    system = {"role": "system", "content": constitution}
    critiques = judge.generate([[system, {"role": "user", "content": CRITIQUE_TEMPLATE.format(
        prompt=_as_text(p), response=_as_text(r), principle=rule)}] for (p, r), rule in zip(items, picked)], max_new_tokens)
    revisions = judge.generate([[system, {"role": "user", "content": REVISE_TEMPLATE.format(
        prompt=_as_text(p), response=_as_text(r), critique=c, principle=rule)}]
        for (p, r), rule, c in zip(items, picked, critiques)], max_new_tokens)
    rows, dropped = [], {"empty revision": 0, "revision identical to the response": 0}
    for (prompt, response), rule, critique, revision in zip(items, picked, critiques, revisions):
        revision = revision.strip()
        if not revision:
            dropped["empty revision"] += 1
        elif " ".join(revision.split()) == " ".join(_as_text(response).split()):
            dropped["revision identical to the response"] += 1
        else:
            rows.append({"prompt": prompt, "chosen": revision, "rejected": response, "principle": rule, "critique": critique})
    return rows, {k: v for k, v in dropped.items() if v}


def response_items(rows: list[dict], source: str = "data") -> list[tuple]:
    """(prompt, response) from rows with prompt + completion / response (or the rejected side of a pair)."""
    items = []
    for number, row in enumerate(rows, start=1):
        response = row.get("completion", row.get("response", row.get("rejected")))
        if row.get("prompt") in (None, "") or response in (None, ""):
            raise AlignkitError(f"{source} row {number}: critique-and-revise needs 'prompt' and 'completion' (or 'response') columns")
        items.append((row["prompt"], response))
    return items
