"""Dataset formats: detection and validation of the ecosystem's column conventions.

| kind                | columns                                              | used by            |
|---------------------|------------------------------------------------------|--------------------|
| language_modeling   | `text` or `messages`                                 | SFT                |
| prompt_completion   | `prompt`, `completion`                               | SFT                |
| prompt_only         | `prompt`                                             | PPO, GRPO, eval    |
| preference          | `prompt`, `chosen`, `rejected` (prompt optional)     | reward, DPO, IPO   |
| unpaired_preference | `prompt`, `completion`, `label`                      | KTO                |

A row is *standard* (strings) or *conversational* (lists of {"role", "content"}
messages). Preference rows without `prompt` have an implicit prompt: the messages
(or text) that chosen and rejected share at the start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from alignkit.errors import AlignkitError
from alignkit.data.load import load_rows

ROLES = ("system", "user", "assistant", "tool")
KINDS = ("language_modeling", "prompt_completion", "prompt_only", "preference", "unpaired_preference")
PROMPT_KINDS = ("prompt_only", "prompt_completion", "preference", "unpaired_preference")  # kinds with a `prompt` column
ANSWER_COLUMNS = ("completion", "chosen", "rejected", "label")  # the answers those kinds carry beside the prompt
_TEXT_COLUMNS = {
    "language_modeling": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "prompt_only": ("prompt",),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired_preference": ("prompt", "completion"),
}
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
    """The format of `rows`, judged from the first row; `validate_rows` checks the rest."""
    first = rows[0]
    kind = detect_kind(first)
    if kind is None:
        raise AlignkitError(
            f"{source} row 1: columns {sorted(first)} fit no known format; expected text/messages, "
            f"prompt+completion, prompt, prompt+chosen+rejected or prompt+completion+label"
        )
    probe = first.get("messages", first.get("chosen", first.get("completion", first.get("prompt"))))
    return DataFormat(kind, isinstance(probe, list))


def _check_messages(value, source: str, number: int, column: str) -> None:
    if not value:
        raise AlignkitError(f"{source} row {number}: column '{column}' is an empty message list")
    for index, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise AlignkitError(f"{source} row {number}: '{column}' message {index + 1} must be an object with 'role' and 'content'")
        if message["role"] not in ROLES:
            raise AlignkitError(f"{source} row {number}: '{column}' message {index + 1} has role {message['role']!r}; use one of {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise AlignkitError(f"{source} row {number}: '{column}' message {index + 1} content must be a string")


def _check_value(row: dict, column: str, conversational: bool, source: str, number: int) -> None:
    if column not in row or row[column] is None:
        raise AlignkitError(f"{source} row {number}: missing column '{column}' (columns: {', '.join(sorted(row))})")
    value = row[column]
    if conversational:
        if not isinstance(value, list):
            raise AlignkitError(f"{source} row {number}: column '{column}' must be a list of messages like the rows before it, got {type(value).__name__}")
        _check_messages(value, source, number, column)
    elif not isinstance(value, str):
        raise AlignkitError(f"{source} row {number}: column '{column}' must be a string, got {type(value).__name__}")


def _as_bool(value, source: str, number: int) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise AlignkitError(f"{source} row {number}: column 'label' must be true or false, got {value!r}")


def _as_number(row: dict, column: str, source: str, number: int) -> None:
    if row.get(column) in (None, ""):
        row.pop(column, None)
        return
    try:
        row[column] = float(row[column])
    except (TypeError, ValueError):
        raise AlignkitError(f"{source} row {number}: column '{column}' must be a number, got {row[column]!r}") from None


def split_implicit_prompt(chosen, rejected):
    """(prompt, chosen, rejected) from two full texts or conversations that share a prefix."""
    if isinstance(chosen, list):
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        return chosen[:shared], chosen[shared:], rejected[shared:]
    shared = len(os.path.commonprefix([chosen, rejected]))
    cut = max(chosen.rfind(" ", 0, shared), chosen.rfind("\n", 0, shared)) + 1 if shared < len(chosen) else shared
    return chosen[:cut], chosen[cut:], rejected[cut:]


def validate_rows(rows: list[dict], fmt: DataFormat, source: str = "data") -> list[dict]:
    """Checks every row against `fmt`; returns normalised copies (implicit prompts split, labels as bool)."""
    out = []
    for number, original in enumerate(rows, start=1):
        row = dict(original)
        if fmt.kind == "language_modeling":
            column = "messages" if "messages" in row else "text"
            _check_value(row, column, column == "messages", source, number)
        else:
            columns = _TEXT_COLUMNS[fmt.kind]
            if fmt.kind == "preference" and "prompt" not in row:
                _check_value(row, "chosen", fmt.conversational, source, number)
                _check_value(row, "rejected", fmt.conversational, source, number)
                row["prompt"], row["chosen"], row["rejected"] = split_implicit_prompt(row["chosen"], row["rejected"])
                columns = ("chosen", "rejected")
            for column in columns:
                _check_value(row, column, fmt.conversational and not (column == "prompt" and isinstance(row.get(column), str)), source, number)
        if fmt.kind == "unpaired_preference":
            row["label"] = _as_bool(row.get("label"), source, number)
        for column in ("margin", "strength"):
            if column in row:
                _as_number(row, column, source, number)
        out.append(row)
    return out


def require_kind(fmt: DataFormat, allowed: tuple[str, ...], source: str, stage: str, hint: str = "") -> None:
    if fmt.kind not in allowed:
        wanted = " or ".join(k.replace("_", "-") for k in allowed)
        raise AlignkitError(f"{source} is {fmt} data, but {stage} needs {wanted} data{hint}")


def load_dataset(source, allowed: tuple[str, ...], stage: str, split: str = "train", hint: str = "") -> tuple[list[dict], DataFormat]:
    """Loads, detects, checks the kind against what `stage` accepts, and validates every row."""
    rows = load_rows(source, split)
    fmt = detect_format(rows, str(source))
    require_kind(fmt, allowed, str(source), stage, hint)
    return validate_rows(rows, fmt, str(source)), fmt


def preference_to_unpaired(rows: list[dict]) -> list[dict]:
    """Validated preference rows -> unpaired rows for KTO: each pair gives a desirable and an undesirable row.

    `(prompt, chosen, rejected, ...)` becomes `(prompt, completion=chosen, label=True, ...)`
    and `(prompt, completion=rejected, label=False, ...)`; other columns are kept on both.
    """
    out = []
    for row in rows:
        extra = {k: v for k, v in row.items() if k not in ("chosen", "rejected")}
        out.append({**extra, "completion": row["chosen"], "label": True})
        out.append({**extra, "completion": row["rejected"], "label": False})
    return out


def prompt_columns(rows: list[dict], index=None) -> dict[str, list]:
    """The prompt rows' other columns (what reward functions receive as keywords), one value per entry of `index`
    (row positions; a response's prompt), or per row."""
    index = range(len(rows)) if index is None else index
    names = sorted({k for row in rows for k in row} - {"prompt"})
    return {name: [rows[i].get(name) for i in index] for name in names}
