"""Reward modeling: the Bradley-Terry loss on hand-derived values, pair rewards, the recipe on the tiny model,
plain-transformers reloading, bad-input handling, ensembles and the score command."""

from __future__ import annotations

import json
import math
import random
import types

import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.losses.reward import accuracy_by_strength, bradley_terry_loss, pairwise_calibration_error
from alignkit.train import reward

LN3 = math.log(3.0)  # sigmoid(ln 3) = 3/4, so -log sigmoid(ln 3) = ln(4/3) and -log sigmoid(-ln 3) = ln 4
CRITIC_ARGS = types.SimpleNamespace(dtype="float32", trust_remote_code=False, lora_r=0, lora_alpha=16, target_modules=None,
                                    allow_unsafe_pickle=False)
TOPICS = ["cats", "the moon", "rivers", "bread", "trains", "music", "snow", "chess", "apples", "clouds", "tea", "maps"]


def polite(topic, rng):
    return f"Happy to help! Here is a {rng.choice(['kind', 'clear', 'short'])} note about {topic}."


def rude(topic, rng):
    return f"No. I refuse to talk about {topic}, {rng.choice(['go away', 'leave me', 'stop asking'])}."


def pairs(n, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        rows.append({"prompt": f"Tell me about {topic}.", "chosen": polite(topic, rng), "rejected": rude(topic, rng),
                     "strength": rng.choice([0.5, 1.0])})
    return rows


# ---------------------------------------------------------------- the loss, by hand

def test_bradley_terry_loss_hand_values():
    chosen, rejected = torch.tensor([LN3, 0.0]), torch.tensor([0.0, 0.0])
    loss, metrics = bradley_terry_loss(chosen, rejected)
    assert loss.item() == pytest.approx((math.log(4 / 3) + math.log(2)) / 2)
    assert metrics["rewards/accuracy"].item() == 0.5 and metrics["rewards/margin"].item() == pytest.approx(LN3 / 2)

    # margin: z = r_c - r_r - m; a margin of ln 3 on the first pair turns ln(4/3) into ln 2
    loss, _ = bradley_terry_loss(chosen, rejected, margin=torch.tensor([LN3, -LN3]))
    assert loss.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)

    # centering adds c * (r_c + r_r)^2 per pair: 0.1 * ((ln 3)^2 + 0) / 2
    loss, _ = bradley_terry_loss(chosen, rejected, center_rewards_coefficient=0.1)
    assert loss.item() == pytest.approx((math.log(4 / 3) + math.log(2)) / 2 + 0.1 * LN3 ** 2 / 2)

    # smoothing eps: -(1 - eps) log s(z) - eps log s(-z) = 0.9 ln(4/3) + 0.1 ln 4 for z = ln 3; ln 2 for z = 0
    loss, _ = bradley_terry_loss(chosen, rejected, label_smoothing=0.1)
    assert loss.item() == pytest.approx((0.9 * math.log(4 / 3) + 0.1 * math.log(4) + math.log(2)) / 2)

    # all three at once, divided by an accumulated pair count of 4 instead of 2
    loss, _ = bradley_terry_loss(chosen, rejected, torch.tensor([0.0, -LN3]), 0.1, 0.1, num_items=4)
    by_hand = (0.9 * math.log(4 / 3) + 0.1 * math.log(4) + 0.1 * LN3 ** 2) + (0.9 * math.log(4 / 3) + 0.1 * math.log(4))
    assert loss.item() == pytest.approx(by_hand / 4)


def test_bradley_terry_gradient_pushes_chosen_up():
    chosen, rejected = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    bradley_terry_loss(chosen, rejected)[0].backward()
    assert chosen.grad.item() == pytest.approx(-0.5) and rejected.grad.item() == pytest.approx(0.5)  # -sigma(-0) = -1/2


def test_calibration_error_hand_values():
    # every pair predicted at 3/4 and every pair right: confidence .75, accuracy 1 -> ECE 1/4
    assert pairwise_calibration_error(torch.full((4,), LN3), torch.zeros(4)).item() == pytest.approx(0.25)
    # 3 of 4 right at confidence 3/4: perfectly calibrated
    assert pairwise_calibration_error(torch.tensor([LN3, LN3, LN3, -LN3]), torch.zeros(4)).item() == pytest.approx(0.0, abs=1e-7)
    # equals the top-label ECE over confidence max(p, 1 - p) in bins [.5, .6), ..., [.9, 1]
    c, r = torch.randn(200, generator=torch.Generator().manual_seed(0)) * 2 + 1, torch.zeros(200)
    p = torch.sigmoid(c - r)
    confidence, correct = torch.maximum(p, 1 - p), (p > 0.5).float()
    bins = ((confidence - 0.5) * 10).long().clamp(max=4)
    top_label = sum((bins == b).float().mean() * (confidence[bins == b].mean() - correct[bins == b].mean()).abs()
                    for b in bins.unique())
    assert pairwise_calibration_error(c, r).item() == pytest.approx(top_label.item(), abs=1e-6)


def test_accuracy_by_strength():
    chosen, rejected = torch.tensor([1.0, 1.0, -1.0, 1.0]), torch.zeros(4)
    groups = accuracy_by_strength(chosen, rejected, torch.tensor([0.5, 0.5, 1.0, 1.0]))
    assert groups == {"0.5": (1.0, 2), "1": (0.5, 2)}
    many = accuracy_by_strength(torch.ones(40), torch.zeros(40), torch.linspace(0, 1, 40))
    assert len(many) == 4 and sum(n for _, n in many.values()) == 40


# ---------------------------------------------------------------- one forward pass for both sides

@pytest.fixture(scope="module")
def tiny_reward_model(tiny_path):
    from alignkit.models.reward import load_reward_backbone

    args = types.SimpleNamespace(model=tiny_path, trust_remote_code=False, dtype="float32", gradient_checkpointing=False, lora_r=0,
                                 chat_template="auto", chat_template_path="", allow_unsafe_pickle=False)
    torch.manual_seed(0)
    return load_reward_backbone(args)


def _examples(tokenizer, rows):
    from alignkit.data.tokenize import encode_completions

    out = []
    for row in rows:
        p, (c, r) = encode_completions(tokenizer, row["prompt"], [row["chosen"], row["rejected"]])
        out.append({"prompt_ids": p, "chosen_ids": c, "rejected_ids": r})
    return out


def test_pad_token_is_not_eos(tiny_reward_model):
    model, tokenizer = tiny_reward_model
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and model.config.pad_token_id == tokenizer.pad_token_id


def test_shared_prompt_rows_match_separate_sequences_and_swapping_flips_the_margin(tiny_reward_model):
    from alignkit.models.reward import collate_pairs, pad_right, pair_rewards

    model, tokenizer = tiny_reward_model
    rows = pairs(3, 0) + [{"prompt": "A much longer question about the moon and the tides?", "chosen": "", "rejected": "Tides."}]
    examples = _examples(tokenizer, rows)
    with torch.no_grad():
        chosen, rejected = pair_rewards(model, collate_pairs(examples, tokenizer.pad_token_id, share_prompt=True))
        classic = pair_rewards(model, collate_pairs(examples, tokenizer.pad_token_id, share_prompt=False))
        swapped = [{**e, "chosen_ids": e["rejected_ids"], "rejected_ids": e["chosen_ids"]} for e in examples]
        swapped_chosen, swapped_rejected = pair_rewards(model, collate_pairs(swapped, tokenizer.pad_token_id))
        ids, mask = pad_right([e["prompt_ids"] + e["chosen_ids"] for e in examples], tokenizer.pad_token_id)
        plain = model(input_ids=ids, attention_mask=mask).logits[:, 0]  # transformers' own pooling, one row per sequence
    torch.testing.assert_close(chosen, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack([chosen, rejected]), torch.stack(classic), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(swapped_chosen - swapped_rejected, -(chosen - rejected), atol=1e-5, rtol=1e-5)
    assert (chosen - rejected).abs().min() > 0  # a real (nonzero) margin was flipped


# ---------------------------------------------------------------- the recipe

@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, tiny_path):
    root = tmp_path_factory.mktemp("reward")
    for name, rows in (("train", pairs(96, 0)), ("test", pairs(32, 1))):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = reward({"model": tiny_path, "data": str(root / "train.jsonl"), "eval_data": str(root / "test.jsonl"),
                      "output_dir": str(root / "run"), "learning_rate": 1e-3, "max_steps": 12, "batch_size": 8,
                      "eval_every": 4, "report_to": ["jsonl"], "warmup_ratio": 0})
    return root, summary


def test_reward_model_learns_held_out_preferences(reward_run):
    root, summary = reward_run
    evals = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    accuracy = [m["eval/rewards/accuracy"] for m in evals if "eval/rewards/accuracy" in m]
    margins = [m["eval/rewards/margin"] for m in evals if "eval/rewards/margin" in m]
    assert len(accuracy) == 3 and accuracy[-1] >= 0.95 and margins[-1] > 1.0
    assert summary["first_loss"] > 0.5 and summary["eval/loss"] < 0.1  # from about ln 2 (untrained) to near 0
    assert summary["eval/rewards/accuracy"] == accuracy[-1] and 0 <= summary["eval/calibration/ece"] <= 1
    assert {"eval/accuracy_by_strength/0.5", "eval/accuracy_by_strength/1"} <= set(summary)
    stats = json.loads((root / "run" / "model" / "config.json").read_text())["alignkit_reward"]
    assert stats["std"] > 0 and stats["mean"] == pytest.approx(summary["normalization"]["mean"])


def test_critic_from_the_reward_model_starts_on_the_policys_reward_scale(reward_run):
    """PPO's critic from a reward model: where a response ends, its first value is the standardised score the policy gets."""
    from alignkit.models.reward import pad_right
    from alignkit.rl.rewards import ModelReward
    from alignkit.rl.value_model import build_value_model

    root, _ = reward_run
    critic = build_value_model("reward", CRITIC_ARGS, policy=None, reward_model_path=str(root / "run"))
    source = ModelReward(str(root / "run" / "model"), bf16=False)
    rows = pairs(4, 7)
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows[:2]] + [r["rejected"] for r in rows[2:]]
    ids, mask = pad_right(source.model.encode(prompts, responses), source.model.tokenizer.pad_token_id)
    with torch.no_grad():
        values = critic.state_values(ids, mask)  # (N, T)
    last = mask.sum(-1) - 1
    expected = torch.tensor(source(prompts, responses))
    torch.testing.assert_close(values[torch.arange(len(ids)), last], expected, atol=1e-4, rtol=1e-4)
    assert expected.std() > 0.5  # standardised scores, not raw ones (whose std is the model's own)


def test_saved_reward_model_scores_the_same_in_plain_transformers(reward_run, monkeypatch):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import alignkit.models.reward as reward_module
    from alignkit.models.reward import RewardModel

    shared = []
    forward = reward_module.shared_prompt_hidden_states
    monkeypatch.setattr(reward_module, "shared_prompt_hidden_states", lambda *a: shared.append(forward(*a)) or shared[-1])

    root, _ = reward_run
    prompts = ["Tell me about snow.", [{"role": "user", "content": "Tell me about tea."}], "Tell me about maps.",
               "Tell me about snow.", "Tell me about snow."]  # a prompt with three responses runs once for them
    responses = ["Happy to help! Here is a clear note about snow.", "No. I refuse to talk about tea, go away.", "",
                 "Snow.", "Snow is frozen water that falls from clouds in winter."]
    ours = RewardModel.load(str(root / "run"), bf16=False)  # a run directory finds its model/
    scores = ours.score(prompts, responses, batch_size=4)
    assert scores.members.shape == (1, 5) and torch.equal(scores.std, torch.zeros(5))
    assert any(hidden is not None for hidden in shared)  # the shared-prompt forward ran
    assert scores.mean[0] > scores.mean[1]
    assert ours.normalization["std"] > 0

    model = AutoModelForSequenceClassification.from_pretrained(root / "run" / "model")
    tokenizer = AutoTokenizer.from_pretrained(root / "run" / "model")
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    texts = [(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) if isinstance(p, list) else p)
             + r + tokenizer.eos_token for p, r in zip(prompts, responses)]  # chat_template auto: string prompts stay raw
    with torch.no_grad():
        plain = model(**tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")).logits[:, 0]
        one_by_one = torch.cat([model(**tokenizer([t], add_special_tokens=False, return_tensors="pt")).logits[:, 0] for t in texts])
    torch.testing.assert_close(scores.mean, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_by_one, plain, atol=1e-5, rtol=1e-5)  # padding never moves the scored token


def test_identical_answers_get_identical_scores(reward_run):
    """Each distinct sequence is scored once: duplicates tie exactly, whatever batch they would have been padded in,
    and the scores equal scoring the distinct answers alone."""
    from alignkit.models.reward import RewardModel

    root, _ = reward_run
    model = RewardModel.load(str(root / "run"), bf16=False)
    prompts = ["Tell me about snow.", "Tell me about tea.", "Tell me about snow.", "Tell me about tea.", "Tell me about snow."]
    responses = ["Snow is frozen water.", "Tea is a drink made from leaves, steeped in hot water for a few minutes.",
                 "Snow is frozen water.", "No.", "Snow is frozen water."]
    scores = model.score(prompts, responses, batch_size=2).mean
    assert scores[0] == scores[2] == scores[4] and scores[1] != scores[3]
    alone = model.score(prompts[:2] + prompts[3:4], responses[:2] + responses[3:4], batch_size=2).mean
    torch.testing.assert_close(scores[[0, 1, 3]], alone, atol=1e-5, rtol=1e-5)


def test_eval_scores_an_answer_two_models_share_once(reward_run, monkeypatch):
    """The eval's RM win rate: where a policy answers exactly as the reference does, the answer is scored once and the
    outcome is a tie (scored in separate batches, the embedded model's scores differed in the last bits)."""
    import alignkit.models.reward as reward_module
    from alignkit.config_pipeline import EvalConfig
    from alignkit.evaluate.compare import score_all
    from alignkit.evaluate.winrate import outcomes_from_scores

    rows_scored = []
    forward = reward_module.prompt_shared_rewards
    monkeypatch.setattr(reward_module, "prompt_shared_rewards", lambda model, batch: rows_scored.append(len(batch["input_ids"])) or forward(model, batch))
    root, _ = reward_run
    rows = [{"prompt": f"Tell me about {topic}."} for topic in ("snow", "tea", "maps", "rain")]
    answers = {"sft": ["Snow is cold.", "Tea is a drink.", "Maps show places.", "Rain is water."],
               "policy": ["Snow is cold.", "No.", "Maps show places.", "Rain falls from clouds as drops of water."]}
    config = EvalConfig(reward_model=str(root / "run"), gold="", batch_size=3, mixed_precision="no")
    scores = score_all(answers, rows, config)
    outcomes = outcomes_from_scores(scores["policy"]["reward"], scores["sft"]["reward"])
    assert outcomes[0] == outcomes[2] == 0.5 and outcomes[1] != 0.5
    assert sum(rows_scored) == 6  # 8 answers, 2 of them shared


def test_lora_trains_the_head_in_full(tmp_path, tiny_path, write_jsonl):
    from safetensors.torch import load_file

    reward({"model": tiny_path, "data": write_jsonl(pairs(16, 2)), "output_dir": str(tmp_path / "run"), "lora_r": 4,
            "lora_alpha": 8, "learning_rate": 1e-2, "max_steps": 2, "report_to": ["jsonl"], "eval_fraction": 0})
    weights = load_file(tmp_path / "run" / "model" / "model.safetensors")
    base = load_file(f"{tiny_path}/model.safetensors")
    assert "score.weight" in weights and not any("lora" in k for k in weights)  # merged, plain transformers layout
    changed = {k for k in base if k in weights and not torch.equal(base[k], weights[k])}
    assert changed and all("proj" in k for k in changed)  # LoRA moved only the adapted projections...
    from alignkit.models.reward import RewardModel

    assert RewardModel.load(str(tmp_path / "run")).score(["Tell me about tea."], ["Sure."]).mean.isfinite().all()


def test_gradient_accumulation_matches_larger_batch(tmp_path, tiny_path, write_jsonl):
    from safetensors.torch import load_file

    data = write_jsonl(pairs(8, 3))
    common = {"model": tiny_path, "data": data, "eval_fraction": 0, "max_steps": 1, "learning_rate": 1e-2, "report_to": ["jsonl"],
              "mixed_precision": "no", "max_grad_norm": 0, "center_rewards_coefficient": 0.01, "group_by_length": False}
    reward({**common, "output_dir": str(tmp_path / "a"), "batch_size": 8, "grad_accum_steps": 1})
    reward({**common, "output_dir": str(tmp_path / "b"), "batch_size": 2, "grad_accum_steps": 4})
    a, b = load_file(tmp_path / "a/model/model.safetensors"), load_file(tmp_path / "b/model/model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- bad input

def test_bad_pairs_are_counted_and_handled_per_config(tiny_path, tokenizer):
    from alignkit.config import RewardConfig
    from alignkit.data.pairs import tokenize_pairs

    long_prompt = "Tell me everything about " + "very " * 80 + "long rivers."
    rows = list(enumerate([
        {"prompt": "a?", "chosen": "Same answer.", "rejected": "Same answer."},
        {"prompt": "b?", "chosen": "", "rejected": "Something."},
        {"prompt": long_prompt, "chosen": "Rivers flow.", "rejected": "No."},
        {"prompt": "c?", "chosen": "Good.", "rejected": "Bad."},
    ], start=1))
    examples, report = tokenize_pairs(rows, tokenizer, RewardConfig(model=tiny_path, max_length=64), "pairs.jsonl")
    assert (report.rows, report.kept, report.dropped, report.truncated) == (4, 3, 1, 1)
    assert report.counts == {"chosen identical to rejected (dropped)": 1, "empty response (kept)": 1,
                             "longer than max_length=64 (truncated)": 1}
    assert all(len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) <= 64 for e in examples)
    assert examples[0]["chosen_ids"] == [tokenizer.eos_token_id]  # an empty response is scored at its EOS
    assert "chosen identical to rejected (dropped): 1 (rows 1)" in report.summary()

    strict = RewardConfig(model=tiny_path, max_length=64, identical_pairs="keep", empty_responses="drop", truncation_mode="drop")
    examples, report = tokenize_pairs(rows, tokenizer, strict, "pairs.jsonl")
    assert [e["row"] for e in examples] == [1, 4] and report.dropped == 2
    with pytest.raises(AlignkitError, match="pairs.jsonl row 1: chosen identical to rejected"):
        tokenize_pairs(rows, tokenizer, RewardConfig(model=tiny_path, identical_pairs="error"), "pairs.jsonl")
    with pytest.raises(AlignkitError, match="pairs.jsonl row 2: empty response"):
        tokenize_pairs(rows, tokenizer, RewardConfig(model=tiny_path, empty_responses="error"), "pairs.jsonl")


def test_non_preference_data_is_refused(tmp_path, tiny_path, write_jsonl):
    sft_rows = write_jsonl([{"prompt": "x", "completion": "y"}])
    with pytest.raises(AlignkitError, match="needs preference data.*chosen.*rejected"):
        reward({"model": tiny_path, "data": sft_rows, "output_dir": str(tmp_path)})
    kto_rows = write_jsonl([{"prompt": "x", "completion": "y", "label": True}], "kto.jsonl")
    with pytest.raises(AlignkitError, match="alignkit kto"):
        reward({"model": tiny_path, "data": kto_rows, "output_dir": str(tmp_path)})
    missing = write_jsonl([{"prompt": "x", "chosen": "y", "rejected": "z"}, {"prompt": "x", "chosen": "y"}], "holes.jsonl")
    with pytest.raises(AlignkitError, match="row 2: missing column 'rejected'"):
        reward({"model": tiny_path, "data": missing, "output_dir": str(tmp_path)})
    with pytest.raises(AlignkitError, match="identical_pairs must be one of"):
        reward({"model": tiny_path, "data": missing, "identical_pairs": "ignore"})


# ---------------------------------------------------------------- ensembles and scoring

@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory, tiny_path):
    root = tmp_path_factory.mktemp("ensemble")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs(64, 4)))
    summary = reward({"model": tiny_path, "data": str(root / "train.jsonl"), "output_dir": str(root / "run"), "ensemble": 3,
                      "learning_rate": 1e-3, "max_steps": 8, "batch_size": 8, "report_to": ["jsonl"], "eval_fraction": 0.125,
                      "conservative_k": 2.0})
    return root, summary


def test_ensemble_directory_layout(ensemble_run):
    from transformers import AutoModelForSequenceClassification

    root, summary = ensemble_run
    spec = json.loads((root / "run" / "ensemble.json").read_text())
    assert [m["path"] for m in spec["members"]] == ["member-0", "member-1", "member-2"] and spec["k"] == 2.0
    assert len({m["seed"] for m in spec["members"]}) == 3 and summary["eval/ensemble_std"] > 0
    for member in spec["members"]:  # each member is a plain sequence-classification directory
        assert AutoModelForSequenceClassification.from_pretrained(root / "run" / member["path"]).config.num_labels == 1


def test_critic_from_an_ensemble_starts_from_member_0_on_the_ensembles_scale(ensemble_run):
    from alignkit.models.reward import RewardModel, pad_right
    from alignkit.rl.value_model import build_value_model

    root, _ = ensemble_run
    critic = build_value_model("reward", CRITIC_ARGS, policy=None, reward_model_path=str(root / "run"))
    ensemble = RewardModel.load(str(root / "run"), bf16=False)
    rows = pairs(3, 9)
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    ids, mask = pad_right(ensemble.encode(prompts, responses), ensemble.tokenizer.pad_token_id)
    with torch.no_grad():
        values = critic.state_values(ids, mask)[torch.arange(len(ids)), mask.sum(-1) - 1]
    member_0 = ensemble.normalize(ensemble.score(prompts, responses).members[0])  # offset-aligned, then standardised
    torch.testing.assert_close(values, member_0, atol=1e-4, rtol=1e-4)


def test_ensemble_is_less_certain_about_unfamiliar_responses(ensemble_run):
    from alignkit.models.reward import RewardModel

    root, _ = ensemble_run
    model = RewardModel.load(str(root / "run"), bf16=False)
    rng = random.Random(9)
    familiar = [(f"Tell me about {t}.", f(t, rng)) for t in TOPICS for f in (polite, rude)]
    strange = [(f"Tell me about {t}.", s) for t in TOPICS for s in (
        "0x7f 0x3a 0x99 0x12 0xff 0x00 0x41 0x42 0x43 0x44 0x45 0x46",
        "ζ∂∫≈ ∑∏√∞ ≠≤≥ µ¬˚∆ ©ƒ∂ß åß∂ƒ©˙∆˚¬ Ω≈ç√∫˜µ≤≥÷",
    )]
    familiar_scores = model.score(*zip(*familiar))
    strange_scores = model.score(*zip(*strange))
    assert familiar_scores.members.shape == (3, len(familiar))
    assert strange_scores.std.mean() > 1.5 * familiar_scores.std.mean()
    torch.testing.assert_close(strange_scores.conservative(2.0), strange_scores.mean - 2.0 * strange_scores.std)
    torch.testing.assert_close(familiar_scores.mean, familiar_scores.members.mean(0))


def test_score_command_on_pairs_and_responses(ensemble_run, tmp_path, write_jsonl, capsys):
    from alignkit.cli import main

    root, _ = ensemble_run
    pairs_file = write_jsonl(pairs(4, 5), "pairs.jsonl")
    assert main(["score", "--reward-model", str(root / "run"), "--data", pairs_file, "--out", str(tmp_path / "a.jsonl")]) == 0
    scored = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(scored) == 4 and scored[0]["strength"] in (0.5, 1.0)  # input columns kept
    first = scored[0]
    assert first["reward_margin"] == pytest.approx(first["reward_chosen"] - first["reward_rejected"])
    assert len(first["reward_chosen_members"]) == 3
    assert first["reward_chosen_conservative"] == pytest.approx(first["reward_chosen"] - 2.0 * first["reward_chosen_std"], abs=1e-5)

    responses = write_jsonl([{"prompt": "Tell me about tea.", "response": "Happy to help!"}], "responses.jsonl")
    assert main(["score", "--reward-model", str(root / "run" / "member-1"), "--data", responses, "--out", str(tmp_path / "b.jsonl")]) == 0
    row = json.loads((tmp_path / "b.jsonl").read_text())
    assert set(row) == {"prompt", "response", "reward"}

    text = write_jsonl([{"text": "just text"}], "text.jsonl")
    assert main(["score", "--reward-model", str(root / "run"), "--data", text, "--out", str(tmp_path / "c.jsonl")]) == 2
    assert "scoring needs" in capsys.readouterr().err


def test_resume_from_a_checkpoint_reaches_the_same_weights(tmp_path, tiny_path, write_jsonl):
    from safetensors.torch import load_file

    common = {"model": tiny_path, "data": write_jsonl(pairs(32, 6)), "eval_fraction": 0, "max_steps": 4, "batch_size": 4,
              "learning_rate": 1e-3, "report_to": ["jsonl"], "mixed_precision": "no", "save_every": 2}
    reward({**common, "output_dir": str(tmp_path / "whole")})
    reward({**common, "output_dir": str(tmp_path / "cut"), "max_steps": 2, "save_every": 0})  # a run that stopped early...
    assert not (tmp_path / "cut" / "checkpoint-2").exists()
    import shutil

    shutil.copytree(tmp_path / "whole" / "checkpoint-2", tmp_path / "cut" / "checkpoint-2")  # ...with the checkpoint it had written
    reward({**common, "output_dir": str(tmp_path / "cut"), "resume": "auto"})
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    a, b = load_file(tmp_path / "whole/model/model.safetensors"), load_file(tmp_path / "cut/model/model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_real_model_reward_reaches_90_percent_on_hhh_mini(tmp_path, embedded_path):
    """SmolLM2-135M-Instruct, 30 steps of 8 hhh-mini pairs: held-out accuracy >= 0.9 (minutes on CPU)."""
    from alignkit.data.tasks.hhh_mini import generate, preference_rows

    splits = generate(seed=3, n_train=200, n_test=50)
    for name in ("train", "test"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preference_rows(splits[name])))
    summary = reward({"model": embedded_path, "data": str(tmp_path / "train.jsonl"), "eval_data": str(tmp_path / "test.jsonl"),
                      "output_dir": str(tmp_path / "run"), "learning_rate": 5e-5, "max_steps": 30, "batch_size": 8,
                      "max_length": 256, "report_to": ["jsonl"], "normalization_pairs": 64})
    assert summary["eval/rewards/accuracy"] >= 0.9 and summary["eval/calibration/ece"] < 0.2


def test_scoring_batches_pick_the_layout_that_computes_fewer_positions():
    from alignkit.models.reward import scoring_batches

    prompt = (1,) * 10
    answers = [(prompt, (5,)), (prompt, (6,)), (prompt, (7, 7))]  # shared: 10 + 3 * 2 = 16 positions; whole: 3 * 12 = 36
    [(chunk, rows)] = scoring_batches(answers, batch_size=3)
    assert sorted(chunk) == [0, 1, 2] and all(p == prompt for p, _ in rows)
    pairs = [((1,) * 4, (5,)), ((2,) * 4, (6,) * 10)]  # shared: 2 * 4 + 2 * 10 = 28; whole: 2 * 14 = 28, not fewer
    [(chunk, rows)] = scoring_batches(pairs, batch_size=2)
    assert chunk == [1, 0] and rows == [((), (2,) * 4 + (6,) * 10), ((), (1,) * 4 + (5,))]  # whole sequences, longest first
