"""Advantage estimators, KL estimators and KL control against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.losses.kl import KL_ESTIMATORS, kl_per_token
from alignkit.rl.advantages import AdvantageInputs, compute_advantages, gae_advantages, token_rewards, whiten
from alignkit.rl.kl_control import AdaptiveKLController, FixedKLController


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# ---------------------------------------------------------------- GAE

def test_gae_matches_hand_computation():
    # rewards only at the end, gamma 1, lambda 0.9
    # t=2: delta = 1 - 0.7 = 0.3                A2 = 0.3
    # t=1: delta = 0 + 0.7 - 0.6 = 0.1          A1 = 0.1 + 0.9 * 0.3 = 0.37
    # t=0: delta = 0 + 0.6 - 0.5 = 0.1          A0 = 0.1 + 0.9 * 0.37 = 0.433
    advantages, returns = gae_advantages(t([0, 0, 1.0]), t([0.5, 0.6, 0.7]), t([1, 1, 1]), gamma=1.0, lam=0.9)
    assert torch.allclose(advantages, t([0.433, 0.37, 0.3]), atol=1e-6)
    assert torch.allclose(returns, t([0.933, 0.97, 1.0]), atol=1e-6)


def test_gae_with_discount_and_padding_on_both_sides():
    # the same response placed after two prompt columns and before a pad column; gamma 0.5, lambda 1
    # t=3: delta = 2 - 1 = 1                    A = 1
    # t=2: delta = 0 + 0.5 * 1 - 1 = -0.5       A = -0.5 + 0.5 * 1 = 0
    rewards, values, mask = t([9, 9, 0, 2, 9]), t([5, 5, 1, 1, 5]), t([0, 0, 1, 1, 0])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.5, lam=1.0)
    assert torch.allclose(advantages, t([0, 0, 0, 1, 0]))
    assert torch.allclose(returns, t([0, 0, 1, 2, 0]))


def test_gae_rows_are_independent():
    rewards, values, mask = t([0, 1, 0], [0, 0, 3]), t([0.2, 0.4, 0], [0.1, 0.1, 0.1]), t([1, 1, 0], [1, 1, 1])
    both, _ = gae_advantages(rewards, values, mask, 0.9, 0.8)
    for row in range(2):
        alone, _ = gae_advantages(rewards[row:row + 1], values[row:row + 1], mask[row:row + 1], 0.9, 0.8)
        assert torch.allclose(both[row], alone[0])
    # row 0 ends at t=1: A1 = 1 - 0.4 = 0.6; A0 = (0 + 0.9*0.4 - 0.2) + 0.72 * 0.6 = 0.592
    assert torch.allclose(both[0], t([0.592, 0.6, 0.0]), atol=1e-6)


# ---------------------------------------------------------------- per-token rewards

def test_token_rewards_put_score_on_last_token_and_kl_everywhere():
    mask = t([0, 1, 1, 1, 0], [0, 1, 1, 0, 0])
    kl = t([0, 0.1, 0.2, 0.3, 0], [0, 1.0, -1.0, 0, 0])
    rewards = token_rewards(t(2.0, -1.0), mask, kl, kl_coef=0.5)
    assert torch.allclose(rewards, t([0, -0.05, -0.1, 2 - 0.15, 0], [0, -0.5, 0.5 - 1, 0, 0]))


# ---------------------------------------------------------------- critic-free estimators

SCORES = t(1, 2, 3, 6, 0, 0, 4, 4)  # two prompts x G=4
MASK = torch.ones(8, 3)


def estimate(name, scores=SCORES, **kw):
    advantages, returns = compute_advantages(name, AdvantageInputs(scores=scores, mask=MASK, group_size=4, **kw))
    assert torch.allclose(advantages, returns)
    assert torch.allclose(advantages, advantages[:, :1].expand_as(advantages))  # no KL: the same for every token
    return advantages[:, 0]


def test_rloo_leave_one_out_baseline():
    # prompt 1: 1 - 11/3, 2 - 10/3, 3 - 9/3, 6 - 6/3; prompt 2: 0 - 8/3, 0 - 8/3, 4 - 4/3, 4 - 4/3
    expected = t(-8 / 3, -4 / 3, 0, 4, -8 / 3, -8 / 3, 8 / 3, 8 / 3)
    assert torch.allclose(estimate("rloo"), expected, atol=1e-6)


def test_grpo_group_normalisation():
    # prompt 1: mean 3, unbiased std sqrt((4 + 1 + 0 + 9) / 3); prompt 2: mean 2, std sqrt(16/3)
    std1, std2 = math.sqrt(14 / 3), math.sqrt(16 / 3)
    expected = t(-2 / (std1 + 1e-4), -1 / (std1 + 1e-4), 0, 3 / (std1 + 1e-4), -2 / (std2 + 1e-4), -2 / (std2 + 1e-4), 2 / (std2 + 1e-4), 2 / (std2 + 1e-4))
    assert torch.allclose(estimate("grpo"), expected, atol=1e-6)


def test_dr_grpo_only_centres():
    assert torch.allclose(estimate("grpo", scale_rewards=False), t(-2, -1, 0, 3, -2, -2, 2, 2))


def test_grpo_identical_rewards_give_zero_advantage():
    assert torch.equal(estimate("grpo", scores=t(5, 5, 5, 5, 1, 1, 1, 1)), torch.zeros(8))


def test_reinforce_and_batch_mean_baseline():
    assert torch.allclose(estimate("reinforce"), SCORES)
    assert torch.allclose(estimate("reinforce_baseline"), SCORES - 2.5)


def test_invalid_responses_are_left_out_of_baselines():
    valid = torch.tensor([True, True, True, False, True, True, True, True])
    # prompt 1 without the 6: RLOO baselines (2+3)/2, (1+3)/2, (1+2)/2; the invalid one gets 0
    advantages = estimate("rloo", valid=valid)
    assert torch.allclose(advantages[:4], t(-1.5, 0.0, 1.5, 0.0))
    # GRPO over {1, 2, 3}: mean 2, std 1
    assert torch.allclose(estimate("grpo", valid=valid)[:4], t(-1 / (1 + 1e-4), 0, 1 / (1 + 1e-4), 0), atol=1e-6)
    # batch mean over the 7 valid scores: (1+2+3+0+0+4+4)/7 = 2
    assert torch.allclose(estimate("reinforce_baseline", valid=valid)[:3], t(-1, 0, 1))


def test_critic_free_return_to_go_includes_kl_penalty():
    # RLOO with the KL in the reward: A_t = sum over later tokens of -beta*kl, plus the shaped score
    scores, mask = t(1.0, 3.0), torch.ones(2, 3)
    kl = t([0.1, 0.2, 0.3], [0.0, 0.0, 0.0])
    inputs = AdvantageInputs(scores=scores, mask=mask, kl=kl, kl_coef=1.0, group_size=2)
    advantages, _ = compute_advantages("rloo", inputs)
    # shaped scores: 1 - 3 = -2 and 3 - 1 = 2
    assert torch.allclose(advantages[0], t(-2 - 0.6, -2 - 0.5, -2 - 0.3), atol=1e-6)
    assert torch.allclose(advantages[1], t(2, 2, 2))


def test_gae_estimator_uses_values_and_whitening():
    mask = t([1, 1, 1], [1, 1, 0])
    values = t([0.5, 0.6, 0.7], [0.0, 0.0, 0.0])
    raw, returns = compute_advantages("gae", AdvantageInputs(scores=t(1.0, 2.0), mask=mask, values=values, lam=0.9))
    assert torch.allclose(raw[0], t(0.433, 0.37, 0.3), atol=1e-6)
    assert torch.allclose(raw[1], t(0.9 * 2.0, 2.0, 0.0))  # V = 0, gamma 1: A0 = 0.9 * A1
    white, _ = compute_advantages("gae", AdvantageInputs(scores=t(1.0, 2.0), mask=mask, values=values, lam=0.9), whiten_advantages=True)
    picked = white[mask.bool()]
    assert abs(picked.mean().item()) < 1e-6 and abs(picked.std().item() - 1) < 1e-4
    assert white[1, 2] == 0


def test_whiten_keeps_mean_when_asked():
    values, mask = t([1.0, 2.0, 3.0, 100.0]), t([1, 1, 1, 0])
    out = whiten(values, mask, shift_mean=False)
    assert torch.allclose(out, t([1.0, 2.0, 3.0, 0.0]), atol=1e-4)  # std of 1,2,3 is 1


def test_groups_must_divide_the_batch():
    with pytest.raises(ValueError):
        compute_advantages("grpo", AdvantageInputs(scores=t(1, 2, 3), mask=torch.ones(3, 2), group_size=2))


# ---------------------------------------------------------------- KL estimators and control

def test_kl_estimators_by_hand():
    logps, ref = t([-1.0, -2.0]), t([-2.0, -2.0])
    mask = t([1, 1])
    assert torch.allclose(kl_per_token(logps, ref, mask, "k1"), t([1.0, 0.0]))
    assert torch.allclose(kl_per_token(logps, ref, mask, "k2"), t([0.5, 0.0]))
    assert torch.allclose(kl_per_token(logps, ref, mask, "k3"), t([math.exp(-1) + 1 - 1, 0.0]))
    assert torch.equal(kl_per_token(logps, ref, t([0, 1]), "k1"), t([0.0, 0.0]))


def test_k1_and_k3_are_unbiased_for_the_true_kl():
    torch.manual_seed(0)
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.3, 0.3, 0.4])
    true_kl = (p * (p / q).log()).sum()
    samples = torch.multinomial(p, 200_000, replacement=True)
    logps, ref = p.log()[samples], q.log()[samples]
    for name in ("k1", "k3"):
        assert abs(KL_ESTIMATORS[name](logps, ref).mean() - true_kl) < 0.01
    assert (KL_ESTIMATORS["k3"](logps, ref) >= 0).all()


def test_k3_gradient_pulls_toward_the_reference():
    logps = torch.tensor([-1.0], requires_grad=True)
    KL_ESTIMATORS["k3"](logps, torch.tensor([-2.0])).sum().backward()
    assert logps.grad.item() > 0  # minimising lowers log pi where pi > pi_ref: d/dx [e^(r-x) - (r-x) - 1] = 1 - e^(r-x)
    assert abs(logps.grad.item() - (1 - math.exp(-1))) < 1e-6


def test_adaptive_kl_controller_follows_ziegler():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL 9: error clip(9/6 - 1) = 0.2; beta = 0.1 * (1 + 0.2 * 100 / 10000)
    assert ctl.update(9.0, 100) == pytest.approx(0.1 * 1.002)
    # KL 5.4: error -0.1; beta *= 1 - 0.1 * 500 / 10000
    assert ctl.update(5.4, 500) == pytest.approx(0.1 * 1.002 * 0.995)
    assert FixedKLController(0.3).update(100.0, 100) == 0.3
