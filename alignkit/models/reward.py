"""Reward models: a causal-LM backbone with a scalar head, built for training, saved, loaded and scored.

A saved reward model is a plain Hugging Face sequence-classification directory
(num_labels=1), so `AutoModelForSequenceClassification.from_pretrained(dir)` gives
the same scores alignkit does. Three details make that true:

- Where the score is read. Transformers reads the score at the rightmost token that
  is not `config.pad_token_id`. Many chat models pad with their end-of-turn token
  (SmolLM2 pads with `<|im_end|>`, which also ends every response), so transformers
  would score the token *before* the end of the response, and a batch-of-one would
  score a different token than a padded batch. A reward model therefore gets a pad
  token distinct from EOS (the tokenizer's own, else its unknown token, else a new
  `<|pad|>`), saved in both the tokenizer and config.json; the score is then read at
  the response's final EOS.
- What text is scored: the prompt through the chat template with the generation
  prompt, then the response, then EOS (`encode_completions`, exactly as in training).
  In plain transformers:
      text = tok.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=False) + response + tok.eos_token
      scores = model(**tok(texts, padding=True, add_special_tokens=False, return_tensors="pt")).logits[:, 0]
- Padding is on the right (saved as the tokenizer's padding side).
In float32 the scores are then equal to plain transformers' logits (a test checks it).
Under bf16 autocast alignkit still applies the one-row head in float32, so its scores
keep full precision where a bf16 head would round them to 8 mantissa bits.

The reward statistics over the training responses sit in config.json under
`alignkit_reward` ({"mean", "std", "responses", "max_length", "truncation_side"}),
for downstream normalisation; scoring truncates to the same max_length as training.

An ensemble directory holds `ensemble.json` and `member-0/ ... member-{K-1}/`, each a
plain reward-model directory. Bradley-Terry fixes rewards only up to a constant, so
members' offsets are arbitrary and would inflate the ensemble's std; scoring shifts
each member by its own training mean onto the members' average mean (scale is kept:
BT identifies it from the data), so the std measures disagreement about how good a
response is, not about where zero is.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignkit.models.precision import autocast_bf16
from alignkit.errors import AlignkitError
from alignkit.models.load import (
    DTYPES, adapter_base, add_lora, check_model_files, check_safe_weights, is_adapter_dir, load_causal_lm, load_tokenizer, read_json_config,
    resolve_model_path,
)
from alignkit.models.logprobs import final_hidden_states, shared_prompt_hidden_states
from alignkit.models.sampling import position_ids_from_mask
from alignkit.models.sequences import collate_sequences
from alignkit.models.wrapping import disable_dropout, unwrap
from alignkit.data.collate import pad_sequences
from alignkit.data.tokenize import encode_completions, fit_prompt_completions

CONFIG_KEY = "alignkit_reward"
ENSEMBLE_FILE = "ensemble.json"
NEW_PAD_TOKEN = "<|pad|>"


# ---------------------------------------------------------------- building a reward model for training

def _is_reward_checkpoint(path: str) -> bool:
    """True when `path` already holds a sequence-classification model (its trained head is kept)."""
    config = Path(path, "config.json")
    if not config.is_file():
        return False
    architectures = read_json_config(config).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in architectures)


@contextlib.contextmanager
def _quiet_loading():
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)


def set_reward_pad_token(tokenizer, model=None) -> None:
    """Gives the tokenizer (and model config) a pad token that is not EOS, padding on the right; see the module doc."""
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": NEW_PAD_TOKEN})
            if model is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tokenizer))
    tokenizer.padding_side = "right"
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


def load_reward_backbone(args):
    """A sequence classifier (num_labels=1) and tokenizer from `ModelArgs` fields, for training.

    From a causal LM (usually the SFT model) the scalar head is new, initialised
    N(0, 1/(H+1)) (Stiennon et al. 2020, arXiv:2009.01325, p. 11, as TRL's and
    open-instruct's reward scripts do), so first rewards are small. Dropout in the
    backbone is switched off (as TRL's `disable_dropout`): it would make r_chosen and
    r_rejected noisy in different ways. With LoRA the head is in `modules_to_save`, so
    it trains in full (`lora_dropout` still applies to the adapters).
    """
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(args.model, args.trust_remote_code, args.chat_template, args.chat_template_path)
    with _quiet_loading():  # "score.weight newly initialised" is the point, not a problem
        model = load_causal_lm(args.model, args.dtype, args.trust_remote_code, model_class=AutoModelForSequenceClassification, num_labels=1)
    base = unwrap(model)
    if not hasattr(base, "score"):
        raise AlignkitError(f"{args.model}: {type(base).__name__} has no `score` head; reward models need a decoder with a sequence-classification class (Llama, Qwen, Mistral, ...)")
    head_path = resolve_model_path(adapter_base(path)) if is_adapter_dir(path) else path
    if not _is_reward_checkpoint(head_path):
        hidden = base.score.weight.shape[1]
        with torch.no_grad():
            base.score.weight.normal_(0.0, 1 / math.sqrt(hidden + 1))
    set_reward_pad_token(tokenizer, base)
    disable_dropout(base)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if args.lora_r > 0 and not hasattr(model, "peft_config"):
        model = add_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, args.target_modules,
                         task_type="SEQ_CLS", modules_to_save=["score"])
    return model, tokenizer


# ---------------------------------------------------------------- the scalar head

def score_head(model, hidden: torch.Tensor) -> torch.Tensor:
    """The scalar head on final hidden states (N, H) -> (N,), in float32 even under bf16 autocast.

    The head is one dot product per response, so full precision costs nothing, and a
    bf16 reward (8 bits of mantissa: steps of 1/32 at |r| ~ 5) would blur close responses.
    """
    head = unwrap(model).score
    with torch.autocast(hidden.device.type, enabled=False):
        return head(hidden.float()).squeeze(-1)


def scoring_batches(rows: list[tuple[tuple, tuple]], batch_size: int) -> list[tuple[list[int], list[tuple]]]:
    """(indices into `rows`, the rows to score) per batch, in the layout that computes fewer positions.

    Shared: a prompt's responses side by side, its prompt computed once (`split_rows`); a batch costs its distinct
    prompts times the widest prompt plus its responses times the widest response. That pays where a prompt has
    several responses of similar length (every model's answer to one eval prompt), and not for a pair of a short
    chosen and a long rejected answer, where the short one pads to the long one. Otherwise whole sequences, sorted
    by length and right-padded: the prompt is left empty and the sequence is the response.
    """
    longest: dict[tuple, int] = {}  # a prompt's responses pad to its longest: prompts are ordered by it
    for prompt, response in rows:
        longest[prompt] = max(longest.get(prompt, 0), len(response))
    grouped = sorted(range(len(rows)), key=lambda i: (longest[rows[i][0]], len(rows[i][0]), rows[i][0], len(rows[i][1])), reverse=True)
    by_length = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]) - len(rows[i][1]))
    shared = [(chunk, [rows[i] for i in chunk]) for chunk in (grouped[s:s + batch_size] for s in range(0, len(rows), batch_size))]
    whole = [(chunk, [((), rows[i][0] + rows[i][1]) for i in chunk]) for chunk in (by_length[s:s + batch_size] for s in range(0, len(rows), batch_size))]
    return shared if sum(_positions(b) for _, b in shared) < sum(_positions(b) for _, b in whole) else whole


def _positions(batch: list[tuple]) -> int:
    """Positions a `split_rows` batch computes: each distinct prompt once at the widest prompt, each response at the widest response."""
    return len({p for p, _ in batch}) * max(len(p) for p, _ in batch) + len(batch) * max(len(r) for _, r in batch)


def split_rows(rows: list[tuple], pad_id: int) -> dict[str, torch.Tensor]:
    """(prompt ids, response ids) rows as left-padded prompts, then right-padded responses: input_ids, attention_mask,
    prompt_mask and position_ids (B, T), and last (B,), each response's final token."""
    prompt_width, response_width = max(len(p) for p, _ in rows), max(len(c) for _, c in rows)
    ids, mask, prompt_mask = [], [], []
    for p, c in rows:
        left, right = prompt_width - len(p), response_width - len(c)
        ids.append([pad_id] * left + list(p) + list(c) + [pad_id] * right)
        mask.append([0] * left + [1] * (len(p) + len(c)) + [0] * right)
        prompt_mask.append([0] * left + [1] * len(p) + [0] * response_width)
    attention = torch.tensor(mask)
    return {"input_ids": torch.tensor(ids), "attention_mask": attention, "prompt_mask": torch.tensor(prompt_mask),
            "position_ids": position_ids_from_mask(attention), "last": torch.tensor([prompt_width + len(c) - 1 for _, c in rows])}


def prompt_shared_rewards(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rewards (B,) of a `split_rows` batch, read at each response's last token; rows that share a prompt run it
    through the backbone once (`shared_prompt_hidden_states`), as RL batches do."""
    backbone = unwrap(model).base_model
    ids, mask, positions = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
    hidden = shared_prompt_hidden_states(backbone, ids, mask, positions, batch["prompt_mask"])
    if hidden is None:  # no two rows share a prompt
        hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state
    return score_head(model, hidden[torch.arange(hidden.shape[0], device=hidden.device), batch["last"]])


# ---------------------------------------------------------------- saving

def ensemble_layout(path: str | Path) -> tuple[list[str], list[float], float, dict] | None:
    """An ensemble directory's member folders, per-member offsets (its mean minus the members' average,
    subtracted from its raw score), default conservative k and shared normalisation; None if `path` is no ensemble."""
    root = Path(path).expanduser()
    if not (root / ENSEMBLE_FILE).is_file():
        return None
    spec = read_json_config(root / ENSEMBLE_FILE)
    try:
        means = [float(m["mean"]) for m in spec["members"]]
        offsets = [mean - sum(means) / len(means) for mean in means]
        return [str(root / m["path"]) for m in spec["members"]], offsets, spec.get("k", 1.0), spec["normalization"]
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        raise AlignkitError(f"{root / ENSEMBLE_FILE} is not an ensemble description (members with path and mean, normalization); "
                            f"train the ensemble again with `alignkit reward --ensemble K`") from None


def read_reward_stats(path: str | Path) -> dict:
    config = read_json_config(Path(path, "config.json"))
    return config.get(CONFIG_KEY) or {}


# ---------------------------------------------------------------- scoring

@dataclass
class RewardScores:
    """Scores of N responses from K members (K=1 for a single model)."""

    mean: torch.Tensor  # (N,) mean over members (the single model's score when K=1)
    std: torch.Tensor  # (N,) std over members (zeros when K=1)
    members: torch.Tensor  # (K, N)

    def conservative(self, k: float) -> torch.Tensor:
        """(N,) mean - k * std: a lower confidence score that resists over-optimization against one member's errors."""
        return self.mean - k * self.std


@dataclass
class RewardModel:
    """A reward model or ensemble ready to score (prompt, response) pairs; `RewardModel.load(path)`."""

    members: list
    tokenizer: object
    normalization: dict  # {"mean": float, "std": float}: raw reward statistics over the training responses
    offsets: list = field(default_factory=list)  # per member, subtracted from its raw score (ensemble alignment)
    k: float = 1.0  # default conservative k (ensemble.json)
    max_length: int | None = None
    truncation_side: str = "left"
    device: str = "cpu"
    bf16: bool = True
    path: str = ""

    @classmethod
    def load(cls, path: str, device="cpu", dtype="float32", bf16=True, allow_unsafe_pickle: bool = False) -> "RewardModel":
        """A reward-model directory, a reward run directory (its `model/`), or an ensemble directory.

        Each member folder is checked first (config, truncated weights, pickle-only weights), as every model a run loads."""
        from transformers import AutoModelForSequenceClassification

        layout = ensemble_layout(path)
        if layout is not None:
            dirs, offsets, k, normalization = layout
        else:
            dirs, offsets, k, normalization = [resolve_model_path(str(path))], [0.0], 1.0, None
        if dtype not in DTYPES:
            raise AlignkitError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        members = []
        for member in dirs:
            if is_adapter_dir(member) or not Path(member, "config.json").is_file():
                raise AlignkitError(f"{member} is not a reward model directory (no config.json); point to `<run>/model` or an ensemble directory")
            check_model_files(member)
            if not _is_reward_checkpoint(member):
                raise AlignkitError(f"{member} holds a {read_json_config(Path(member, 'config.json')).get('architectures')} model, not a reward model; train one with `alignkit reward`")
            check_safe_weights(member, allow_unsafe_pickle)
            try:
                with _quiet_loading():
                    members.append(AutoModelForSequenceClassification.from_pretrained(
                        member, dtype=DTYPES[dtype], use_safetensors=None if allow_unsafe_pickle else True).to(device).eval())
            except OSError as exc:
                raise AlignkitError(f"reward model folder {member} could not be loaded ({str(exc).splitlines()[0][:160]}); "
                                    f"check that it holds a complete saved model") from None
        stats = read_reward_stats(dirs[0])
        if normalization is None:
            normalization = {"mean": stats.get("mean", 0.0), "std": stats.get("std", 1.0)}
        tokenizer = load_tokenizer(dirs[0])
        set_reward_pad_token(tokenizer)
        if tokenizer.pad_token_id != members[0].config.pad_token_id:
            raise AlignkitError(f"{dirs[0]}: the tokenizer pads with id {tokenizer.pad_token_id} but config.json says {members[0].config.pad_token_id}; resave it with alignkit")
        return cls(members, tokenizer, normalization, offsets, k, stats.get("max_length"), stats.get("truncation_side", "left"),
                   str(device), autocast_bf16(bf16, device), str(path))  # bf16 only where it is native

    def encode(self, prompts: list, responses: list) -> list[list[int]]:
        """Token ids of each prompt + response (+ EOS), as in training, truncated to the training max_length."""
        return [p + c for p, c in self.encode_split(prompts, responses)]

    def encode_split(self, prompts: list, responses: list) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, response ids + EOS) of each row, as `encode` joins them."""
        if len(prompts) != len(responses):
            raise AlignkitError(f"got {len(prompts)} prompts but {len(responses)} responses; score takes one prompt per response")
        groups: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):  # encode each distinct prompt once
            groups.setdefault(json.dumps(prompt), []).append(i)
        ids: list = [None] * len(prompts)
        for indices in groups.values():
            prompt_ids, completions = encode_completions(self.tokenizer, prompts[indices[0]], [responses[i] for i in indices])
            for i, completion in zip(indices, completions):
                p = prompt_ids
                if self.max_length:
                    p, (completion,), _ = fit_prompt_completions(prompt_ids, [completion], self.max_length, self.truncation_side)
                ids[i] = (p, completion)
        return ids

    @torch.no_grad()
    def score(self, prompts: list, responses: list[str], batch_size: int = 16, progress: bool = False) -> RewardScores:
        """Scores each (prompt, response); prompts are strings or message lists.

        Each distinct token sequence is scored once and its score shared, so identical answers (an aligned
        model's answers that equal the reference's, a group's repeated samples) get identical scores: a tie
        is a tie, not a difference of a padding-dependent last bit. Batches hold `batch_size` responses, laid out
        as `scoring_batches` finds cheaper: a prompt run once for its responses, or whole sequences by length.
        """
        from tqdm.auto import tqdm

        slots: dict[tuple, int] = {}
        where = [slots.setdefault((tuple(p), tuple(c)), len(slots)) for p, c in self.encode_split(prompts, responses)]
        distinct = list(slots)  # (U,) (prompt, response) token tuples, in order of first appearance
        batches = scoring_batches(distinct, batch_size)
        raw = torch.zeros(len(self.members), len(distinct))  # (K, U)
        for chunk, rows in tqdm(batches, desc="scoring", disable=not progress, mininterval=2):
            batch = {k: v.to(self.device) for k, v in split_rows(rows, self.tokenizer.pad_token_id).items()}
            for k, member in enumerate(self.members):
                with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.bf16):
                    raw[k, chunk] = prompt_shared_rewards(member, batch).cpu()
        members = raw[:, where] - torch.tensor(self.offsets)[:, None]  # (K, N)
        std = members.std(0, unbiased=False) if len(self.members) > 1 else torch.zeros(len(where))
        return RewardScores(mean=members.mean(0), std=std, members=members)

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        """(scores - training mean) / training std."""
        return (scores - self.normalization["mean"]) / max(self.normalization["std"], 1e-8)


def pad_right(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) input_ids right-padded with `pad_token_id`, and the (B, T) attention mask."""
    return pad_sequences(sequences, pad_token_id), pad_sequences([[1] * len(s) for s in sequences], 0)


# ---------------------------------------------------------------- rewards of pairs, one forward pass

def collate_pairs(examples: list[dict], pad_id: int, share_prompt: bool = True) -> dict[str, torch.Tensor]:
    """A batch of B pairs for `pair_rewards`, in either layout of `models.sequences`.

    share_prompt: one row per pair, prompt + chosen + rejected, where the rejected tokens
    cannot see the chosen ones and restart their positions after the prompt, so each
    response reads exactly what it would read alone and the prompt is computed once.
    Otherwise 2B right-padded rows (chosen rows, then rejected rows).

    Adds chosen_end and rejected_end (B,): each response's last token (its EOS, where the
    reward is read) as a flat index into the (rows * T) positions; margin (B,); and
    num_tokens, the real tokens of the 2B prompt+response sequences (the prompt counted
    twice, as separate sequences would have it).
    """
    sequences = [{"sequences": [(e["prompt_ids"], e["chosen_ids"]), (e["prompt_ids"], e["rejected_ids"])]} for e in examples]
    batch = collate_sequences(sequences, (0, 1), pad_id, share_prompt)
    width, n = batch["input_ids"].shape[1], len(examples)
    p, c, r = (torch.tensor([len(e[k]) for e in examples]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
    rows = torch.arange(n)
    if share_prompt:
        batch["chosen_end"], batch["rejected_end"] = rows * width + p + c - 1, rows * width + p + c + r - 1
    else:
        batch["chosen_end"], batch["rejected_end"] = rows * width + p + c - 1, (n + rows) * width + p + r - 1
    batch["margin"] = torch.tensor([float(e.get("margin") or 0.0) for e in examples])
    batch["num_tokens"] = (2 * p + c + r).sum()
    return batch


def pair_rewards(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (B,), (B,) of the chosen and rejected responses of a `collate_pairs` batch, in one forward pass.

    The forward goes through the top-level model (so DDP sees it); the scalar head reads
    the final hidden state at each response's last token.
    """
    mask = batch["attention_mask"]
    if mask.ndim == 4 and getattr(unwrap(model).config, "_attn_implementation", "eager") != "sdpa":  # eager adds the mask to the scores
        mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    hidden = final_hidden_states(model, batch["input_ids"], mask, batch.get("position_ids")).flatten(0, 1)  # (rows * T, H)
    ends = torch.cat([batch["chosen_end"], batch["rejected_end"]])  # (2B,)
    return score_head(model, hidden[ends]).chunk(2)
