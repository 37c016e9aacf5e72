"""alignkit against TRL itself (1.16, the pinned version): the same tiny rows (standard and conversational) and
tiny-llama through both must give the same token ids and completion masks (SFT, DPO, KTO, reward modeling) and the
same step-0 DPO, KTO and reward losses.

How TRL's side is computed: each TRL trainer is built on the rows (`SFTTrainer`, `DPOTrainer`, `KTOTrainer`,
`RewardTrainer`, CPU, fp32), so its own `_prepare_dataset` tokenizes them (`trainer.train_dataset` holds TRL's ids);
for the losses, a batch of all rows from the trainer's own `data_collator` goes through the trainer's
`compute_loss(model, batch)`, under no_grad. alignkit's side is the recipes' tokenizers (`tokenize_sft`,
`train.dpo.tokenize_pairs`, `train.kto.tokenize_unpaired`, `data.pairs.tokenize_pairs`) and its loss functions
(`preference_loss`, `kto_loss`, `bradley_terry_loss`) on log-probs / rewards from its own forward code. The
reference model is tiny-llama with seeded noise added, so the log-ratios are not zero and the losses depend on
every token and mask; KTO's mismatched pairs are set to TRL's (each row's prompt with the previous row's completion).

Where alignkit differs from TRL by design (checked here as exactly that difference, nothing more):
- conversational rows: TRL's completions run to the end of the template's rendering, so they include what
  ChatML writes after `<|im_end|>` (a newline); alignkit ends every completion at EOS, where generation stops.
  Its ids are TRL's without that tail (its SFT sequences keep the tail, masked out).
- `messages` rows: TRL learns every token by default (`assistant_only_loss=False`); alignkit learns the assistant
  turns only. Ids are equal.
- the first token of a sequence is never learned by alignkit (nothing predicts it); TRL's label there is dropped
  by the shift, so it is compared from the second token on.

Skipped where TRL is not installed (`make bench` installs it: `.venv/bin/pip install -c constraints.txt trl==1.16.0`).
"""

from __future__ import annotations

import contextlib
import warnings

import pytest

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")
from datasets import Dataset  # noqa: E402

from alignkit.config import RewardConfig  # noqa: E402
from alignkit.data.formats import detect_format, preference_to_unpaired, split_implicit_prompt, validate_rows  # noqa: E402
from alignkit.data.pairs import tokenize_pairs as tokenize_reward_pairs  # noqa: E402
from alignkit.data.tokenize import tokenize_sft  # noqa: E402
from alignkit.losses.kto import kto_kl_estimate, kto_loss  # noqa: E402
from alignkit.losses.preference import PairLogps, preference_loss  # noqa: E402
from alignkit.losses.reward import bradley_terry_loss  # noqa: E402
from alignkit.models.load import load_causal_lm, load_tokenizer  # noqa: E402
from alignkit.models.reward import collate_pairs, load_reward_backbone, pair_rewards  # noqa: E402
from alignkit.models.sequences import collate_sequences, sequence_logps  # noqa: E402
from alignkit.train.dpo import pair_logps, tokenize_pairs  # noqa: E402
from alignkit.train.kto import tokenize_unpaired  # noqa: E402

MSG = lambda role, text: {"role": role, "content": text}  # noqa: E731
BETA = 0.1

STANDARD_PAIRS = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    {"prompt": "Two plus two is", "chosen": " four.", "rejected": " five, or so I was told."},
    {"prompt": "Name a fruit:", "chosen": " An apple.", "rejected": " A chair."},
    {"prompt": "Q: What is the capital of France?\nA:", "chosen": " Paris.", "rejected": " Rome, I think."},
]
IMPLICIT_PAIRS = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in STANDARD_PAIRS]
CONVERSATIONAL_PAIRS = [{"prompt": [MSG("user", r["prompt"])], "chosen": [MSG("assistant", r["chosen"].strip())],
                         "rejected": [MSG("assistant", r["rejected"].strip())]} for r in STANDARD_PAIRS]
CONVERSATIONAL_IMPLICIT = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in CONVERSATIONAL_PAIRS]


@pytest.fixture(scope="module")
def tok(tiny_path):
    return load_tokenizer(tiny_path)  # chat_template: auto, TRL's rule


@pytest.fixture(scope="module")
def policy(tiny_path):
    return load_causal_lm(tiny_path).eval()


@pytest.fixture(scope="module")
def reference(tiny_path):
    model = load_causal_lm(tiny_path).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def scorer(tiny_path):
    """(reward model, its tokenizer): alignkit's reward backbone, whose pad token differs from EOS."""
    torch.manual_seed(0)  # the new scalar head's initialisation
    model, tokenizer = load_reward_backbone(RewardConfig(model=tiny_path, max_length=1024, lora_r=0))
    return model.eval(), tokenizer


def _args(cls, tmp_path, n: int, **extra):
    return cls(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, bf16=False, per_device_train_batch_size=n,
               dataset_num_proc=None, **extra)


def _trainer(cls, config_cls, tmp_path, rows, processing_class, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(args=_args(config_cls, tmp_path, len(rows), **kwargs.pop("config", {})), train_dataset=Dataset.from_list(rows),
                   processing_class=processing_class, **kwargs)


def _validated(rows):
    return validate_rows(rows, detect_format(rows))  # implicit prompts split as alignkit loads them


def _eos_tail(tok, ids: list[int]) -> list[int]:
    """What a template writes after the last EOS (ChatML: a newline)."""
    return ids[len(ids) - ids[::-1].index(tok.eos_token_id):]


# ---------------------------------------------------------------- implicit prompts

@pytest.mark.parametrize("rows", [IMPLICIT_PAIRS, CONVERSATIONAL_IMPLICIT,
                                  [{"chosen": "abc", "rejected": "abcd"}, {"chosen": "Yes.", "rejected": "No."},
                                   {"chosen": "Q: x? A: Paris", "rejected": "Q: x? A: Parma"}]])
def test_implicit_prompts_split_as_trls_extract_prompt(rows):
    from trl.data_utils import extract_prompt

    for row in rows:
        theirs = extract_prompt(row)
        assert split_implicit_prompt(row["chosen"], row["rejected"]) == (theirs["prompt"], theirs["chosen"], theirs["rejected"])


# ---------------------------------------------------------------- tokenization

SFT_ROWS = {
    "standard prompt-completion": [{"prompt": r["prompt"], "completion": r["chosen"]} for r in STANDARD_PAIRS],
    "text": [{"text": r["prompt"] + r["chosen"]} for r in STANDARD_PAIRS],
    "conversational prompt-completion": [{"prompt": r["prompt"], "completion": r["chosen"]} for r in CONVERSATIONAL_PAIRS],
    "messages": [{"messages": r["prompt"] + r["chosen"]} for r in CONVERSATIONAL_PAIRS],
}


@pytest.mark.parametrize("kind", SFT_ROWS)
def test_sft_tokenization_matches_trl(kind, tok, policy, tmp_path):
    rows = SFT_ROWS[kind]
    trainer = _trainer(trl.SFTTrainer, trl.SFTConfig, tmp_path, rows, tok, model=policy)
    ours, _ = tokenize_sft(_validated(rows), detect_format(rows), tok, max_length=1024)
    assert len(ours) == len(trainer.train_dataset) == len(rows)
    for mine, theirs in zip(ours, trainer.train_dataset):
        assert mine["input_ids"] == theirs["input_ids"]
        learned = [int(label != -100) for label in theirs["labels"]]
        if kind == "conversational prompt-completion":  # TRL also learns the template's newline after EOS
            tail = len(_eos_tail(tok, theirs["input_ids"]))
            assert tail == 1 and learned[-tail:] == [1] and mine["loss_mask"][-tail:] == [0]
            learned = learned[:-tail] + [0] * tail
        if kind == "messages":  # TRL learns every token; alignkit the assistant turn (to its EOS)
            answer = tok.decode([t for t, m in zip(mine["input_ids"], mine["loss_mask"]) if m])
            assert answer == rows[ours.index(mine)]["messages"][-1]["content"] + tok.eos_token
            continue
        assert mine["loss_mask"][1:] == learned[1:]


@pytest.mark.parametrize("rows", [STANDARD_PAIRS, IMPLICIT_PAIRS, CONVERSATIONAL_PAIRS, CONVERSATIONAL_IMPLICIT],
                         ids=["standard", "standard-implicit", "conversational", "conversational-implicit"])
def test_dpo_and_reward_tokenization_matches_trl(rows, tok, policy, reference, scorer, tmp_path):
    trainer = _trainer(trl.DPOTrainer, trl.DPOConfig, tmp_path, rows, tok, model=policy, ref_model=reference)
    examples, report = tokenize_pairs(_validated(rows), tok, max_length=1024)
    assert report.kept == len(trainer.train_dataset) == len(rows)
    conversational = isinstance(rows[0]["chosen"], list)
    for example, theirs in zip(examples, trainer.train_dataset):
        (prompt, chosen), (_, rejected) = example["sequences"]
        assert prompt == theirs["prompt_ids"]
        for mine, their in ((chosen, theirs["chosen_ids"]), (rejected, theirs["rejected_ids"])):
            tail = _eos_tail(tok, their) if conversational else []
            assert mine + tail == their and tok.decode(tail) == ("\n" if conversational else "")
    # the reward model scores prompt + response: the same ids (TRL's RewardTrainer tokenizes each whole)
    rm = _trainer(trl.RewardTrainer, trl.RewardConfig, tmp_path, rows, tok, model=scorer[0])
    pairs, _ = tokenize_reward_pairs(list(enumerate(_validated(rows), 1)), tok, RewardConfig(max_length=1024), "rows")
    assert len(pairs) == len(rm.train_dataset) == len(rows)
    for pair, theirs in zip(pairs, rm.train_dataset):
        for mine, their in ((pair["chosen_ids"], theirs["chosen_ids"]), (pair["rejected_ids"], theirs["rejected_ids"])):
            tail = _eos_tail(tok, their) if conversational else []
            assert pair["prompt_ids"] + mine + tail == their


@pytest.mark.parametrize("rows", [STANDARD_PAIRS, CONVERSATIONAL_PAIRS], ids=["standard", "conversational"])
def test_kto_tokenization_matches_trl(rows, tok, policy, reference, tmp_path):
    unpaired = preference_to_unpaired(_validated(rows))
    trainer = _trainer(trl.KTOTrainer, trl.KTOConfig, tmp_path, unpaired, tok, model=policy, ref_model=reference)
    examples, _ = tokenize_unpaired(unpaired, tok, max_length=1024)
    assert len(examples) == len(trainer.train_dataset) == 2 * len(rows)
    conversational = isinstance(rows[0]["chosen"], list)
    for example, theirs in zip(examples, trainer.train_dataset):
        prompt, completion = example["sequences"][0]
        tail = _eos_tail(tok, theirs["completion_ids"]) if conversational else []
        assert (prompt, completion + tail) == (theirs["prompt_ids"], theirs["completion_ids"])
        assert example["label"] == theirs["label"]


# ---------------------------------------------------------------- step-0 losses (standard rows: identical tokens)

def _logps(model, examples, columns, pad_id):
    with torch.no_grad():
        return sequence_logps(model, collate_sequences(examples, columns, pad_id))


def test_dpo_loss_at_step_zero_matches_trl(tok, policy, reference, tmp_path):
    trainer = _trainer(trl.DPOTrainer, trl.DPOConfig, tmp_path, STANDARD_PAIRS, tok, model=policy, ref_model=reference,
                       config={"beta": BETA, "loss_type": ["sigmoid"]})
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(STANDARD_PAIRS))])
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, batch)
    examples, _ = tokenize_pairs(_validated(STANDARD_PAIRS), tok, max_length=1024)
    with torch.no_grad():
        mine = pair_logps(policy, None, examples, tok.pad_token_id, "cpu", contextlib.nullcontext)
        ref = pair_logps(reference, None, examples, tok.pad_token_id, "cpu", contextlib.nullcontext)
    loss, _ = preference_loss("sigmoid", mine._replace(ref_chosen=ref.chosen, ref_rejected=ref.rejected), beta=BETA)
    assert abs(loss.item() - 0.6931) > 1e-3  # the reference differs, so the loss depends on every token
    assert loss.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert isinstance(mine, PairLogps)


def test_kto_loss_at_step_zero_matches_trl(tok, policy, reference, tmp_path):
    unpaired = preference_to_unpaired(_validated(STANDARD_PAIRS))
    trainer = _trainer(trl.KTOTrainer, trl.KTOConfig, tmp_path, unpaired, tok, model=policy, ref_model=reference,
                       config={"beta": BETA})
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(unpaired))])
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, batch)
    examples, _ = tokenize_unpaired(unpaired, tok, max_length=1024)
    for i, example in enumerate(examples):  # TRL's mismatched pairs: each prompt with the previous row's completion
        example["sequences"][1] = (example["sequences"][0][0], examples[i - 1]["sequences"][0][1])
    logps, ref_logps = _logps(policy, examples, (0,), tok.pad_token_id)[0], _logps(reference, examples, (0,), tok.pad_token_id)[0]
    kl = kto_kl_estimate(_logps(policy, examples, (1,), tok.pad_token_id)[0], _logps(reference, examples, (1,), tok.pad_token_id)[0])
    labels = torch.tensor([e["label"] for e in examples])
    loss, metrics = kto_loss(logps, ref_logps, labels, kl, beta=BETA)
    assert abs(loss.item() - 0.5) > 1e-3
    assert loss.item() == pytest.approx(theirs.item(), abs=1e-5)


def test_reward_loss_at_step_zero_matches_trl(scorer, tmp_path):
    model, tok = scorer  # both read the score at the response's EOS: the pad token is not EOS
    trainer = _trainer(trl.RewardTrainer, trl.RewardConfig, tmp_path, STANDARD_PAIRS, tok, model=model)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(STANDARD_PAIRS))])
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, batch)
        pairs, _ = tokenize_reward_pairs(list(enumerate(_validated(STANDARD_PAIRS), 1)), tok, RewardConfig(max_length=1024), "rows")
        chosen, rejected = pair_rewards(model, collate_pairs(pairs, tok.pad_token_id, share_prompt=False))
    loss, _ = bradley_terry_loss(chosen, rejected)
    assert abs(loss.item() - 0.6931) > 1e-4
    assert loss.item() == pytest.approx(theirs.item(), abs=1e-5)
