"""Fidelity metrics against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mpdistil.metrics.fidelity import (
    classification_fidelity,
    ece,
    regression_fidelity,
    reliability_bins,
)


def _random_probs(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    logits = rng.normal(size=(n, c)) * 2.0
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_identical_models_are_perfectly_faithful() -> None:
    rng = np.random.default_rng(0)
    p = _random_probs(rng, 40, 3)
    y = rng.integers(0, 3, size=40)
    out = classification_fidelity(p, p.copy(), y)
    assert out["agreement"] == 1.0
    assert out["kl_teacher_student"] == pytest.approx(0.0, abs=1e-12)
    assert out["js"] == pytest.approx(0.0, abs=1e-12)
    assert out["ece_teacher"] == pytest.approx(out["ece_student"])
    assert out["flip_student_only"] == 0 and out["flip_teacher_only"] == 0
    assert out["student_advantage"] == 0.0 and out["student_deficit"] == 0.0


def test_kl_js_two_by_two_by_hand() -> None:
    pt = np.array([[0.5, 0.5], [0.9, 0.1]])
    ps = np.array([[0.25, 0.75], [0.5, 0.5]])
    kl_rows = [
        0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75),
        0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5),
    ]
    m_rows = [[0.375, 0.625], [0.7, 0.3]]

    def kl(p: list[float], q: list[float]) -> float:
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))

    js_rows = [
        0.5 * kl(list(pt[i]), m_rows[i]) + 0.5 * kl(list(ps[i]), m_rows[i]) for i in range(2)
    ]
    out = classification_fidelity(pt, ps)
    assert out["kl_teacher_student"] == pytest.approx(sum(kl_rows) / 2, rel=1e-10)
    assert out["js"] == pytest.approx(sum(js_rows) / 2, rel=1e-10)
    assert out["agreement"] == 0.5
    assert out["n"] == 2
    assert "ece_teacher" not in out and "flip_both" not in out


def test_js_is_bounded_by_ln2_and_kl_finite_with_zeros() -> None:
    pt = np.array([[1.0, 0.0], [0.0, 1.0]])
    ps = np.array([[0.0, 1.0], [1.0, 0.0]])
    out = classification_fidelity(pt, ps)
    assert out["js"] == pytest.approx(math.log(2.0), rel=1e-12)
    assert math.isfinite(out["kl_teacher_student"]) and out["kl_teacher_student"] > 20


def test_ece_by_hand() -> None:
    probs = np.array([
        [0.95, 0.05],
        [0.85, 0.15],
        [0.35, 0.65],
        [0.45, 0.55],
        [0.72, 0.28],
    ])
    labels = np.array([0, 1, 1, 0, 0])
    n = 5
    bin_0_9_to_1 = abs(1.0 - 0.95) * 1
    bin_0_8_to_0_9 = abs(0.0 - 0.85) * 1
    bin_0_6_to_0_7 = abs(1.0 - 0.65) * 1
    bin_0_5_to_0_6 = abs(0.0 - 0.55) * 1
    bin_0_7_to_0_8 = abs(1.0 - 0.72) * 1
    expected = (bin_0_9_to_1 + bin_0_8_to_0_9 + bin_0_6_to_0_7 + bin_0_5_to_0_6 + bin_0_7_to_0_8) / n
    assert expected == pytest.approx(0.416)
    assert ece(probs, labels, n_bins=10) == pytest.approx(expected, rel=1e-12)

    mid_bin = abs((0 + 1 + 1) / 3 - (0.55 + 0.65 + 0.72) / 3) * 3
    top_bin = abs((1 + 0) / 2 - (0.95 + 0.85) / 2) * 2
    expected_4 = (mid_bin + top_bin) / n
    assert expected_4 == pytest.approx(0.176)
    assert ece(probs, labels, n_bins=4) == pytest.approx(expected_4, rel=1e-12)
    assert ece(torch.tensor(probs), torch.tensor(labels), n_bins=4) == pytest.approx(expected_4)


def test_reliability_bins_shapes_and_counts() -> None:
    probs = np.array([[0.95, 0.05], [0.85, 0.15], [0.35, 0.65], [0.45, 0.55], [0.72, 0.28]])
    labels = np.array([0, 1, 1, 0, 0])
    bins = reliability_bins(probs, labels, n_bins=2)
    assert np.allclose(bins["edges"], [0.0, 0.5, 1.0])
    assert bins["counts"].tolist() == [0, 5]
    assert np.isnan(bins["accuracy"][0])
    assert bins["accuracy"][1] == pytest.approx(3 / 5)
    assert bins["confidence"][1] == pytest.approx((0.95 + 0.85 + 0.65 + 0.55 + 0.72) / 5)


def test_brier_by_hand() -> None:
    pt = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    ps = np.array([[0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])
    y = np.array([0, 2])
    brier_t = ((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.1**2 + 0.2**2)) / 2
    brier_s = ((0.8**2 + 0.5**2 + 0.3**2) + (0.3**2 + 0.3**2 + 0.6**2)) / 2
    out = classification_fidelity(pt, ps, y)
    assert out["brier_teacher"] == pytest.approx(brier_t, rel=1e-12)
    assert out["brier_student"] == pytest.approx(brier_s, rel=1e-12)


def test_flip_table_adds_up_and_matches_hand_counts() -> None:
    pt = np.eye(3)[[0, 1, 2, 0, 1, 2]]
    ps = np.eye(3)[[0, 0, 2, 1, 1, 0]]
    y = np.array([0, 0, 2, 0, 2, 2])
    out = classification_fidelity(pt, ps, y)
    assert out["flip_both"] == 2
    assert out["flip_student_only"] == 1
    assert out["flip_teacher_only"] == 2
    assert out["flip_neither"] == 1
    assert out["student_advantage"] == pytest.approx(1 / 6)
    assert out["student_deficit"] == pytest.approx(2 / 6)
    rng = np.random.default_rng(1)
    a, b = _random_probs(rng, 57, 4), _random_probs(rng, 57, 4)
    yy = rng.integers(0, 4, size=57)
    r = classification_fidelity(a, b, yy)
    total = r["flip_both"] + r["flip_student_only"] + r["flip_teacher_only"] + r["flip_neither"]
    assert total == r["n"] == 57
    assert all(isinstance(k, str) and isinstance(v, (int, float)) for k, v in r.items())


def test_torch_inputs_and_shape_errors() -> None:
    rng = np.random.default_rng(2)
    p = _random_probs(rng, 10, 2)
    q = _random_probs(rng, 10, 2)
    a = classification_fidelity(torch.tensor(p, dtype=torch.float32), torch.tensor(q), torch.tensor([0, 1] * 5))
    b = classification_fidelity(p, q, np.array([0, 1] * 5))
    assert a["agreement"] == b["agreement"]
    assert a["kl_teacher_student"] == pytest.approx(b["kl_teacher_student"], rel=1e-5)
    with pytest.raises(ValueError):
        classification_fidelity(p, q[:5])
    with pytest.raises(ValueError):
        classification_fidelity(p, q, np.array([0, 1, 2] * 3 + [0]))


def test_regression_fidelity_sanity() -> None:
    yt = np.array([1.0, 2.0, 3.0, 4.0])
    ys = 2 * yt + 1
    out = regression_fidelity(yt, ys)
    assert out["pred_pearson"] == pytest.approx(1.0)
    assert out["pred_spearman"] == pytest.approx(1.0)
    assert out["mean_abs_diff"] == pytest.approx(np.mean(yt + 1))
    anti = regression_fidelity(yt, np.exp(-yt))
    assert anti["pred_spearman"] == pytest.approx(-1.0)
    assert anti["pred_pearson"] < 0
    labels = np.array([1.0, 2.5, 3.0, 9.0])
    closer = regression_fidelity(yt, np.array([1.5, 2.5, 3.0, 8.0]), labels)
    assert closer["n_student_closer"] == 2
    assert closer["n_teacher_closer"] == 1
    assert closer["n"] == 4
    assert math.isnan(regression_fidelity(yt, np.ones(4))["pred_pearson"])


def test_confidence_is_the_mean_top_class_probability() -> None:
    teacher = np.array([[0.9, 0.1], [0.6, 0.4]])
    student = np.array([[0.5, 0.5], [0.2, 0.8]])
    out = classification_fidelity(teacher, student)
    assert out["confidence_teacher"] == pytest.approx(0.75) and out["confidence_student"] == pytest.approx(0.65)

