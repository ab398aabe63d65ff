"""Task metrics by name: accuracy, f1, macro_f1, mcc, pearson, spearman.

Early in training a model often predicts one class (or a constant score); the textbook formulas
are then undefined and scikit-learn/scipy warn on every evaluation. Here those cases are defined
as 0.0, without a warning, so the logs stay readable and model selection still works.
Accuracy and F1 are on the [0, 1] scale; MCC and the correlations on [-1, 1].
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

METRICS = ("accuracy", "f1", "macro_f1", "mcc", "pearson", "spearman")


def _as_class_predictions(predictions: Any) -> np.ndarray:
    """Class indices; a 2-D array of logits/probabilities is reduced by argmax."""
    arr = np.asarray(predictions)
    if arr.ndim == 2:
        arr = arr.argmax(axis=1) if arr.shape[1] > 1 else arr[:, 0]
    return arr.reshape(-1)


def _as_scores(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _constant(x: np.ndarray) -> bool:
    return x.size < 2 or bool(np.all(x == x.flat[0]))


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(pred == gold))


def binary_f1(pred: np.ndarray, gold: np.ndarray) -> float:
    """F1 of the positive class 1 (MRPC, QQP); 0.0 when class 1 is never predicted or present."""
    tp = float(np.sum((pred == 1) & (gold == 1)))
    fp = float(np.sum((pred == 1) & (gold != 1)))
    fn = float(np.sum((pred != 1) & (gold == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def macro_f1(pred: np.ndarray, gold: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in gold or predictions (CB's F1)."""
    from sklearn.metrics import f1_score

    classes = np.unique(np.concatenate([gold, pred]))
    return float(f1_score(gold, pred, labels=classes, average="macro", zero_division=0))


def mcc(pred: np.ndarray, gold: np.ndarray) -> float:
    """Matthews correlation (CoLA); 0.0 when either side is constant."""
    from sklearn.metrics import matthews_corrcoef

    if _constant(pred) or _constant(gold):
        return 0.0
    return float(matthews_corrcoef(gold, pred))


def pearson(pred: np.ndarray, gold: np.ndarray) -> float:
    from scipy.stats import pearsonr

    if _constant(pred) or _constant(gold):
        return 0.0
    value = float(pearsonr(pred, gold)[0])
    return value if np.isfinite(value) else 0.0


def spearman(pred: np.ndarray, gold: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if _constant(pred) or _constant(gold):
        return 0.0
    value = float(spearmanr(pred, gold)[0])
    return value if np.isfinite(value) else 0.0


_CLASS_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": binary_f1,
    "macro_f1": macro_f1,
    "mcc": mcc,
}
_SCORE_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"pearson": pearson, "spearman": spearman}


def compute_metrics(metric_names: Sequence[str], predictions: Any, labels: Any) -> dict[str, float]:
    """Each named metric of ``predictions`` against ``labels``, as plain floats.

    Classification metrics take class indices (or logits, reduced by argmax); correlations take
    real-valued scores (an (n, 1) array is flattened).
    """
    unknown = [m for m in metric_names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(METRICS)}")
    gold_raw = np.asarray(labels)
    if gold_raw.size == 0:
        raise ValueError("no labels to score: the evaluation split is empty")
    results: dict[str, float] = {}
    for name in metric_names:
        if name in _SCORE_METRICS:
            pred, gold = _as_scores(predictions), _as_scores(labels)
        else:
            pred, gold = _as_class_predictions(predictions), gold_raw.reshape(-1)
        if pred.shape != gold.shape:
            raise ValueError(f"{pred.size} predictions for {gold.size} labels")
        fn = _SCORE_METRICS.get(name) or _CLASS_METRICS[name]
        results[name] = fn(pred, gold)
    return results
