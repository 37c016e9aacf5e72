"""Turning rows into token ids and loss masks, through the tokenizer's chat template or as raw text.

Mask convention (as everywhere in alignkit): 1 = the token counts in the loss.

Which rows go through the chat template is the `chat_template` setting (`ModelArgs`),
carried by the tokenizer itself (`set_chat_template`, called by `models.load.load_tokenizer`;
saved with it in tokenizer_config.json, so a trained model remembers it), so every caller
that encodes with that tokenizer (training, generation, rollouts, reward-model scoring)
renders the same way:

- `auto` (the default, TRL's rule): conversational rows (lists of messages) go through
  the template; standard rows (strings) stay raw text, tokenized as TRL does: the prompt
  alone and prompt + completion + EOS (the EOS *string*, unless the completion already
  ends with it), each with the tokenizer's own special tokens (a BOS where the tokenizer
  adds one, so once, at the start); the completion is what follows the two sequences'
  common token prefix (`common_prefix_length`).
- `always`: standard rows too, as one user turn (the prompt) and one assistant turn.
- `never`: raw text only; conversational rows are refused.

`text` rows are raw text in every mode (their tokens plus EOS are learned).

Through the template, every row becomes one rendered string plus the character spans
the model should learn: the completion of a prompt-completion row, every assistant
turn of a multi-turn `messages` row. The end-of-turn token the template writes
(SmolLM2: `<|im_end|>`) sits inside the span, so the model learns to stop, and what the
template writes after it (ChatML's newline) is left out: a completion ends where
generation stops (TRL keeps that tail in its completion masks); a template that writes
no EOS gets the tokenizer's EOS appended. Spans are mapped to tokens with the fast
tokenizer's offsets, so the mask is exact whatever the template looks like, as long as
rendering a conversation's first turns gives a prefix of rendering all of it (checked,
with a clear error otherwise).

Too-long rows are truncated on the prompt side (`truncation_side`) or dropped
(`truncation_mode`); either way they are counted in a `TokenizeReport`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.data.formats import DataFormat
from alignkit.errors import AlignkitError


@dataclass
class TokenizeReport:
    """What happened to the rows: nothing is dropped or cut silently.

    `counts` holds how many rows each reason touched (dropped or truncated), `examples` the first few
    1-based row numbers (the row in its file when the rows came from `load_dataset`); `as_dict()` is
    what `summary.json` reports as `data`.
    """

    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    examples: dict = field(default_factory=dict)  # reason -> first few 1-based row numbers
    counts: dict = field(default_factory=dict)  # reason -> rows

    def note(self, reason: str, number: int) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(number)

    def drop(self, reason: str, number: int) -> None:
        self.dropped += 1
        self.note(reason, number)

    def finish(self, rows: list, kept: int, source: str = "data") -> None:
        """Sets `kept` once `rows` are tokenized, counts the rows their source lost when read (see `formats.Screening`;
        in the first report made from that source), and refuses rows of which none is usable.

        A held-out split whose every row was dropped is let through when the training rows of its file were not.
        """
        self.kept = kept
        screening = getattr(rows[0], "screening", None) if rows else None
        if screening is not None and not screening.taken:
            screening.taken = True
            for reason, numbers in screening.dropped.items():
                self.rows += len(numbers)
                for number in numbers:
                    self.drop(reason, number)
        if screening is not None:
            screening.kept += kept
        if rows and not kept and not (screening is not None and screening.kept):
            source = screening.source if screening is not None else source
            raise AlignkitError(f"no usable rows in {source}: every row read was dropped ({self.reasons()}); fix or remove those rows")

    def reasons(self) -> str:
        """`reason: rows 1, 2, 3; other reason: rows 4, ...` from `examples` (file rows, in order)."""
        parts = []
        for reason, rows in self.examples.items():
            more = f", ... ({self.counts[reason]} in all)" if self.counts.get(reason, 0) > len(rows) else ""
            parts.append(f"{reason}: rows {', '.join(map(str, sorted(set(rows))))}{more}")
        return "; ".join(parts)

    def summary(self, source: str = "data") -> str:
        text = f"{source}: {self.kept}/{self.rows} rows kept"
        if self.truncated:
            text += f", {self.truncated} truncated to max_length"
        if self.dropped:
            text += f", {self.dropped} dropped"
        return text + (f"; {self.reasons()}" if self.examples else "")

    def as_dict(self) -> dict:
        return {"rows": self.rows, "kept": self.kept, "truncated": self.truncated, "dropped": self.dropped, "reasons": dict(self.counts)}


def row_number(row: dict, position: int) -> int:
    """The row's 1-based number in its file when it knows it (`load.Row`), else its `position` in the list."""
    return getattr(row, "number", 0) or position


def is_empty(response) -> bool:
    """No text: an empty or blank string, or messages whose contents all are."""
    if isinstance(response, str):
        return not response.strip()
    return all(not str(m.get("content") or "").strip() for m in response)


def unpaired_problems(rows: list[dict]) -> dict[int, str]:
    """{1-based position: reason} of unpaired (KTO) rows that teach nothing: an empty completion, or a prompt and
    completion that also appear with the opposite label (what a pair with chosen identical to rejected becomes)."""
    keys = [json.dumps([row["prompt"], row["completion"]], sort_keys=True, default=str) for row in rows]
    labels: dict[str, set] = {}
    for key, row in zip(keys, rows):
        labels.setdefault(key, set()).add(bool(row["label"]))
    problems = {}
    for position, (key, row) in enumerate(zip(keys, rows), 1):
        if is_empty(row["completion"]):
            problems[position] = "empty completion"
        elif len(labels[key]) > 1:
            problems[position] = "same prompt and completion labelled both desirable and undesirable"
    return problems


def pair_problem(chosen, rejected) -> str | None:
    """Why a preference pair teaches nothing (its reason in a report), or None."""
    if chosen == rejected:
        return "chosen identical to rejected"
    if is_empty(chosen) or is_empty(rejected):
        return "empty chosen or rejected response"
    return None


def as_messages(value, role: str) -> list[dict]:
    """A standard string becomes one message of `role`; a message list passes through."""
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


# ---------------------------------------------------------------- the chat_template switch

CHAT_TEMPLATE_MODES = ("auto", "always", "never")
MODE_KEY = "alignkit_chat_template"  # where the tokenizer carries the mode (tokenizer_config.json once saved)


def read_chat_template(path: str) -> str:
    """The Jinja template in `path` (a file, or a folder holding chat_template.jinja), checked to compile."""
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # what transformers renders chat templates with

    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "chat_template.jinja"
    if not file.is_file():
        raise AlignkitError(f"chat_template_path: {path} does not exist{' (no chat_template.jinja in that folder)' if Path(path).is_dir() else ''}; "
                            f"point it to a Jinja chat template file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AlignkitError(f"chat_template_path: {file} byte {exc.start} is not UTF-8; save the template as UTF-8 text") from None
    if not text.strip():
        raise AlignkitError(f"chat_template_path: {file} is empty; it must hold a Jinja chat template")
    try:
        ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
    except TemplateSyntaxError as exc:
        raise AlignkitError(f"chat_template_path: {file} line {exc.lineno}: {exc.message}; fix the Jinja template") from None
    return text


def set_chat_template(tokenizer, mode: str = "auto", path: str = ""):
    """Gives `tokenizer` the `chat_template` mode (and the template in `path`, when given); returns it.

    Both are saved with the tokenizer (`save_pretrained`), so a model trained with them renders its prompts
    the same way wherever it is loaded next (evaluation, reward-model scoring, a later stage).
    """
    if mode not in CHAT_TEMPLATE_MODES:
        raise AlignkitError(f"chat_template must be one of {', '.join(CHAT_TEMPLATE_MODES)}; got {mode!r}")
    if path:
        tokenizer.chat_template = read_chat_template(path)
    tokenizer.init_kwargs[MODE_KEY] = mode
    return tokenizer


def chat_template_mode(tokenizer, mode=None) -> str:
    """The mode in force: `mode` when given (a mode name; True = the tokenizer's own, False = never, for the
    older `use_template` flag), else the tokenizer's (`set_chat_template`, or what it was saved with), else auto."""
    if isinstance(mode, str):
        return mode
    if mode is False:
        return "never"
    return (getattr(tokenizer, "init_kwargs", None) or {}).get(MODE_KEY, "auto")


def is_conversational(value) -> bool:
    return isinstance(value, list)


def uses_template(tokenizer, *values, mode=None) -> bool:
    """Whether a row made of `values` (its prompt, completions, ...) goes through the chat template.

    A row is conversational when any of them is a message list (a string prompt then becomes a user turn).
    """
    mode, conversational = chat_template_mode(tokenizer, mode), any(is_conversational(v) for v in values)
    if mode == "never":
        if conversational:
            raise AlignkitError("chat_template is never (raw text only), but these rows are conversational (lists of "
                                "messages), which only a chat template can render; set chat_template: auto")
        return False
    use = conversational or mode == "always"
    if use and not has_chat_template(tokenizer):
        why = "these rows are conversational (lists of messages)" if conversational else "chat_template is always"
        raise AlignkitError(f"{why}, but the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model') or 'this model'} has no chat "
                            f"template; set chat_template_path to a Jinja template file{'' if conversational else ', or chat_template: auto for raw text'}")
    return use


def common_prefix_length(ids: list[int], other: list[int]) -> int:
    """How many leading tokens `ids` and `other` share (TRL's `common_prefix_length`)."""
    n = 0
    for a, b in zip(ids, other):
        if a != b:
            break
        n += 1
    return n


def with_eos(tokenizer, completion: str) -> str:
    """`completion` ending in the EOS string, as TRL appends it to standard completions (not twice)."""
    eos = tokenizer.eos_token
    return completion + eos if eos and not completion.endswith(eos) else completion


def encode_raw(tokenizer, prompt: str, completions: list[str]) -> tuple[list[int], list[list[int]]]:
    """Standard rows as raw text, as TRL tokenizes them (DPO/KTO/SFT `tokenize_fn`): the prompt alone and each
    prompt + completion + EOS with the tokenizer's special tokens; the completions start where the first
    completion to diverge from the tokenized prompt does, so prompt + completion is always the full sequence."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full = [tokenizer(prompt + with_eos(tokenizer, c))["input_ids"] for c in completions]
    cut = min(common_prefix_length(prompt_ids, ids) for ids in full)
    return prompt_ids[:cut], [ids[cut:] for ids in full]


def render_prompt(tokenizer, prompt, chat_template=None) -> str:
    """The text a model continues to answer `prompt` (a string or message list), under the `chat_template` mode."""
    if uses_template(tokenizer, prompt, mode=chat_template):
        return _render(tokenizer, as_messages(prompt, "user"), generation_prompt=True)
    return prompt


def _render(tokenizer, messages, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _end_of_turn(text: str, start: int, end: int, eos: str | None) -> int:
    """The span end: just after the template's EOS inside the turn, trailing newlines excluded."""
    if eos:
        found = text.find(eos, start, end)
        if found != -1:
            return found + len(eos)
    return end


def render_with_spans(tokenizer, messages: list[dict], train_on: str = "assistant") -> tuple[str, list[tuple[int, int]], bool]:
    """(text, character spans to learn, whether the spans end in EOS) for a conversation.

    `train_on="last"` learns only the final assistant turn (prompt-completion rows).
    """
    eos = tokenizer.eos_token
    full = _render(tokenizer, messages)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "last":
        turns = turns[-1:]
    spans, ends_in_eos = [], True
    for i in turns:
        prefix = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[: i + 1])
        if not (full.startswith(upto) and upto.startswith(prefix)):
            raise AlignkitError(
                "the tokenizer's chat template renders earlier turns differently once later turns are added, "
                "so assistant-only loss masks cannot be derived; use prompt-completion rows or another template"
            )
        end = _end_of_turn(full, len(prefix), len(upto), eos)
        ends_in_eos = ends_in_eos and bool(eos) and full[:end].endswith(eos)
        spans.append((len(prefix), end))
    return full, spans, ends_in_eos


def row_to_text(tokenizer, row: dict, fmt: DataFormat) -> tuple[str, list[tuple[int, int]], bool]:
    """(text, spans, ends_in_eos) of an SFT row that goes through the chat template (a `messages` row, or a
    prompt-completion row `uses_template` sends there)."""
    if fmt.kind == "language_modeling":
        messages = row["messages"]
        if not any(m["role"] == "assistant" for m in messages):
            return "", [], False
        return render_with_spans(tokenizer, messages, "assistant")
    messages = as_messages(row.get("prompt") or [], "user") + as_messages(row["completion"], "assistant")
    return render_with_spans(tokenizer, messages, "last")


def raw_sft_row(tokenizer, row: dict, fmt: DataFormat) -> tuple[list[int], list[int]]:
    """(ids, mask) of an SFT row kept as raw text, as TRL's SFT tokenizes it: a `text` row (+ EOS) is learned
    whole; a standard prompt-completion row learns the completion + EOS (`encode_raw`)."""
    if fmt.kind == "language_modeling":
        ids = tokenizer(with_eos(tokenizer, row["text"]))["input_ids"]
        return ids, [1] * len(ids)
    prompt_ids, (completion_ids,) = encode_raw(tokenizer, row.get("prompt") or "", [row["completion"]])
    return prompt_ids + completion_ids, [0] * len(prompt_ids) + [1] * len(completion_ids)


def _is_templated(tokenizer, row: dict, fmt: DataFormat, mode=None) -> bool:
    if fmt.kind == "language_modeling":
        return "text" not in row and uses_template(tokenizer, row["messages"], mode=mode)
    return uses_template(tokenizer, row.get("prompt") or "", row["completion"], mode=mode)


def spans_to_mask(offsets, spans) -> list[int]:
    """1 for tokens whose first character falls inside a span."""
    mask = []
    for start, end in offsets:
        inside = any(s <= start < e for s, e in spans) if end > start else False
        mask.append(int(inside))
    return mask


def truncate(ids: list[int], mask: list[int], max_length: int, side: str) -> tuple[list[int], list[int]]:
    """Cuts to `max_length`, taking the prompt (tokens before the first learned one) first.

    side="left" cuts the prompt's start (keeps the text nearest the answer); side="right"
    cuts the prompt's end. Only when the prompt is gone does the completion's end go.
    """
    excess = len(ids) - max_length
    first = mask.index(1) if 1 in mask else len(mask)
    cut = min(excess, first)
    if cut > 0 and side == "left":
        ids, mask = ids[cut:], mask[cut:]
    elif cut > 0:
        ids, mask = ids[: first - cut] + ids[first:], mask[: first - cut] + mask[first:]
    return ids[:max_length], mask[:max_length]


def _empty_answer(row: dict, fmt: DataFormat) -> str | None:
    """Why an SFT row has nothing to learn although it has an answer column, or None."""
    if fmt.kind == "language_modeling" and "text" in row and "messages" not in row:
        return "empty text" if is_empty(row["text"]) else None
    if fmt.kind == "language_modeling":
        answers = [m for m in row["messages"] if m["role"] == "assistant"]
        return "empty assistant turns" if answers and is_empty(answers) else None
    completion = row["completion"]
    answers = completion if isinstance(completion, str) else [m for m in completion if m["role"] == "assistant"] or completion
    return "empty completion" if is_empty(answers) else None


def _templated_sft_rows(tokenizer, rows: list[dict], fmt: DataFormat) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) of rows that go through the chat template, tokenized in one batch (spans -> mask by offsets)."""
    rendered = [row_to_text(tokenizer, row, fmt) for row in rows]
    encoded = tokenizer([text for text, _, _ in rendered], add_special_tokens=False, return_offsets_mapping=True) if rendered else {}
    out = []
    for (_, spans, ends_in_eos), ids, offsets in zip(rendered, encoded.get("input_ids", []), encoded.get("offset_mapping", [])):
        mask = spans_to_mask(offsets, spans)
        if not ends_in_eos and tokenizer.eos_token_id is not None and spans:
            ids, mask = ids + [tokenizer.eos_token_id], mask + [1]
        out.append((list(ids), mask))
    return out


def tokenize_sft(rows: list[dict], fmt: DataFormat, tokenizer, max_length: int, truncation_side: str = "left",
                 truncation_mode: str = "truncate", chat_template=None) -> tuple[list[dict], TokenizeReport]:
    """SFT examples `{"input_ids", "loss_mask"}` and the report of what was cut or dropped.

    `chat_template` overrides the tokenizer's mode (see the module docstring).
    """
    report = TokenizeReport(rows=len(rows))
    usable = []
    for position, row in enumerate(rows, 1):
        empty = _empty_answer(row, fmt)
        if empty:
            report.drop(empty, row_number(row, position))
        else:
            usable.append((row_number(row, position), row))
    templated = [_is_templated(tokenizer, row, fmt, chat_template) for _, row in usable]
    through_template = iter(_templated_sft_rows(tokenizer, [row for (_, row), t in zip(usable, templated) if t], fmt))
    examples = []
    for (number, row), template in zip(usable, templated):
        ids, mask = next(through_template) if template else raw_sft_row(tokenizer, row, fmt)
        if mask:
            mask[0] = 0  # the first token has no predecessor to predict it from
        if not any(mask):
            report.drop("nothing to learn (no assistant turn)", number)
            continue
        if len(ids) > max_length:
            if truncation_mode == "drop":
                report.drop(f"longer than max_length={max_length}", number)
                continue
            ids, mask = truncate(ids, mask, max_length, truncation_side)
            report.truncated += 1
            report.note(f"truncated to max_length={max_length}", number)
            if not any(mask):
                report.drop("nothing left to learn after truncation", number)
                continue
        examples.append({"input_ids": list(ids), "loss_mask": mask})
    report.finish(rows, len(examples))
    return examples, report


def _template_prompt_ids(tokenizer, prompt) -> list[int]:
    return tokenizer(_render(tokenizer, as_messages(prompt, "user"), generation_prompt=True), add_special_tokens=False)["input_ids"]


def encode_prompt(tokenizer, prompt, chat_template=None) -> list[int]:
    """The ids a model continues to answer `prompt`: through the chat template (no special tokens added: the
    template writes them) or, as raw text, the prompt with the tokenizer's special tokens (a BOS where it adds one)."""
    if uses_template(tokenizer, prompt, mode=chat_template):
        return _template_prompt_ids(tokenizer, prompt)
    return tokenizer(prompt)["input_ids"]


def encode_completions(tokenizer, prompt, completions: list, chat_template=None) -> tuple[list[int], list[list[int]]]:
    """Prompt ids and, for each completion, its ids (ending in EOS) as continued after that prompt.

    The prompt ids are those the model sees at generation time (`encode_prompt`), so a log-prob computed
    here is the log-prob of sampling that completion. A row is rendered one way whole: through the chat
    template when `uses_template` says so for its prompt and completions together, else as raw text
    (`encode_raw`, TRL's tokenization). `chat_template` overrides the tokenizer's mode.
    """
    if not uses_template(tokenizer, prompt, *completions, mode=chat_template):
        return encode_raw(tokenizer, prompt, completions)
    prompt_ids = _template_prompt_ids(tokenizer, prompt)
    out = []
    for completion in completions:
        row = {"prompt": prompt, "completion": completion}
        text, spans, ends_in_eos = row_to_text(tokenizer, row, DataFormat("prompt_completion", True))
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, mask = enc["input_ids"], spans_to_mask(enc["offset_mapping"], spans)
        end = len(mask) - mask[::-1].index(1) if 1 in mask else len(ids)  # drop what the template adds after EOS
        # normally the prompt's own ids are a prefix; if a token straddles the boundary, split where the span starts
        start = len(prompt_ids) if ids[: len(prompt_ids)] == prompt_ids else (mask.index(1) if 1 in mask else end)
        completion_ids = ids[start:end]
        if not ends_in_eos and tokenizer.eos_token_id is not None:
            completion_ids = completion_ids + [tokenizer.eos_token_id]
        out.append(completion_ids)
    return prompt_ids, out


def fit_prompt_completions(prompt_ids: list[int], completions: list[list[int]], max_length: int, side: str) -> tuple[list[int], list[list[int]], bool]:
    """Shortens the prompt (then, if needed, the completions) so each prompt+completion fits; returns (prompt, completions, truncated)."""
    longest = max(len(c) for c in completions)
    if len(prompt_ids) + longest <= max_length:
        return prompt_ids, completions, False
    room = max(max_length - longest, min(len(prompt_ids), max_length // 2))
    prompt_ids = prompt_ids[len(prompt_ids) - room:] if side == "left" else prompt_ids[:room]
    completions = [c[: max_length - len(prompt_ids)] for c in completions]
    return prompt_ids, completions, True


def fit_or_drop(prompt_ids: list[int], completions: list[list[int]], max_length: int, side: str, mode: str,
                report: TokenizeReport, number: int) -> tuple[list[int], list[list[int]]] | None:
    """`fit_prompt_completions` under `truncation_mode`: the fitted row, or None when `mode` is drop and it was too long;
    either case is counted in `report` against row `number`."""
    prompt_ids, completions, truncated = fit_prompt_completions(prompt_ids, completions, max_length, side)
    if truncated and mode == "drop":
        report.drop(f"longer than max_length={max_length}", number)
        return None
    if truncated:
        report.truncated += 1
        report.note(f"truncated to max_length={max_length}", number)
    return prompt_ids, completions
