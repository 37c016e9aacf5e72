"""Implicit signals -> training data: thumbs up/down -> KTO rows, regenerations -> preference pairs.

Input: a JSONL log with one line per response shown to a user (field names configurable):

    {"conversation": "c1", "prompt": "...", "response": "...", "feedback": "up", "regenerated": false, "user": "u7"}

- `feedback` ("up"/"down", 1/-1, "thumbs_up", ...; empty when the user gave none) becomes a KTO
  row `(prompt, completion, label)`. Ratings of the same (prompt, response) are merged; when users
  disagree, `rating_conflict` decides (majority vote, or drop).
- `regenerated: true` marks a response the user threw away by asking for another. Within one
  conversation and prompt, in log order, the last response *not* regenerated is the kept answer;
  each discarded one gives a pair `(prompt, chosen=kept, rejected=discarded)` with a `strength`.

Every line that yields nothing, and every pair or row dropped by a rule, is counted under a
reason in the summary (with the first few 1-based line numbers), so nothing vanishes silently.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from alignkit.config import choose, load_config, option
from alignkit.errors import AlignkitError
from alignkit.feedback.quality import as_text
from alignkit.data.load import load_rows
from alignkit.io import write_jsonl


@dataclass
class SignalRules:
    """`alignkit data from-signals --rules rules.yaml`: how log lines become training rows."""

    prompt_field: str = option("prompt", "Log field holding the prompt (string or message list).")
    response_field: str = option("response", "Log field holding the response shown.")
    rating_field: str = option("feedback", "Log field holding an explicit rating (thumbs up/down); empty means none.")
    regenerated_field: str = option("regenerated", "Log field that is true when the user regenerated (discarded) this response.")
    group_field: str = option("conversation", "Log field that ties regenerations together (with the prompt); missing -> the user field.")
    user_field: str = option("user", "Log field naming the user.")
    up_values: list = option(["up", "thumbs_up", "like", "good", "positive", "1", "+1", "true"], "Rating values that mean thumbs up.")
    down_values: list = option(["down", "thumbs_down", "dislike", "bad", "negative", "-1", "0", "false"], "Rating values that mean thumbs down.")
    kto_from_ratings: bool = option(True, "Turn rated responses into KTO rows.")
    pairs_from_regenerations: bool = option(True, "Turn (kept, discarded) regenerations into preference pairs.")
    discarded_as_undesirable: bool = option(False, "Also write each discarded regeneration as a KTO row with label false.")
    rating_conflict: str = option("majority", "Same (prompt, response) rated up and down: majority (ties dropped) or drop.")
    drop_if_kept_downvoted: bool = option(True, "Drop a regeneration pair whose kept answer was rated down.")
    drop_if_discarded_upvoted: bool = option(True, "Drop a regeneration pair whose discarded answer was rated up.")
    min_response_words: int = option(1, "Drop responses with fewer words (empty or truncated outputs).")
    max_response_words: int = option(0, "Drop responses with more words; 0 = no limit.")
    max_pairs_per_prompt: int = option(0, "Keep at most this many pairs per prompt (first in log order); 0 = no limit.")
    exclude_users: list = option([], "Users whose lines are ignored (testers, bots).")
    pair_strength: float = option(0.5, "Strength of a pair from a regeneration alone (a weak signal).")
    rated_pair_strength: float = option(1.0, "Strength when a rating backs the pair (kept rated up or discarded rated down).")

    def validate(self) -> None:
        choose(self, "rating_conflict", ("majority", "drop"))
        if set(map(str, self.up_values)) & set(map(str, self.down_values)):
            raise AlignkitError(f"up_values and down_values share {sorted(set(map(str, self.up_values)) & set(map(str, self.down_values)))}; a value must mean one thing")


@dataclass
class SignalSummary:
    """What was kept and what was dropped, and why."""

    lines: int = 0
    kto_rows: int = 0
    pairs: int = 0
    dropped: dict = field(default_factory=dict)  # reason -> count
    examples: dict = field(default_factory=dict)  # reason -> first 1-based line numbers

    def drop(self, reason: str, line: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(line)

    def as_dict(self) -> dict:
        return {"lines": self.lines, "kto_rows": self.kto_rows, "pairs": self.pairs, "dropped": self.dropped, "examples": self.examples}

    def text(self) -> str:
        out = [f"{self.lines} log lines -> {self.kto_rows} KTO rows and {self.pairs} preference pairs"]
        for reason, count in sorted(self.dropped.items(), key=lambda kv: -kv[1]):
            lines = ", ".join(map(str, self.examples.get(reason, [])))
            out.append(f"  {count:>6}  {reason} (lines {lines}{'...' if count > 5 else ''})")
        return "\n".join(out)


@dataclass
class _Shown:
    line: int
    prompt: object
    response: str
    rating: bool | None  # True up, False down, None no rating
    regenerated: bool
    group: tuple


def _rating(value, rules: SignalRules) -> bool | None | str:
    """True / False / None (no rating), or the string 'bad' for an unrecognised value."""
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if text in {str(v).lower() for v in rules.up_values}:
        return True
    if text in {str(v).lower() for v in rules.down_values}:
        return False
    return "bad"


def _flag(value) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def _parse(rows: list[dict], rules: SignalRules, summary: SignalSummary) -> list[_Shown]:
    shown = []
    excluded = {str(u) for u in rules.exclude_users}
    for line, row in enumerate(rows, start=1):
        prompt, response = row.get(rules.prompt_field), row.get(rules.response_field)
        user = row.get(rules.user_field)
        if prompt in (None, "", []) or response in (None, ""):
            summary.drop(f"missing '{rules.prompt_field}' or '{rules.response_field}'", line)
            continue
        if str(user) in excluded:
            summary.drop("excluded user", line)
            continue
        response = as_text(response)
        length = len(response.split())
        if length < rules.min_response_words:
            summary.drop(f"response shorter than {rules.min_response_words} words", line)
            continue
        if rules.max_response_words and length > rules.max_response_words:
            summary.drop(f"response longer than {rules.max_response_words} words", line)
            continue
        rating = _rating(row.get(rules.rating_field), rules)
        if rating == "bad":
            summary.drop(f"unrecognised '{rules.rating_field}' value (rating ignored)", line)
            rating = None
        group = row.get(rules.group_field) or f"user:{user}"
        shown.append(_Shown(line, prompt, response, rating, _flag(row.get(rules.regenerated_field)), (str(group), as_text(prompt))))
    return shown


def _merged_ratings(shown: list[_Shown], rules: SignalRules, summary: SignalSummary) -> dict:
    """(prompt text, response) -> (label or None when conflicting, first line, prompt)."""
    votes: dict = defaultdict(list)
    for item in shown:
        if item.rating is not None:
            votes[(as_text(item.prompt), item.response)].append(item)
    merged = {}
    for key, items in votes.items():
        ups = sum(i.rating is True for i in items)
        downs = len(items) - ups
        if ups and downs and (rules.rating_conflict == "drop" or ups == downs):
            label = None
            summary.drop("conflicting ratings of the same response", items[0].line)
        else:
            label = ups > downs
        for extra in items[1:]:
            if label is not None:
                summary.drop("repeat rating of the same response (merged)", extra.line)
        merged[key] = (label, items[0].line, items[0].prompt)
    return merged


def _kto_rows(merged: dict, summary: SignalSummary) -> list[dict]:
    rows = []
    for (_, response), (label, line, prompt) in merged.items():
        if label is not None:
            rows.append({"prompt": prompt, "completion": response, "label": label, "source_line": line})
    return rows


def _regeneration_pairs(shown: list[_Shown], merged: dict, rules: SignalRules, summary: SignalSummary) -> tuple[list[dict], list[dict]]:
    """Pairs (kept, discarded) and, if asked, KTO rows for the discarded answers."""
    groups: dict = defaultdict(list)
    for item in shown:
        groups[item.group].append(item)
    pairs, negatives, per_prompt = [], [], defaultdict(int)
    for items in groups.values():
        kept = next((i for i in reversed(items) if not i.regenerated), None)
        discarded = [i for i in items if i.regenerated and kept is not None and i.line < kept.line]
        for item in items:
            if item.regenerated and (kept is None or item.line > kept.line):
                summary.drop("regenerated, but no kept answer follows", item.line)
        if kept is None:
            continue
        kept_label = merged.get((as_text(kept.prompt), kept.response), (None,))[0]
        for item in discarded:
            label = merged.get((as_text(item.prompt), item.response), (None,))[0]
            if item.response.strip() == kept.response.strip():
                summary.drop("regeneration identical to the kept answer", item.line)
                continue
            if rules.drop_if_kept_downvoted and kept_label is False:
                summary.drop("kept answer was rated down", item.line)
                continue
            if rules.drop_if_discarded_upvoted and label is True:
                summary.drop("discarded answer was rated up", item.line)
                continue
            if rules.max_pairs_per_prompt and per_prompt[item.group[1]] >= rules.max_pairs_per_prompt:
                summary.drop(f"more than {rules.max_pairs_per_prompt} pairs for this prompt", item.line)
                continue
            per_prompt[item.group[1]] += 1
            backed = kept_label is True or label is False
            pairs.append({"prompt": kept.prompt, "chosen": kept.response, "rejected": item.response,
                          "strength": rules.rated_pair_strength if backed else rules.pair_strength,
                          "source_lines": [item.line, kept.line]})
            if rules.discarded_as_undesirable and label is None:
                negatives.append({"prompt": item.prompt, "completion": item.response, "label": False, "source_line": item.line})
    return pairs, negatives


def from_signals(rows: list[dict], rules: SignalRules | None = None) -> tuple[list[dict], list[dict], SignalSummary]:
    """(KTO rows, preference rows, summary) from log rows, following `rules`."""
    rules = rules or SignalRules()
    summary = SignalSummary(lines=len(rows))
    shown = _parse(rows, rules, summary)
    merged = _merged_ratings(shown, rules, summary)
    kto = _kto_rows(merged, summary) if rules.kto_from_ratings else []
    pairs, negatives = _regeneration_pairs(shown, merged, rules, summary) if rules.pairs_from_regenerations else ([], [])
    kto += negatives
    regenerated_groups = {item.group for item in shown if item.regenerated}
    for item in shown:  # lines that carry no signal at all
        if item.rating is None and item.group not in regenerated_groups:
            summary.drop("no rating and no regeneration (no signal)", item.line)
    summary.kto_rows, summary.pairs = len(kto), len(pairs)
    return kto, pairs, summary


def run_from_signals(args) -> None:
    """`alignkit data from-signals` (arguments from `alignkit.data_cli`)."""
    import json
    from pathlib import Path


    rules = load_config(SignalRules, args.rules)
    kto, pairs, summary = from_signals(load_rows(args.logs), rules)
    out = Path(args.out)
    write_jsonl(kto, out / "kto.jsonl")
    write_jsonl(pairs, out / "preference.jsonl")
    (out / "signals_summary.json").write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
    print(summary.text())
    print(f"wrote {out / 'kto.jsonl'}, {out / 'preference.jsonl'}, {out / 'signals_summary.json'}")
