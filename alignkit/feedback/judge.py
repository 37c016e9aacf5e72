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

Backends are a table (`BACKENDS`): `local` (the embedded model or any Hugging Face model,
through transformers) and `http` (an OpenAI-compatible /v1/chat/completions endpoint).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from alignkit.errors import AlignkitError

log = logging.getLogger(__name__)

DEFAULT_CONSTITUTION = Path(__file__).resolve().parents[2] / "configs" / "constitution.md"

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


# The local judge's answer starts here, so the next token is the verdict: with it, SmolLM2-135M puts
# ~99% of its probability on "A"/"B" (measured on hhh-mini), against ~17% when it answers freely.
ANSWER_PREFIX = "The better response is Response"


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


def _as_text(value) -> str:
    from alignkit.feedback.quality import as_text

    return as_text(value)


def compare_messages(constitution: str, prompt, a: str, b: str) -> list[dict]:
    return [{"role": "system", "content": constitution},
            {"role": "user", "content": COMPARE_TEMPLATE.format(prompt=_as_text(prompt), a=a, b=b)}]


# ---------------------------------------------------------------- backends


class LocalJudge:
    """A causal LM loaded through transformers (alias, directory or hub id)."""

    def __init__(self, model: str = "smollm2-135m-instruct", batch_size: int = 8, bf16: bool = True, dtype: str = "float32",
                 answer_prefix: str = ANSWER_PREFIX):
        from alignkit.models.load import load_causal_lm, load_tokenizer

        self.name = model
        self.answer_prefix = answer_prefix
        self.tokenizer = load_tokenizer(model)
        self.model = load_causal_lm(model, dtype).eval()
        self.batch_size = batch_size
        self.bf16 = bf16
        self.answer_ids = {letter: self._letter_ids(letter) for letter in "AB"}

    def _letter_ids(self, letter: str) -> list[int]:
        ids = set()
        for variant in (letter, " " + letter):
            encoded = self.tokenizer.encode(variant, add_special_tokens=False)
            if len(encoded) == 1:
                ids.add(encoded[0])
        if not ids:
            raise AlignkitError(f"judge model {self.name}: its tokenizer has no single token for '{letter}'; use another judge model")
        return sorted(ids)

    def _render(self, messages: list[dict]) -> list[int]:
        """The chat, then the start of the judge's answer, so the next token is the verdict letter."""
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n\n".join(m["content"] for m in messages) + "\n\n"
        return self.tokenizer(text + self.answer_prefix, add_special_tokens=False)["input_ids"]

    def first_slot_probs(self, conversations: list[list[dict]]) -> tuple[list[float], list[float]]:
        """P(A) per conversation (A vs B renormalised) and the mass the judge put on A or B at all."""
        import torch

        from alignkit.data.collate import pad_sequences

        encoded = [self._render(m) for m in conversations]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        probs, mass = [0.0] * len(encoded), [0.0] * len(encoded)
        device = next(self.model.parameters()).device
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            ids = pad_sequences([encoded[i] for i in idx], self.tokenizer.pad_token_id, side="left").to(device)  # (B, T)
            attention = pad_sequences([[1] * len(encoded[i]) for i in idx], 0, side="left").to(device)  # (B, T)
            positions = (attention.cumsum(-1) - 1).clamp(min=0)  # (B, T): left padding must not shift positions
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(input_ids=ids, attention_mask=attention, position_ids=positions, logits_to_keep=1).logits[:, -1]  # (B, V)
            logps = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
            l_a = torch.logsumexp(logps[:, self.answer_ids["A"]], dim=-1)  # (B,)
            l_b = torch.logsumexp(logps[:, self.answer_ids["B"]], dim=-1)  # (B,)
            p_a = torch.sigmoid(l_a - l_b)
            total = torch.exp(torch.logaddexp(l_a, l_b))
            for row, i in enumerate(idx):
                probs[i], mass[i] = float(p_a[row]), float(total[row])
        return probs, mass

    def generate(self, conversations: list[list[dict]], max_new_tokens: int = 128) -> list[str]:
        from alignkit.models.generation import generate_answers

        return generate_answers(self.model, self.tokenizer, conversations, max_new_tokens=max_new_tokens,
                                batch_size=self.batch_size, bf16=self.bf16)


class HTTPJudge:
    """An OpenAI-compatible endpoint: POST {url}/v1/chat/completions.

    Reads the A/B preference from `logprobs.content[0].top_logprobs` when the server returns
    them; otherwise from the first A or B in the answer text (probability 1 or 0; 0.5 if neither).
    """

    def __init__(self, url: str, model: str = "default", api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.5):
        self.url = url.rstrip("/")
        if not self.url.endswith("/v1/chat/completions"):
            self.url += "/chat/completions" if self.url.endswith("/v1") else "/v1/chat/completions"
        self.name, self.model, self.api_key = url, model, api_key
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.logprobs = True  # switched off after a server refuses them
        self.unparsed = 0

    def _post(self, body: dict) -> dict:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:200]
                if exc.code in (429, 500, 502, 503, 504):
                    last = f"HTTP {exc.code}: {detail}"
                    continue
                raise _HTTPRefused(exc.code, detail) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as exc:
                last = str(getattr(exc, "reason", exc))
        raise AlignkitError(f"judge endpoint {self.url} did not answer after {self.retries + 1} tries ({last}); "
                            f"check that the server is running and --endpoint is right")

    def _chat(self, messages: list[dict], max_tokens: int, logprobs: bool) -> dict:
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        if logprobs:
            body.update(logprobs=True, top_logprobs=10)
        return self._post(body)

    def _first_slot_prob(self, messages: list[dict]) -> tuple[float, float]:
        reply = None
        if self.logprobs:
            try:
                reply = self._chat(messages, 1, True)
            except _HTTPRefused as exc:
                if exc.code != 400:
                    raise AlignkitError(f"judge endpoint {self.url} refused the request (HTTP {exc.code}: {exc.detail})") from None
                log.info("judge endpoint refused logprobs (%s); reading the answer text instead", exc.detail)
                self.logprobs = False
        if reply is None:
            try:
                reply = self._chat(messages, 4, False)
            except _HTTPRefused as exc:
                raise AlignkitError(f"judge endpoint {self.url} refused the request (HTTP {exc.code}: {exc.detail})") from None
        return self._parse(reply)

    def _parse(self, reply: dict) -> tuple[float, float]:
        import math

        try:
            choice = reply["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise AlignkitError(f"judge endpoint {self.url} answered without choices: {str(reply)[:200]}") from None
        content = ((choice.get("logprobs") or {}).get("content") or [])
        if content:
            found: dict[str, float] = {}
            for item in content[0].get("top_logprobs") or [content[0]]:
                letter = str(item.get("token", "")).strip()
                if letter in ("A", "B"):
                    found[letter] = math.log(math.exp(found[letter]) + math.exp(item["logprob"])) if letter in found else item["logprob"]
            if found:
                l_a, l_b = found.get("A", -1e9), found.get("B", -1e9)
                return 1.0 / (1.0 + math.exp(l_b - l_a)), math.exp(l_a) + math.exp(l_b)
        text = str((choice.get("message") or {}).get("content") or "")
        match = re.search(r"\b([AB])\b", text)
        if not match:
            self.unparsed += 1
            return 0.5, 0.0
        return (1.0 if match.group(1) == "A" else 0.0), 1.0

    def first_slot_probs(self, conversations: list[list[dict]]) -> tuple[list[float], list[float]]:
        pairs = [self._first_slot_prob(m) for m in conversations]
        return [p for p, _ in pairs], [m for _, m in pairs]

    def generate(self, conversations: list[list[dict]], max_new_tokens: int = 128) -> list[str]:
        out = []
        for messages in conversations:
            try:
                reply = self._chat(messages, max_new_tokens, False)
            except _HTTPRefused as exc:
                raise AlignkitError(f"judge endpoint {self.url} refused the request (HTTP {exc.code}: {exc.detail})") from None
            out.append(str(((reply.get("choices") or [{}])[0].get("message") or {}).get("content") or "").strip())
        return out


class _HTTPRefused(Exception):
    def __init__(self, code: int, detail: str):
        super().__init__(code, detail)
        self.code, self.detail = code, detail


BACKENDS = {"local": LocalJudge, "http": HTTPJudge}


def make_judge(model: str = "smollm2-135m-instruct", endpoint: str | None = None, **kwargs):
    """A judge backend: `endpoint` picks the HTTP one, otherwise `model` is loaded locally."""
    if endpoint:
        return BACKENDS["http"](endpoint, **kwargs)
    return BACKENDS["local"](model, **kwargs)


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
        from alignkit.data.formats import detect_format, validate_rows

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
