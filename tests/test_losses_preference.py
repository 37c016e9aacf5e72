"""Preference and KTO losses against values derived by hand, and the direction of their gradients."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.losses.kto import kto_kl_estimate, kto_loss
from alignkit.losses.preference import PREFERENCE_LOSSES, PairLogps, preference_loss


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def pair(chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len, grad=False) -> PairLogps:
    t = lambda v: torch.tensor([float(v)], requires_grad=grad)  # noqa: E731
    return PairLogps(t(chosen), t(rejected), torch.tensor([float(ref_chosen)]), torch.tensor([float(ref_rejected)]),
                     torch.tensor([float(chosen_len)]), torch.tensor([float(rejected_len)]))


# Set A: chosen log-ratio +1, rejected -1 (h = 2), beta 0.1, |y_w| = 5, |y_l| = 4,
#        average log-probs -2 (chosen) and -3 (rejected).
A = dict(chosen=-10, rejected=-12, ref_chosen=-11, ref_rejected=-11, chosen_len=5, rejected_len=4)
# Set B: chosen log-ratio -2, rejected +1 (h = -3), beta 0.5, |y_w| = 10, |y_l| = 6,
#        average log-probs -2 and -2.5.
B = dict(chosen=-20, rejected=-15, ref_chosen=-18, ref_rejected=-16, chosen_len=10, rejected_len=6)


def orpo_by_hand(avg_w: float, avg_l: float, lam: float) -> float:
    log_odds = (avg_w - avg_l) - (math.log(1 - math.exp(avg_w)) - math.log(1 - math.exp(avg_l)))
    return -avg_w + lam * softplus(-log_odds)


CASES = [
    # (loss, inputs, beta, options, expected)
    ("sigmoid", A, 0.1, {}, softplus(-0.2)),
    ("sigmoid", B, 0.5, {}, softplus(1.5)),
    ("sigmoid", A, 0.1, {"label_smoothing": 0.1}, 0.9 * softplus(-0.2) + 0.1 * softplus(0.2)),  # conservative DPO
    ("sigmoid", B, 0.5, {"label_smoothing": 0.25}, 0.75 * softplus(1.5) + 0.25 * softplus(-1.5)),
    ("ipo", A, 0.1, {}, (1 / 5 + 1 / 4 - 5) ** 2),  # h_avg = 0.45, target 1/(2 beta) = 5
    ("ipo", B, 0.5, {}, (-2 / 10 - 1 / 6 - 1) ** 2),
    ("hinge", A, 0.1, {}, 1 - 0.2),
    ("hinge", B, 0.5, {}, 1 + 1.5),
    ("hinge", A, 1.0, {}, 0.0),  # margin beta*h = 2 is past 1
    ("robust", A, 0.1, {"label_smoothing": 0.1}, (0.9 * softplus(-0.2) - 0.1 * softplus(0.2)) / 0.8),
    ("robust", B, 0.5, {"label_smoothing": 0.2}, (0.8 * softplus(1.5) - 0.2 * softplus(-1.5)) / 0.6),
    ("robust", B, 0.5, {"label_smoothing": 0.0}, softplus(1.5)),  # eps = 0 is DPO
    ("simpo", A, 2.0, {"gamma_beta_ratio": 0.5}, softplus(-1.0)),  # 2 * ((-2 + 3) - 0.5) = 1
    ("simpo", B, 2.0, {"gamma_beta_ratio": 0.5}, math.log(2)),  # 2 * ((-2 + 2.5) - 0.5) = 0
    ("simpo", A, 1.0, {"gamma_beta_ratio": 0.0}, softplus(-1.0)),
    ("orpo", A, 0.1, {}, orpo_by_hand(-2.0, -3.0, 0.1)),
    ("orpo", B, 0.2, {}, orpo_by_hand(-2.0, -2.5, 0.2)),
    ("sigmoid", A, 0.1, {"rpo_alpha": 1.0}, softplus(-0.2) + 2.0),  # RPO: + alpha * chosen mean token NLL (-(-10)/5)
    ("ipo", B, 0.5, {"rpo_alpha": 0.5}, (-2 / 10 - 1 / 6 - 1) ** 2 + 0.5 * 2.0),  # -(-20)/10 = 2
]


@pytest.mark.parametrize("loss_type,inputs,beta,options,expected", CASES)
def test_loss_matches_hand_derived_value(loss_type, inputs, beta, options, expected):
    loss, _ = preference_loss(loss_type, pair(**inputs), beta, **options)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_orpo_hand_value_written_out():
    # Set A by hand: log odds = 1 - (log(1 - e^-2) - log(1 - e^-3)) = 1 + 0.0943443 = 1.0943443
    loss, _ = preference_loss("orpo", pair(**A), 0.1)
    assert loss.item() == pytest.approx(2 + 0.1 * softplus(-1.0943443), rel=1e-6)


def gradients(loss_type, inputs, beta, **options):
    logps = pair(**inputs, grad=True)
    loss, _ = preference_loss(loss_type, logps, beta, **options)
    loss.backward()
    return logps.chosen.grad.item(), logps.rejected.grad.item()


@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("ipo", 0.1), ("hinge", 0.1), ("robust", 0.1), ("simpo", 2.0), ("orpo", 0.1)])
@pytest.mark.parametrize("inputs", [A, B], ids=["A", "B"])
def test_gradient_raises_chosen_and_lowers_rejected(loss_type, beta, inputs):
    # a gradient-descent step moves each log-prob against its gradient
    options = {"label_smoothing": 0.1} if loss_type == "robust" else {}
    d_chosen, d_rejected = gradients(loss_type, inputs, beta, **options)
    assert d_chosen < 0 and d_rejected > 0


def test_gradient_stops_or_reverses_where_it_should():
    # hinge: past the margin (beta*h = 2 > 1) there is no gradient
    assert gradients("hinge", A, 1.0) == (0.0, 0.0)
    # IPO regresses h_avg to 1/(2 beta): at beta = 5 the target is 0.1 < 0.45, so it pulls the pair back together
    d_chosen, d_rejected = gradients("ipo", A, 5.0)
    assert d_chosen > 0 and d_rejected < 0
    # conservative DPO stops pushing once sigmoid(beta h) = 1 - eps: h = 2, beta = 10 gives sigmoid(20) > 0.9
    d_chosen, d_rejected = gradients("sigmoid", A, 10.0, label_smoothing=0.1)
    assert d_chosen > 0 and d_rejected < 0
    # plain DPO at the same point still pushes, a little
    d_chosen, _ = gradients("sigmoid", A, 10.0)
    assert -1e-6 < d_chosen < 0


def test_dpo_gradient_is_beta_sigmoid_of_negative_margin():
    # d/d log pi(y_w) of -log sigmoid(beta h) is -beta * sigmoid(-beta h) (DPO paper, Sec. 4)
    d_chosen, d_rejected = gradients("sigmoid", B, 0.5)
    expected = 0.5 / (1 + math.exp(-1.5))
    assert d_chosen == pytest.approx(-expected, rel=1e-6) and d_rejected == pytest.approx(expected, rel=1e-6)


def test_metrics_are_the_stable_names_with_hand_values():
    logps = PairLogps(torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -15.0]), torch.tensor([-11.0, -18.0]),
                      torch.tensor([-11.0, -16.0]), torch.tensor([5.0, 10.0]), torch.tensor([4.0, 6.0]))
    _, m = preference_loss("sigmoid", logps, 0.5)
    # rewards = 0.5 * log-ratios: chosen [0.5, -1.0], rejected [-0.5, 0.5]
    assert m["rewards/chosen"].item() == pytest.approx(-0.25)
    assert m["rewards/rejected"].item() == pytest.approx(0.0)
    assert m["rewards/margin"].item() == pytest.approx(-0.25)  # margins 1.0 and -1.5
    assert m["rewards/accuracy"].item() == pytest.approx(0.5)
    assert m["logps/chosen"].item() == pytest.approx(-15.0)
    assert m["logps/rejected"].item() == pytest.approx(-13.5)
    assert m["kl/ref"].item() == pytest.approx(-0.5)  # chosen log-ratios 1 and -2
    _, free = preference_loss("simpo", logps._replace(ref_chosen=None, ref_rejected=None), 2.0)
    assert "kl/ref" not in free and free["rewards/chosen"].item() == pytest.approx(2 * (-2 + -2) / 2)


def test_num_items_makes_accumulation_equal_one_big_batch():
    torch.manual_seed(0)
    chosen, rejected = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)
    refs, lengths = torch.randn(8), torch.randint(1, 9, (8,)).float()
    full = PairLogps(chosen, rejected, refs, refs.flip(0), lengths, lengths.flip(0))
    for loss_type in PREFERENCE_LOSSES:
        preference_loss(loss_type, full, 0.3)[0].backward()
        whole = (chosen.grad.clone(), rejected.grad.clone())
        chosen.grad = rejected.grad = None
        for half in (slice(0, 4), slice(4, 8)):
            part = PairLogps(*(t[half] for t in full))
            preference_loss(loss_type, part, 0.3, num_items=8)[0].backward()
        assert torch.allclose(chosen.grad, whole[0], atol=1e-6) and torch.allclose(rejected.grad, whole[1], atol=1e-6), loss_type
        chosen.grad = rejected.grad = None


# ---------------------------------------------------------------- KTO

def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_kto_loss_hand_values():
    logps, ref = torch.tensor([-5.0, -6.0]), torch.tensor([-6.0, -5.0])  # log-ratios +1 (desirable), -1 (undesirable)
    labels = torch.tensor([True, False])
    loss, m = kto_loss(logps, ref, labels, 0.5, beta=0.1)
    assert loss.item() == pytest.approx(((1 - sigmoid(0.05)) + (1 - sigmoid(0.15))) / 2, rel=1e-6)
    assert m["rewards/chosen"].item() == pytest.approx(0.1) and m["rewards/rejected"].item() == pytest.approx(-0.1)
    assert m["kl/batch"].item() == pytest.approx(0.5) and m["rewards/accuracy"].item() == 1.0
    # weights scale each side's term: lambda_D = 2, lambda_U = 0.5
    loss, _ = kto_loss(logps, ref, labels, 0.5, beta=0.1, desirable_weight=2.0, undesirable_weight=0.5)
    assert loss.item() == pytest.approx((2 * (1 - sigmoid(0.05)) + 0.5 * (1 - sigmoid(0.15))) / 2, rel=1e-6)


def test_kto_second_input_set_and_clamped_baseline():
    logps, ref = torch.tensor([-3.0, -8.0, -4.0]), torch.tensor([-5.0, -4.0, -4.0])  # log-ratios +2, -4, 0
    labels = torch.tensor([False, True, True])
    # a negative KL estimate is clamped to 0
    loss, m = kto_loss(logps, ref, labels, -3.0, beta=0.5)
    expected = ((1 - sigmoid(0.5 * (0 - 2))) + (1 - sigmoid(0.5 * (-4 - 0))) + (1 - sigmoid(0.0))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6) and m["kl/batch"].item() == 0.0


def test_kto_kl_estimate_is_the_mismatched_mean_and_detached():
    kl_logps = torch.tensor([-7.0, -9.0], requires_grad=True)
    z = kto_kl_estimate(kl_logps, torch.tensor([-8.0, -8.0]))
    assert z.item() == pytest.approx(0.0) and not z.requires_grad
    logps = torch.tensor([-5.0, -6.0], requires_grad=True)
    z0 = torch.tensor(0.7, requires_grad=True)
    loss, _ = kto_loss(logps, torch.tensor([-6.0, -5.0]), torch.tensor([True, False]), z0)
    loss.backward()
    assert z0.grad is None  # z0 sets the reference point; it gets no gradient
    assert logps.grad[0] < 0 < logps.grad[1]  # desirable up, undesirable down


def test_kto_baseline_is_the_reference_point():
    # a desirable row's loss grows with z0 (the same log-ratio is less of a gain), and its push is
    # strongest where the log-ratio sits at z0, where the sigmoid is steepest
    logps, ref, labels = torch.tensor([-5.0], requires_grad=True), torch.tensor([-6.0]), torch.tensor([True])  # r = 1
    losses, grads = [], []
    for z0 in (0.0, 1.0, 3.0):
        logps.grad = None
        loss, _ = kto_loss(logps, ref, labels, z0, beta=1.0)
        loss.backward()
        losses.append(loss.item())
        grads.append(logps.grad.item())
    assert losses[0] < losses[1] < losses[2]
    assert grads[1] == pytest.approx(-0.25) and grads[1] < grads[0] < 0 and grads[1] < grads[2] < 0
