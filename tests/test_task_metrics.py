"""Metric values against hand computations, and quiet handling of degenerate predictions."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from mpdistil.metrics.task_metrics import compute_metrics


def test_accuracy_and_binary_f1_by_hand() -> None:
    labels = [1, 1, 1, 0, 0, 0, 1, 0]
    preds = [1, 1, 0, 0, 1, 0, 1, 0]
    # tp=3, fp=1, fn=1 -> F1 = 6/8; accuracy 6/8
    out = compute_metrics(["accuracy", "f1"], preds, labels)
    assert out == {"accuracy": pytest.approx(0.75), "f1": pytest.approx(0.75)}


def test_macro_f1_by_hand() -> None:
    labels = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    # class 0: p=1/2 r=1/2 f=1/2; class 1: p=2/3 r=1 f=0.8; class 2: p=1 r=1/2 f=2/3
    expected = (0.5 + 0.8 + 2 / 3) / 3
    out = compute_metrics(["accuracy", "macro_f1"], preds, labels)
    assert out["macro_f1"] == pytest.approx(expected) and out["accuracy"] == pytest.approx(4 / 6)


def test_mcc_by_hand() -> None:
    labels = [1, 1, 1, 0, 0, 0, 1, 0]
    preds = [1, 1, 0, 0, 1, 0, 1, 0]
    tp, tn, fp, fn = 3, 3, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert compute_metrics(["mcc"], preds, labels)["mcc"] == pytest.approx(expected)


def test_correlations_by_hand() -> None:
    gold = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    pred = np.array([1.5, 1.0, 3.5, 4.0, 6.0])
    pc, gc = pred - pred.mean(), gold - gold.mean()
    pearson = float(pc @ gc / math.sqrt((pc @ pc) * (gc @ gc)))
    # ranks of pred: 2,1,3,4,5 vs 1..5 -> d^2 sum = 2 -> rho = 1 - 6*2/(5*24)
    out = compute_metrics(["pearson", "spearman"], pred, gold)
    assert out["pearson"] == pytest.approx(pearson) and out["spearman"] == pytest.approx(0.9)
    assert compute_metrics(["pearson"], pred.reshape(-1, 1), gold)["pearson"] == pytest.approx(pearson)


def test_logits_are_reduced_by_argmax() -> None:
    logits = np.array([[2.0, 1.0], [0.1, 0.9], [0.0, 3.0]])
    assert compute_metrics(["accuracy"], logits, [0, 1, 0])["accuracy"] == pytest.approx(2 / 3)


def test_constant_predictions_give_zero_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = compute_metrics(["accuracy", "f1", "macro_f1", "mcc"], [0, 0, 0, 0], [0, 1, 0, 1])
        assert out["accuracy"] == 0.5 and out["f1"] == 0.0 and out["mcc"] == 0.0
        assert out["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)
        corr = compute_metrics(["pearson", "spearman"], [2.5] * 4, [0.0, 1.0, 2.0, 3.0])
        assert corr == {"pearson": 0.0, "spearman": 0.0}
        assert compute_metrics(["mcc", "pearson"], [1, 0], [1, 1]) == {"mcc": 0.0, "pearson": 0.0}


def test_values_are_plain_floats_and_names_checked() -> None:
    out = compute_metrics(["accuracy", "mcc"], np.array([1, 0, 1]), np.array([1, 0, 0]))
    assert all(type(v) is float for v in out.values())
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(["bleu"], [1], [1])
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        compute_metrics(["accuracy"], [1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="empty"):
        compute_metrics(["accuracy"], [], [])
