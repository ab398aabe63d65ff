"""Each loss and reward against a value worked out by hand on fixed tensors."""
from __future__ import annotations

import math

import pytest
import torch

from mpdistil import losses as L


def test_kl_soft_loss_matches_hand_value():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])  # teacher probs (3/4, 1/4) at tau=1
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert L.kl_soft_loss(s, t, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # tau^2 scaling: logits scaled by tau give the same probabilities at temperature tau
    assert L.kl_soft_loss(2 * s, 2 * t, 2.0).item() == pytest.approx(4 * expected, rel=1e-6)


def test_prob_mse_soft_loss_matches_hand_value():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    expected = ((0.75 - 0.5) ** 2 + (0.25 - 0.5) ** 2) / 2
    assert L.prob_mse_soft_loss(s, t, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_distillation_loss_combines_terms():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    y = torch.tensor([0])
    total, parts = L.distillation_loss(s, t, y, "classification", alpha=0.25, temperature=1.0)
    assert parts["ce"] == pytest.approx(math.log(2.0), rel=1e-6)
    assert total.item() == pytest.approx(0.75 * parts["ce"] + 0.25 * parts["kd"], rel=1e-6)
    only_ce, parts0 = L.distillation_loss(s, t, y, "classification", alpha=0.0, temperature=1.0)
    assert "kd" not in parts0 and only_ce.item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_pkd_loss_normalises_and_sums_layers():
    a = [torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])]
    b = [torch.tensor([[6.0, 8.0]]), torch.tensor([[0.0, 2.0]])]
    # layer 1: identical after normalising -> 0; layer 2: (1,0) vs (0,1) -> mean((1,1)) = 1
    assert L.pkd_loss(a, b).item() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("how,expected", [("skip", [(1, 2), (2, 4), (3, 6)]), ("first", [(1, 1), (2, 2), (3, 3)]),
                                          ("last", [(1, 4), (2, 5), (3, 6)])])
def test_layer_maps(how, expected):
    assert L.layer_map(3, 6, how) == expected


def test_collaborative_and_competitive_losses():
    on_t = torch.tensor([[math.log(3.0), 0.0]])  # p(y=0) = 0.75
    on_s = torch.tensor([[0.0, 0.0]])  # p(y=0) = 0.5
    y = torch.tensor([0])
    col = L.collaborative_loss(on_t, on_s, y, "classification")
    assert col.item() == pytest.approx(0.5 * -math.log(0.75) + 0.5 * -math.log(0.5), rel=1e-6)
    com = L.competitive_loss(on_t, on_s, y, "classification")
    assert com.item() == pytest.approx(-math.log(0.75) - 0.75 + 0.5, rel=1e-5)


def test_regression_scores_use_negative_absolute_error():
    pred, y = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 3.0])
    assert L.label_score(pred, y, "regression").tolist() == [-1.0, 0.0]


def test_rewards_binary_and_real():
    s = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # p(y=0): 0.75, 0.5
    m = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # p(y=0): 0.5, 0.75
    y = torch.tensor([0, 0])
    assert L.reward(s, m, y, "classification", "binary", normaliser=4) == pytest.approx(1 / 4)
    assert L.reward(s, m, y, "classification", "real", normaliser=4) == pytest.approx(((0.25) + (-0.25)) / 4)


def test_curriculum_student_loss():
    s = torch.tensor([[0.0, 0.0]])
    mt = torch.tensor([[math.log(3.0), 0.0]])
    y = torch.tensor([0])
    assert L.curriculum_student_loss(s, y, "classification").item() == pytest.approx(math.log(2) - 0.5, rel=1e-6)
    assert L.curriculum_student_loss(s, y, "classification", mt).item() == pytest.approx(
        math.log(2) - 0.5 + 0.75, rel=1e-6)


def test_discounted_returns_and_reinforce():
    ret = L.discounted_returns([1.0, 0.0, 2.0], 0.5)
    assert ret.tolist() == pytest.approx([1.5, 1.0, 2.0])
    log_probs = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    loss = L.reinforce_loss(log_probs, [1.0, 0.0, 2.0], 0.5)
    adv = ret - ret.mean()
    assert loss.item() == pytest.approx(float(-(adv * log_probs.detach()).mean()), rel=1e-6)
