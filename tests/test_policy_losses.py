"""PPO-clip, REINFORCE and clipped value losses against hand-derived values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.losses.policy import aggregate_tokens, ppo_clip_loss, reinforce_loss
from alignkit.losses.value import clipped_value_loss

# five tokens of one response, ratios rho = exp(logp - old) and advantages chosen to hit every branch
RATIOS = [1.5, 0.5, 1.0, 1.1, 0.5]
ADVANTAGES = [1.0, 1.0, -1.0, -1.0, -1.0]
# per-token loss -min(rho * A, clip(rho, 0.8, 1.2) * A):
#   1.5, A=+1: min(1.5, 1.2) = 1.2   -> -1.2  clipped high (no gradient)
#   0.5, A=+1: min(0.5, 0.8) = 0.5   -> -0.5  unclipped (the pessimistic branch keeps the gradient)
#   1.0, A=-1: -1                    ->  1.0
#   1.1, A=-1: min(-1.1, -1.1)       ->  1.1  inside the clip range
#   0.5, A=-1: min(-0.5, -0.8) = -0.8 -> 0.8  clipped low (no gradient)
PER_TOKEN = [-1.2, -0.5, 1.0, 1.1, 0.8]


def inputs():
    logps = torch.log(torch.tensor([RATIOS])).requires_grad_(True)
    return logps, torch.zeros(1, 5), torch.tensor([ADVANTAGES]), torch.ones(1, 5)


def test_ppo_clip_loss_by_hand_on_both_sides():
    logps, old, advantages, mask = inputs()
    loss, metrics = ppo_clip_loss(logps, old, advantages, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(sum(PER_TOKEN) / 5, abs=1e-6)
    assert metrics["policy/clipfrac"].item() == pytest.approx(2 / 5)
    loss.backward()
    # d/dlogp of -rho*A = -rho*A / 5 where unclipped, 0 where clipped
    expected = [0.0, -0.5 / 5, 1.0 / 5, 1.1 / 5, 0.0]
    assert torch.allclose(logps.grad, torch.tensor([expected]), atol=1e-6)


def test_ppo_clip_higher_upper_bound():
    logps, old, advantages, mask = inputs()
    loss, metrics = ppo_clip_loss(logps, old, advantages, mask, clip_range=0.2, clip_range_high=0.6)
    # token 1 (rho 1.5, A=+1) is now inside [0.8, 1.6]: -1.5 instead of -1.2
    assert loss.item() == pytest.approx((sum(PER_TOKEN) - 0.3) / 5, abs=1e-6)
    assert metrics["policy/clipfrac"].item() == pytest.approx(1 / 5)


def test_ppo_approx_kl_and_ratio_metrics():
    logps, old, advantages, mask = inputs()
    _, metrics = ppo_clip_loss(logps, old, advantages, mask)
    expected_kl = sum((r - 1) - math.log(r) for r in RATIOS) / 5
    assert metrics["policy/approx_kl"].item() == pytest.approx(expected_kl, abs=1e-6)
    assert metrics["policy/ratio"].item() == pytest.approx(sum(RATIOS) / 5, abs=1e-6)


def test_ppo_at_ratio_one_equals_reinforce_gradient():
    torch.manual_seed(0)
    logps = torch.randn(3, 4).requires_grad_(True)
    advantages, mask = torch.randn(3), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1.0]])
    ppo, _ = ppo_clip_loss(logps, logps.detach(), advantages, mask)
    ppo_grad, = torch.autograd.grad(ppo, logps)
    reinforce, _ = reinforce_loss(logps, logps.detach(), advantages, mask)
    reinforce_grad, = torch.autograd.grad(reinforce, logps)
    assert torch.allclose(ppo_grad, reinforce_grad, atol=1e-6)
    assert ppo.item() == pytest.approx(-(advantages[:, None] * mask).sum().item() / mask.sum().item(), abs=1e-6)


def test_reinforce_loss_by_hand():
    logps = torch.tensor([[-1.0, -2.0, -3.0]])
    loss, metrics = reinforce_loss(logps, logps, torch.tensor([2.0]), torch.tensor([[1, 1, 0.0]]))
    assert loss.item() == pytest.approx(-(2 * -1 + 2 * -2) / 2)
    assert metrics["policy/clipfrac"].item() == 0


def test_aggregations_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert aggregate_tokens(values, mask, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate_tokens(values, mask, "sequence_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate_tokens(values, mask, "constant", max_tokens=8).item() == pytest.approx(10 / (2 * 8))


@pytest.mark.parametrize("mode", ["token_mean", "sequence_mean", "constant"])
def test_micro_batches_add_up_to_the_minibatch_loss(mode):
    torch.manual_seed(1)
    logps, old = torch.randn(6, 5), torch.randn(6, 5) * 0.1
    advantages = torch.randn(6)
    mask = (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1
    full, _ = ppo_clip_loss(logps, old, advantages, mask, aggregation=mode, max_tokens=5)
    counts = dict(num_tokens=mask.sum(), num_sequences=torch.tensor(6.0), max_tokens=5)
    parts = sum(ppo_clip_loss(logps[i:i + 2], old[i:i + 2], advantages[i:i + 2], mask[i:i + 2], aggregation=mode, **counts)[0]
                for i in range(0, 6, 2))
    assert parts.item() == pytest.approx(full.item(), abs=1e-6)


def test_masked_tokens_do_not_count():
    logps, old, advantages, _ = inputs()
    mask = torch.tensor([[1, 1, 0, 0, 0.0]])
    loss, metrics = ppo_clip_loss(logps, old, advantages, mask)
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2, abs=1e-6)
    assert metrics["policy/clipfrac"].item() == pytest.approx(1 / 2)


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0, 0.55, 3.0]], requires_grad=True)
    old = torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 0.6, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0.0]])
    # token 1: unclipped (1-2)^2 = 1; V clipped to 0.7: (0.7-2)^2 = 1.69 -> max 1.69 (clipped branch, no gradient)
    # token 2: unclipped 0; V clipped to 0.3: 0.09 -> 0.09 (clipped branch)
    # token 3: inside the range: (0.55 - 0.6)^2 = 0.0025
    loss, metrics = clipped_value_loss(values, old, returns, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.09 + 0.0025) / 3, abs=1e-6)
    assert metrics["value/clipfrac"].item() == pytest.approx(2 / 3)
    loss.backward()
    assert torch.allclose(values.grad, torch.tensor([[0.0, 0.0, (0.55 - 0.6) / 3, 0.0]]), atol=1e-6)


def test_value_loss_without_clipping():
    values, returns = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    loss, _ = clipped_value_loss(values, values, returns, torch.ones(1, 2), clip_range=0.0)
    assert loss.item() == pytest.approx(0.5 * (1 + 4) / 2)
