"""DPO and KTO recipes on the tiny model: the margin moves, the three reference paths agree, bad input is refused."""

from __future__ import annotations

import pytest
import torch

from alignkit.cli import main
from alignkit.data.formats import preference_to_unpaired
from alignkit.errors import AlignkitError
from alignkit.losses.preference import preference_loss

TOPICS = ["apples", "rivers", "mountains", "cats", "dogs", "trains", "books", "stars", "clouds", "bread", "music", "chess",
          "coffee", "tea", "gardens", "rain", "snow", "boats", "bikes", "lamps", "owls", "bees", "maps", "songs"]


def pairs(topics):
    return [{"prompt": f"Tell me about {t}.", "chosen": f"{t.capitalize()} are wonderful and worth learning about.",
             "rejected": "No."} for t in topics]


@pytest.fixture
def pair_files(write_jsonl):
    return write_jsonl(pairs(TOPICS[:18] * 2), "train.jsonl"), write_jsonl(pairs(TOPICS[18:]), "test.jsonl")


def base_config(tmp_path, tiny_path, data, eval_data, **overrides):
    return {"model": tiny_path, "data": data, "eval_data": eval_data, "output_dir": str(tmp_path / "run"),
            "ref_cache_dir": str(tmp_path / "cache"), "report_to": [], "batch_size": 4, "learning_rate": 1e-3,
            "warmup_ratio": 0.0, "lr_scheduler": "constant", "merge_lora": False, **overrides}


def test_dpo_raises_the_held_out_margin(tmp_path, tiny_path, pair_files):
    from alignkit.train import dpo

    summary = dpo(base_config(tmp_path, tiny_path, *pair_files, max_steps=15))
    # before training the policy is the reference, so every margin is 0; unseen topics must now favour chosen
    assert summary["eval/rewards/margin"] > 0.2
    assert summary["eval/rewards/accuracy"] == 1.0
    assert summary["final_loss"] < 0.6 < summary["first_loss"]
    assert summary["eval/kl/ref"] > 0  # the policy moved away from the reference on chosen answers


def test_cached_reference_trains_exactly_like_the_frozen_copy(tmp_path, tiny_path, pair_files):
    from alignkit.train import dpo

    common = dict(max_steps=3, mixed_precision="no")
    copy = dpo(base_config(tmp_path, tiny_path, *pair_files, reference="copy", **common))
    cached = dpo(base_config(tmp_path, tiny_path, *pair_files, reference="precompute", **common))
    for key in ("first_loss", "final_loss", "eval/loss", "eval/rewards/margin", "eval/kl/ref"):
        assert cached[key] == pytest.approx(copy[key], abs=1e-5), key
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # train and held-out tables, written once


def test_reference_strategies_give_the_same_loss(tmp_path, tiny_path, tokenizer, monkeypatch):
    from accelerate import Accelerator

    from alignkit.models.load import add_lora, load_causal_lm
    from alignkit.models import reference as ref
    from alignkit.train.dpo import pair_logps, tokenize_pairs

    examples, _ = tokenize_pairs(pairs(TOPICS[:6]), tokenizer, max_length=64)
    accelerator = Accelerator(mixed_precision="no", cpu=True)
    torch.manual_seed(0)
    policy = add_lora(load_causal_lm(tiny_path), 4, 8, 0.0, ["q_proj", "v_proj"])
    with torch.no_grad():  # move the adapters off zero so the policy differs from its base
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    copy = ref.FrozenCopy(load_causal_lm(tiny_path))
    adapter = ref.DisabledAdapter()
    table = ref.precompute_logps(copy.model, examples, tokenizer.pad_token_id, 4, accelerator, tmp_path, "fp32")
    monkeypatch.setattr(ref, "compute_logps", lambda *a, **k: pytest.fail("the cache was not reused"))
    reused = ref.precompute_logps(copy.model, examples, tokenizer.pad_token_id, 4, accelerator, tmp_path, "fp32")
    assert torch.equal(table, reused)

    losses = []
    for reference in (copy, adapter, ref.CachedLogps(table)):
        logps = pair_logps(policy, reference, examples, tokenizer.pad_token_id, "cpu", accelerator.autocast)
        losses.append(preference_loss("sigmoid", logps, 0.1)[0].item())
    assert losses[0] != pytest.approx(0.6931, abs=1e-3)  # the adapters matter, so agreement is not trivial
    assert losses[1] == pytest.approx(losses[0], abs=1e-5) and losses[2] == pytest.approx(losses[0], abs=1e-5)


def test_kto_from_preference_raises_desirable_over_undesirable(tmp_path, tiny_path, pair_files):
    from alignkit.train import kto

    summary = kto(base_config(tmp_path, tiny_path, *pair_files, from_preference=True, max_steps=12, reference="precompute"))
    assert summary["train_rows"] == 72  # 36 pairs -> 72 rows
    assert summary["eval/rewards/margin"] > 0.1 and summary["eval/rewards/accuracy"] > 0.5
    assert summary["final_loss"] < summary["first_loss"]


def test_preference_to_unpaired_and_mismatched_partners():
    from alignkit.train.kto import mismatched_partners

    rows = preference_to_unpaired([{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1.0}])
    assert rows == [{"prompt": "p", "margin": 1.0, "completion": "a", "label": True},
                    {"prompt": "p", "margin": 1.0, "completion": "b", "label": False}]
    prompts = ["x", "x", "y", "y", "z", "z", "w"]
    partners = mismatched_partners(prompts, seed=3)
    assert all(prompts[j] != prompts[i] for i, j in enumerate(partners))
    assert partners == mismatched_partners(prompts, seed=3)


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def test_bad_input_gets_a_clear_error(tmp_path, tiny_path, write_jsonl, pair_files, capsys):
    unpaired = write_jsonl([{"prompt": "p", "completion": "c", "label": True}], "unpaired.jsonl")
    code, err = run_cli(capsys, "dpo", "--model", tiny_path, "--data", unpaired, "--output_dir", str(tmp_path / "r"))
    assert code == 2 and "DPO needs preference data" in err and "alignkit kto" in err
    code, err = run_cli(capsys, "kto", "--model", tiny_path, "--data", pair_files[0], "--output_dir", str(tmp_path / "r"))
    assert code == 2 and "KTO needs unpaired-preference data" in err and "--from_preference true" in err
    for beta in ("0", "-0.1"):
        code, err = run_cli(capsys, "dpo", "--model", tiny_path, "--data", pair_files[0], "--beta", beta)
        assert code == 2 and "beta must be positive" in err
    code, err = run_cli(capsys, "dpo", "--data", pair_files[0], "--loss", "dpo")
    assert code == 2 and "loss must be one of sigmoid, ipo, hinge, robust, simpo, orpo" in err
    with pytest.raises(AlignkitError, match="needs both desirable and undesirable"):
        from alignkit.train import kto

        only_good = write_jsonl([{"prompt": f"p{i}", "completion": "c", "label": True} for i in range(4)], "good.jsonl")
        kto({"model": tiny_path, "data": only_good, "output_dir": str(tmp_path / "k"), "report_to": []})


def test_shared_prompt_layout_matches_separate_rows(tiny_path, tokenizer):
    from alignkit.models.load import load_causal_lm
    from alignkit.train.dpo import tokenize_pairs
    from alignkit.models.sequences import collate_sequences, sequence_logps

    rows = pairs(TOPICS[:3]) + [{"prompt": "Hi", "chosen": "Hello! How can I help you today?", "rejected": "Go away, I am busy."}]
    examples, _ = tokenize_pairs(rows, tokenizer, max_length=64)
    model = load_causal_lm(tiny_path)
    grads = []
    for share in (False, True):
        model.zero_grad()
        batch = collate_sequences(examples, (0, 1), tokenizer.pad_token_id, share_prompt=share)
        logps, lengths = sequence_logps(model, batch)
        (logps[:4] - 0.5 * logps[4:]).sum().backward()
        grads.append((logps.detach(), lengths, model.model.embed_tokens.weight.grad.clone()))
    (rows_logps, rows_len, rows_grad), (shared_logps, shared_len, shared_grad) = grads
    assert torch.equal(rows_len, shared_len)
    assert torch.allclose(rows_logps, shared_logps, atol=1e-3)
    assert torch.allclose(rows_grad, shared_grad, atol=1e-5)
    shared = collate_sequences(examples, (0, 1), tokenizer.pad_token_id, share_prompt=True)["input_ids"]
    separate = collate_sequences(examples, (0, 1), tokenizer.pad_token_id)["input_ids"]
    assert shared.numel() < separate.numel()  # the prompt runs once per pair


def test_resume_continues_exactly(tmp_path, tiny_path, pair_files):
    from alignkit.train import dpo

    config = base_config(tmp_path, tiny_path, *pair_files, max_steps=4, save_every=2, mixed_precision="no", reference="precompute")
    whole = dpo(config)
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    resumed = dpo({**config, "resume": str(tmp_path / "run" / "checkpoint-2")})
    assert resumed["final_loss"] == pytest.approx(whole["final_loss"], abs=1e-6)
    assert resumed["eval/rewards/margin"] == pytest.approx(whole["eval/rewards/margin"], abs=1e-6)
