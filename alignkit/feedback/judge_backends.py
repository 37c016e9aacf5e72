"""Judge backends: the models that read a judge's A/B preference and write critiques and revisions.

Each backend has `name`, `first_slot_probs(conversations) -> (P(slot A is better), mass on A/B)`
and `generate(conversations, max_new_tokens) -> texts`; the workflows in `alignkit.feedback.judge`
use nothing else. They are a table (`BACKENDS`):

- `local` (`LocalJudge`): the embedded model or any Hugging Face model, through transformers;
  the preference is read from the next-token log-probs of "A" vs "B" after `ANSWER_PREFIX`.
- `http` (`HTTPJudge`): an OpenAI-compatible /v1/chat/completions endpoint, called through
  `alignkit.http.post_json` (a total deadline per call, retries on 429/5xx/connection errors).
"""

from __future__ import annotations

import logging
import math
import re

from alignkit.errors import AlignkitError
from alignkit.http import EndpointRefused, check_url, post_json
from alignkit.data.collate import pad_sequences
from alignkit.models.generation import generate_answers # heavy torch: see __init__
from alignkit.models.load import load_causal_lm, load_tokenizer

log = logging.getLogger(__name__)

# The local judge's answer starts here, so the next token is the verdict: with it, SmolLM2-135M puts
# ~99% of its probability on "A"/"B" (measured on hhh-mini), against ~17% when it answers freely.
ANSWER_PREFIX = "The better response is Response"


class LocalJudge:
    """A causal LM loaded through transformers (alias, directory or hub id)."""

    def __init__(self, model: str = "smollm2-135m-instruct", batch_size: int = 8, bf16: bool = True, dtype: str = "float32",
                 answer_prefix: str = ANSWER_PREFIX):
        # torch/transformers load only when a local judge is built: the HTTP judge and the workflows do without them

        self.name = model
        self.answer_prefix = answer_prefix
        self.tokenizer = load_tokenizer(model)
        self.model = load_causal_lm(model, dtype).eval()
        self.batch_size = batch_size
        from alignkit.models.precision import autocast_bf16

        self.bf16 = autocast_bf16(bf16, next(self.model.parameters()).device)  # bf16 only where it is native
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
        import torch  # heavy: imported only once a local judge runs (see __init__)


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
        return generate_answers(self.model, self.tokenizer, conversations, max_new_tokens=max_new_tokens,
                                batch_size=self.batch_size, bf16=self.bf16)


class HTTPJudge:
    """An OpenAI-compatible endpoint: POST {url}/v1/chat/completions.

    Reads the A/B preference from `logprobs.content[0].top_logprobs` when the server returns
    them; otherwise from the first A or B in the answer text (probability 1 or 0; 0.5 if neither).
    """

    def __init__(self, url: str, model: str = "default", api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.5):
        self.url = check_url(url, "judge endpoint").rstrip("/")
        if not self.url.endswith("/v1/chat/completions"):
            self.url += "/chat/completions" if self.url.endswith("/v1") else "/v1/chat/completions"
        self.name, self.model = url, model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout, self.retries, self.backoff = timeout, retries, backoff  # timeout: the deadline of one call
        self.logprobs = True  # switched off after a server refuses them
        self.unparsed = 0

    def _chat(self, messages: list[dict], max_tokens: int, logprobs: bool) -> dict:
        """The first choice of the endpoint's answer (a dict), or an error naming the endpoint."""
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        if logprobs:
            body.update(logprobs=True, top_logprobs=20)  # the most OpenAI and vLLM (--max-logprobs) return
        reply = post_json(self.url, body, deadline=self.timeout, retries=self.retries, backoff=self.backoff,
                          headers=self.headers, name="judge endpoint")
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise AlignkitError(f"judge endpoint {self.url} answered without choices: {str(reply)[:200]}; "
                                f"it must speak the OpenAI chat-completions format")
        return choices[0]

    def _first_slot_prob(self, messages: list[dict]) -> tuple[float, float]:
        if self.logprobs:
            try:
                return self._parse(self._chat(messages, 1, True))
            except EndpointRefused as exc:
                if exc.status != 400:
                    raise
                log.info("judge endpoint refused logprobs (%s); reading the answer text instead", exc.detail)
                self.logprobs = False
        return self._parse(self._chat(messages, 4, False))

    def _parse(self, choice: dict) -> tuple[float, float]:
        """(P(A), mass on A/B) from the top log-probs when present, else from the first A or B in the text."""
        try:
            from_logprobs = _logprob_preference(choice)
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
            raise AlignkitError(f"judge endpoint {self.url} answered log-probs in an unknown shape: "
                                f"{str(choice.get('logprobs'))[:200]}; it must speak the OpenAI chat-completions format") from None
        if from_logprobs is not None:
            return from_logprobs
        match = re.search(r"\b([AB])\b", _message_text(choice))
        if not match:
            self.unparsed += 1
            return 0.5, 0.0
        return (1.0 if match.group(1) == "A" else 0.0), 1.0

    def first_slot_probs(self, conversations: list[list[dict]]) -> tuple[list[float], list[float]]:
        pairs = [self._first_slot_prob(m) for m in conversations]
        return [p for p, _ in pairs], [m for _, m in pairs]

    def generate(self, conversations: list[list[dict]], max_new_tokens: int = 128) -> list[str]:
        return [_message_text(self._chat(messages, max_new_tokens, False)).strip() for messages in conversations]


def _logprob_preference(choice: dict) -> tuple[float, float] | None:
    """(P(A), mass on A/B) from `logprobs.content[0].top_logprobs`; None when they name neither letter."""
    content = (choice.get("logprobs") or {}).get("content") or []
    if not content:
        return None
    found: dict[str, float] = {}
    for item in content[0].get("top_logprobs") or [content[0]]:
        letter = str(item.get("token", "")).strip()
        if letter in ("A", "B"):
            logprob = float(item["logprob"])
            found[letter] = math.log(math.exp(found[letter]) + math.exp(logprob)) if letter in found else logprob
    if not found:
        return None
    l_a, l_b = found.get("A", -1e9), found.get("B", -1e9)
    return 1.0 / (1.0 + math.exp(l_b - l_a)), math.exp(l_a) + math.exp(l_b)


def _message_text(choice: dict) -> str:
    return str((choice.get("message") or {}).get("content") or "")


BACKENDS = {"local": LocalJudge, "http": HTTPJudge}


def make_judge(model: str = "smollm2-135m-instruct", endpoint: str | None = None, endpoint_model: str = "default", **kwargs):
    """A judge backend: `endpoint` picks the HTTP one (asking it for `endpoint_model`), otherwise `model` is loaded locally."""
    if endpoint:
        return BACKENDS["http"](endpoint, model=endpoint_model, **kwargs)
    return BACKENDS["local"](model, **kwargs)
