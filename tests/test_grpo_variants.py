"""GRPO that learns from every batch: GSPO's sequence ratio, REINFORCE++'s global normalisation, DAPO's overlong
shaping and dynamic sampling, each checked against values worked out by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignkit.losses.policy import POLICY_LOSSES, gspo_loss
from alignkit.rl.advantages import ESTIMATORS, AdvantageInputs, compute_advantages
from alignkit.rl.dynamic_sampling import sample_informative_groups, zero_variance_groups
from alignkit.rl.rollout import pack_rollout
from alignkit.rl.shaping import overlong_penalty


def test_gspo_clips_whole_responses_by_their_geometric_mean_ratio():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    old = torch.zeros(2, 3)
    logps = torch.tensor([[0.1, 0.3, 5.0], [0.0, 0.0, 0.3]], requires_grad=True)  # the masked 5.0 must not count
    loss, metrics = gspo_loss(logps, old, torch.tensor([1.0, -1.0]), mask, clip_range=0.2)
    s0, s1 = math.exp(0.2), math.exp(0.1)  # token means 0.2 and 0.1; s0 > 1.2, so response 0 is clipped
    assert s0 > 1.2
    # response 0 (A = +1): min(s0, 1.2) = 1.2 -> -1.2 per token; response 1 (A = -1): min(-s1, -s1) -> +s1 per token
    assert loss.item() == pytest.approx((-1.2 + s1) / 2, abs=1e-6)  # sequence_mean: each response's token mean, averaged
    assert metrics["policy/clipfrac"].item() == pytest.approx(2 / 5)  # response 0's two tokens were clipped
    loss.backward()
    assert torch.allclose(logps.grad[0], torch.zeros(3))  # clipped: no gradient anywhere in the response
    assert torch.allclose(logps.grad[1], torch.full((3,), s1 / 6))  # d/dl_t of (s1 / 2), s1 = exp(mean of 3 tokens)
    assert POLICY_LOSSES["gspo"] is gspo_loss


def test_gspo_equals_ppo_clip_when_every_token_ratio_is_one():
    mask, old = torch.ones(3, 4), torch.randn(3, 4)
    advantages = torch.tensor([0.5, -1.0, 2.0])
    loss, _ = gspo_loss(old.clone(), old, advantages, mask, aggregation="sequence_mean")
    reference, _ = POLICY_LOSSES["ppo_clip"](old.clone(), old, advantages, mask, aggregation="sequence_mean")
    assert loss.item() == pytest.approx(reference.item()) == pytest.approx(-advantages.mean().item())


def _inputs(scores, group_size=1, tokens=2):
    scores = torch.tensor(scores)
    return AdvantageInputs(scores=scores, mask=torch.ones(len(scores), tokens), group_size=group_size)


def test_reinforce_pp_normalises_returns_over_the_whole_batch():
    advantages, returns = compute_advantages("reinforce_pp", _inputs([1.0, 2.0, 3.0, 4.0]))
    # every token's return is its response's score: [1,1,2,2,3,3,4,4]; mean 2.5, unbiased variance 10/7
    expected = (torch.tensor([1.0, 2.0, 3.0, 4.0]) - 2.5) / math.sqrt(10 / 7)
    assert torch.allclose(advantages[:, 0], expected, atol=1e-5) and torch.allclose(advantages[:, 1], expected, atol=1e-5)
    assert torch.allclose(returns[:, 0], torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_reinforce_pp_baseline_subtracts_the_group_mean_then_normalises_globally():
    advantages, _ = compute_advantages("reinforce_pp_baseline", _inputs([1.0, 2.0, 3.0, 4.0], group_size=2))
    # group means 1.5 and 3.5 -> [-0.5, 0.5, -0.5, 0.5] at both tokens; mean 0, unbiased variance 2/7
    expected = torch.tensor([-0.5, 0.5, -0.5, 0.5]) / math.sqrt(2 / 7)
    assert torch.allclose(advantages[:, 0], expected, atol=1e-5)
    assert {"reinforce_pp", "reinforce_pp_baseline"} <= set(ESTIMATORS)


def test_overlong_penalty_by_hand():
    lengths = torch.tensor([5, 6, 8, 10, 11])
    assert overlong_penalty(lengths, max_new_tokens=10, buffer=4).tolist() == [0.0, 0.0, -0.5, -1.0, -1.0]
    assert overlong_penalty(lengths, max_new_tokens=10, buffer=0).tolist() == [0.0] * 5


def test_zero_variance_groups():
    raw = torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0, 3.0, 0.0])
    valid = torch.tensor([True, True, True, True, True, True, True, False])
    assert zero_variance_groups(raw, valid, 2).tolist() == [True, False, True, True]  # the last has one valid response


class _Tokenizer:
    pad_token_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_dynamic_sampling_drops_flat_groups_and_refills_from_fresh_prompts():
    rounds = iter([[1.0, 1.0, 0.0, 2.0], [5.0, 6.0, 3.0, 3.0]])  # round 1: prompt a flat, b varies; round 2: c varies, d flat
    fresh = iter([([[30], [40]], [{"prompt": "c"}, {"prompt": "d"}])])

    def sample(ids):
        return pack_rollout([p for p in ids for _ in range(2)], [[p[0] + k] for p in ids for k in range(2)], [True] * 4, 0,
                            _Tokenizer(), [i for i in range(len(ids)) for _ in range(2)])

    def score(rollout, rows):
        return torch.tensor(next(rounds)), torch.ones(4, dtype=torch.bool), {"f": 0.0}

    rollout, rows, raw, valid, _, metrics = sample_informative_groups(
        sample, score, [[10], [20]], [{"prompt": "a"}, {"prompt": "b"}], lambda: next(fresh), 2, 3, _Tokenizer())
    assert [r["prompt"] for r in rows] == ["b", "c"] and raw.tolist() == [0.0, 2.0, 5.0, 6.0]
    assert rollout.response_ids == [[20], [21], [30], [31]] and rollout.prompt_index == [0, 0, 1, 1]
    assert metrics == {"dynamic/zero_variance_share": 0.5, "dynamic/extra_rounds": 1, "dynamic/groups": 2}


def initial_letter_words(prompts, responses, **columns):
    return [float(sum(w[:1] in "aeiou" for w in r.split())) for r in responses]


def test_grpo_with_dynamic_sampling_and_the_new_variants_runs_and_logs_what_it_dropped(tmp_path, write_jsonl, tiny_path):
    import alignkit

    prompts = write_jsonl([{"prompt": f"Write about topic {i}."} for i in range(24)], "prompts.jsonl")
    alignkit.grpo(model=tiny_path, data=prompts, reward_function=f"{__name__}:initial_letter_words", output_dir=str(tmp_path / "g"),
                  mixed_precision="no", max_new_tokens=6, report_to=["jsonl"], max_steps=3, prompts_per_step=2, group_size=4,
                  batch_size=8, dynamic_sampling=True, dynamic_sampling_rounds=2, policy_loss="gspo", advantage="reinforce_pp_baseline",
                  overlong_buffer=2, learning_rate=1e-3)
    logged = [json.loads(line) for line in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 3
    for line in logged:
        assert 0.0 <= line["dynamic/zero_variance_share"] <= 1.0 and 0 <= line["dynamic/extra_rounds"] <= 2
        assert 0 <= line["dynamic/groups"] <= 2 and line["reward/overlong_penalty"] <= 0.0
