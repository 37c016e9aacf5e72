"""Dataset formats: detection and validation of the ecosystem's column conventions.

| kind                | columns                                              | used by            |
|---------------------|------------------------------------------------------|--------------------|
| language_modeling   | `text` or `messages`                                 | SFT                |
| prompt_completion   | `prompt`, `completion`                               | SFT                |
| prompt_only         | `prompt`                                             | PPO, GRPO, eval    |
| preference          | `prompt`, `chosen`, `rejected` (prompt optional)     | reward, DPO, IPO   |
| unpaired_preference | `prompt`, `completion`, `label`                      | KTO                |
| stepwise_supervision| `prompt`, `completions` (steps), `labels` (per step) | none: refused      |

A row is *standard* (strings) or *conversational* (lists of {"role", "content"}
messages). Preference rows without `prompt` have an implicit prompt: the messages
(or text) that chosen and rejected share at the start (`split_implicit_prompt`, TRL's
`extract_prompt`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from alignkit.errors import AlignkitError
from alignkit.data.load import Row, has_split, load_rows, where
from alignkit.data.split import split_holdout

log = logging.getLogger("alignkit")

ROLES = ("system", "user", "assistant", "tool")
KINDS = ("language_modeling", "prompt_completion", "prompt_only", "preference", "unpaired_preference", "stepwise_supervision")
HELD_OUT_SPLIT = "test"  # a source's own held-out split, used when a stage has no eval_data
PROMPT_KINDS = ("prompt_only", "prompt_completion", "preference", "unpaired_preference")  # kinds with a `prompt` column
ANSWER_COLUMNS = ("completion", "chosen", "rejected", "label")  # the answers those kinds carry beside the prompt
_TEXT_COLUMNS = {
    "language_modeling": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "prompt_only": ("prompt",),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired_preference": ("prompt", "completion"),
    "stepwise_supervision": ("prompt",),
}
_PROBES = ("messages", "chosen", "completion", "prompt")  # the column whose type says standard or conversational
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


@dataclass(frozen=True)
class DataFormat:
    kind: str
    conversational: bool

    def __str__(self) -> str:
        return f"{'conversational' if self.conversational else 'standard'} {self.kind.replace('_', '-')}"


def detect_kind(columns) -> str | None:
    columns = set(columns)
    if {"prompt", "completions", "labels"} <= columns:
        return "stepwise_supervision"
    if {"chosen", "rejected"} <= columns:
        return "preference"
    if {"completion", "label"} <= columns:
        return "unpaired_preference"
    if {"prompt", "completion"} <= columns:
        return "prompt_completion"
    if "messages" in columns or "text" in columns:
        return "language_modeling"
    if "prompt" in columns:
        return "prompt_only"
    return None


def detect_format(rows: list[dict], source: str = "data") -> DataFormat:
    """The format of `rows`, judged from the first row (and, for a folder of files, each file's first row);
    `validate_rows` checks the rest."""
    starts = _file_starts(rows)
    fmt = _format_of(rows[starts[0]:starts[1] if len(starts) > 1 else None], source)
    for start, end in zip(starts[1:], starts[2:] + [len(rows)]):
        other = _format_of(rows[start:end], source)
        if other != fmt:
            raise AlignkitError(f"{source}: {rows[0].source} holds {fmt} rows but {rows[start].source} holds {other} rows; "
                                f"a folder is read as one dataset, so keep one format per folder (or pass the file you mean)")
    return fmt


def _file_starts(rows: list[dict]) -> list[int]:
    """Where each file's rows start (rows read from a folder come file after file)."""
    starts = [0]
    for index in range(1, len(rows)):
        if getattr(rows[index], "source", None) != getattr(rows[index - 1], "source", None):
            starts.append(index)
    return starts


def _format_of(rows: list[dict], source: str) -> DataFormat:
    first = rows[0]
    kind = detect_kind(first)
    if kind is None:
        raise AlignkitError(
            f"{where(first, source, 1)}: columns {sorted(first)} fit no known format; expected text/messages, "
            f"prompt+completion, prompt, prompt+chosen+rejected or prompt+completion+label"
        )
    probe = next((row[c] for c in _PROBES if c in first for row in rows[:100] if row.get(c) is not None), None)
    return DataFormat(kind, isinstance(probe, list))


def _check_messages(value, place: str, column: str) -> None:
    if not value:
        raise AlignkitError(f"{place}: column '{column}' is an empty message list")
    for index, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise AlignkitError(f"{place}: '{column}' message {index + 1} must be an object with 'role' and 'content'")
        if message["role"] not in ROLES:
            raise AlignkitError(f"{place}: '{column}' message {index + 1} has role {message['role']!r}; use one of {', '.join(ROLES)}")
        if message["content"] is None:
            raise AlignkitError(f"{place}: '{column}' message {index + 1} content is null; fill it in or remove the row")
        if not isinstance(message["content"], str):
            raise AlignkitError(f"{place}: '{column}' message {index + 1} content must be a string, got {type(message['content']).__name__}")


def _check_value(row: dict, column: str, conversational: bool, place: str) -> None:
    if column not in row:
        raise AlignkitError(f"{place}: missing column '{column}' (columns: {', '.join(sorted(row))})")
    value = row[column]
    if value is None:
        raise AlignkitError(f"{place}: column '{column}' is null; fill it in or remove the row")
    if conversational:
        if not isinstance(value, list):
            raise AlignkitError(f"{place}: column '{column}' must be a list of messages like the rows before it, got {type(value).__name__}")
        _check_messages(value, place, column)
    elif not isinstance(value, str):
        raise AlignkitError(f"{place}: column '{column}' must be a string, got {type(value).__name__}")


def _as_bool(value, place: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if value is None:
        raise AlignkitError(f"{place}: column 'label' is null; set it to true or false, or remove the row")
    raise AlignkitError(f"{place}: column 'label' must be true or false, got {value!r}")


def _as_number(row: dict, column: str, place: str) -> None:
    if row.get(column) in (None, ""):
        row.pop(column, None)
        return
    try:
        row[column] = float(row[column])
    except (TypeError, ValueError):
        raise AlignkitError(f"{place}: column '{column}' must be a number, got {row[column]!r}") from None


def split_implicit_prompt(chosen, rejected):
    """(prompt, chosen, rejected) from two full texts or conversations, as TRL's `extract_prompt` splits them.

    The prompt is the longest common prefix (of characters, or of whole messages); a space just before the
    first difference goes to the completions (`"The sky is"`, `" blue."`), which is where a BPE tokenizer puts
    it. When one is a prefix of the other, the last shared character or message stays with the completions,
    so neither is left empty (as in TRL, where the loop runs out at the shorter one's last index).
    """
    shorter = min(len(chosen), len(rejected))
    cut = next((i for i in range(shorter) if chosen[i] != rejected[i]), None)
    if cut is None:
        cut = max(shorter - 1, 0)
    elif cut > 0 and chosen[cut - 1] == " ":  # only a string has " " elements
        cut -= 1
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _copy(row: dict) -> dict:
    """A copy to normalise; a `Row` stays a `Row` (its file, number and screening kept)."""
    if not isinstance(row, Row):
        return dict(row)
    copy = Row(row, row.source, row.number, row.line)
    copy.screening = row.screening
    return copy


def required_columns(row: dict, fmt: DataFormat) -> tuple[str, ...]:
    """The columns `row` must fill for `fmt` (a preference row's `prompt` only when it has one)."""
    if fmt.kind == "language_modeling":
        return ("messages",) if "messages" in row and (row["messages"] is not None or "text" not in row) else ("text",)
    if fmt.kind == "preference":
        return ("prompt", "chosen", "rejected") if "prompt" in row else ("chosen", "rejected")
    return _TEXT_COLUMNS[fmt.kind] + (("label",) if fmt.kind == "unpaired_preference" else ())


def validate_rows(rows: list[dict], fmt: DataFormat, source: str = "data") -> list[dict]:
    """Checks every row against `fmt`; returns normalised copies (implicit prompts split, labels as bool)."""
    out = []
    for number, original in enumerate(rows, start=1):
        row, place = _copy(original), where(original, source, number)
        if fmt.kind == "language_modeling":
            column = required_columns(row, fmt)[0]
            _check_value(row, column, column == "messages", place)
        else:
            columns = _TEXT_COLUMNS[fmt.kind]
            if fmt.kind == "preference" and "prompt" not in row:
                _check_value(row, "chosen", fmt.conversational, place)
                _check_value(row, "rejected", fmt.conversational, place)
                row["prompt"], row["chosen"], row["rejected"] = split_implicit_prompt(row["chosen"], row["rejected"])
                columns = ("chosen", "rejected")
            for column in columns:
                _check_value(row, column, fmt.conversational and not (column == "prompt" and isinstance(row.get(column), str)), place)
        if fmt.kind == "unpaired_preference":
            row["label"] = _as_bool(row.get("label"), place)
        for column in ("margin", "strength"):
            if column in row:
                _as_number(row, column, place)
        out.append(row)
    return out


@dataclass
class Screening:
    """What happened to one source's rows when read for training: the rows dropped for null values, by reason.

    `load_dataset` attaches it to every row it returns (`Row.screening`); the first report made from the
    rows (`TokenizeReport.finish`) counts the drops, so they reach the log and `summary.json` whatever
    split the rows went to, and `kept` adds up what each report kept.
    """

    source: str
    rows: int
    dropped: dict = field(default_factory=dict)  # reason -> 1-based row numbers
    taken: bool = False
    kept: int = 0

    def summary(self) -> str:
        return "; ".join(f"{reason}: {len(numbers)} (rows {', '.join(map(str, numbers[:5]))}{', ...' if len(numbers) > 5 else ''})"
                         for reason, numbers in self.dropped.items())


def screen_nulls(rows: list[dict], fmt: DataFormat, source: str) -> tuple[list[dict], Screening]:
    """Rows without a null in a column `fmt` needs, and the `Screening` of those left out.

    A source with no row left is refused, naming the first dropped row.
    """
    screening, kept, first = Screening(source, len(rows)), [], None
    for number, row in enumerate(rows, start=1):
        null = next((c for c in required_columns(row, fmt) if c in row and row[c] is None), None)
        if null is None:
            kept.append(row)
            continue
        reason = f"column '{null}' is null"
        screening.dropped.setdefault(reason, []).append(getattr(row, "number", number))
        first = first or f"{where(row, source, number).removeprefix(source + ' ')}: {reason}"
    if not kept:
        every = f"; all {len(rows)} rows are dropped ({screening.summary()})" if len(rows) > 1 else ""
        raise AlignkitError(f"no usable rows in {source}: {first}{every}; fill in the values or remove those rows")
    if screening.dropped:
        log.warning(f"{source}: {len(rows) - len(kept)} of {len(rows)} rows dropped: {screening.summary()}")
    return kept, screening


def require_kind(fmt: DataFormat, allowed: tuple[str, ...], source: str, stage: str, hint: str = "") -> None:
    if fmt.kind == "stepwise_supervision" and fmt.kind not in allowed:
        raise AlignkitError(f"{source} holds stepwise-supervision rows (prompt, completions, labels: one label per reasoning step, "
                            f"for process reward models), which no alignkit stage trains on; {stage} needs "
                            f"{' or '.join(k.replace('_', '-') for k in allowed)} data{hint}")
    if fmt.kind not in allowed:
        wanted = " or ".join(k.replace("_", "-") for k in allowed)
        raise AlignkitError(f"{source} is {fmt} data, but {stage} needs {wanted} data{hint}")


def load_dataset(source, allowed: tuple[str, ...], stage: str, split: str = "train", hint: str = "") -> tuple[list[dict], DataFormat]:
    """Loads, detects, checks the kind against what `stage` accepts, drops rows with null values (counted, see
    `Screening`) and validates every other row."""
    rows = load_rows(source, split)
    fmt = detect_format(rows, str(source))
    require_kind(fmt, allowed, str(source), stage, hint)
    rows, screening = screen_nulls(rows, fmt, str(source))
    rows = validate_rows(rows, fmt, str(source))
    for row in rows:
        if isinstance(row, Row):
            row.screening = screening
    return rows, fmt


def load_with_holdout(source, allowed: tuple[str, ...], stage: str, split: str = "train", eval_fraction: float = 0.0,
                      seed: int = 0, hint: str = "", eval_data: str = "", read=None) -> tuple[list[dict], DataFormat, list[dict], DataFormat]:
    """(train rows, their format, held-out rows, their format) for a stage, the held-out rows from, in order:

    1. `eval_data` (its `test` split where it has splits), when given;
    2. the source's own `test` split, when it has one besides `split` (a `save_to_disk` DatasetDict, a hub
       dataset, or a folder whose file names mark splits: `train.jsonl` / `test.jsonl`, `sft_train.jsonl` / ...);
    3. a seeded `eval_fraction` of the training rows (`split_holdout`).

    `read(source, allowed, stage, split, hint) -> (rows, fmt)` reads one split (default `load_dataset`; a recipe
    that converts rows, like KTO's `from_preference`, passes its own).
    """
    read = read or load_dataset
    rows, fmt = read(source, allowed, stage, split, hint)
    if eval_data:
        eval_rows, eval_fmt = read(eval_data, allowed, f"{stage} evaluation", HELD_OUT_SPLIT, hint)
    elif split != HELD_OUT_SPLIT and has_split(source, split) and has_split(source, HELD_OUT_SPLIT):
        eval_rows, eval_fmt = read(source, allowed, f"{stage} evaluation", HELD_OUT_SPLIT, hint)
    else:
        (rows, eval_rows), eval_fmt = split_holdout(rows, eval_fraction, seed), fmt
    return rows, fmt, eval_rows, eval_fmt


def preference_to_unpaired(rows: list[dict]) -> list[dict]:
    """Validated preference rows -> unpaired rows for KTO: each pair gives a desirable and an undesirable row.

    `(prompt, chosen, rejected, ...)` becomes `(prompt, completion=chosen, label=True, ...)`
    and `(prompt, completion=rejected, label=False, ...)`; other columns are kept on both.
    """
    out = []
    for row in rows:
        extra = {k: v for k, v in row.items() if k not in ("chosen", "rejected")}
        for completion, label in ((row["chosen"], True), (row["rejected"], False)):
            unpaired = _copy(row)  # keeps a Row's file, number and screening
            unpaired.clear()
            unpaired.update({**extra, "completion": completion, "label": label})
            out.append(unpaired)
    return out


def prompt_columns(rows: list[dict], index=None) -> dict[str, list]:
    """The prompt rows' other columns (what reward functions receive as keywords), one value per entry of `index`
    (row positions; a response's prompt), or per row."""
    index = range(len(rows)) if index is None else index
    names = sorted({k for row in rows for k in row} - {"prompt"})
    return {name: [rows[i].get(name) for i in index] for name in names}
