"""Fidelity and agreement between a student and its teacher (or the meta-teacher).

The paradox paper (Ramesh et al., 2025) asks whether a student's gain from distillation
is explained by how closely it follows its teacher. For classifiers the measurable
notions of "following" are: agreement of predicted labels, divergence between the two
output distributions (KL, JS), calibration of each model (ECE, Brier, and the temperature
that would calibrate it) and, given gold labels, which examples each model gets right (the
flip table). These functions are pure numpy so that every evaluation (phases 2-4, baselines,
analysis scripts, the teacher audit) computes the same numbers; torch tensors are accepted and
converted.

Every public metric returns a flat ``dict[str, float | int]`` so it can be written to
results.json and logged to W&B as scalars without reshaping.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import log_softmax, xlogy
from scipy.stats import rankdata

EPS = 1e-12

__all__ = [
    "classification_fidelity",
    "regression_fidelity",
    "reliability_bins",
    "ece",
    "brier",
    "nll",
    "fit_temperature",
    "TEMPERATURE_BOUNDS",
    "EPS",
]


def _to_numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """Convert arrays, lists or torch tensors (any device/dtype) to a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _probs(p: Any, name: str) -> np.ndarray:
    """Validate an [N, C] probability matrix; shape errors here beat silent broadcasting."""
    arr = _to_numpy(p)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty [N, C] array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _labels(labels: Any, n: int, dtype: Any = np.int64) -> np.ndarray:
    """Validate a length-N label vector."""
    arr = _to_numpy(labels, dtype=dtype).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"labels has {arr.shape[0]} entries, expected {n}")
    return arr


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins (lo, hi] over [0, 1]; confidence 0 falls in the first bin."""
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    return np.searchsorted(inner_edges, confidence, side="left")


def reliability_bins(probs: Any, labels: Any, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Per-bin accuracy and confidence of the top class, for reliability diagrams.

    Bins are equal-width over the max probability, right-closed. Empty bins have
    accuracy and confidence NaN and count 0 (mask on ``counts`` when plotting).
    Returns ``edges`` [n_bins+1], ``accuracy``, ``confidence``, ``counts`` [n_bins].
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    p = _probs(probs, "probs")
    y = _labels(labels, p.shape[0])
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = _bin_index(confidence, n_bins)
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    conf_sum = np.bincount(idx, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(counts > 0, acc_sum / np.maximum(counts, 1), np.nan)
        mean_conf = np.where(counts > 0, conf_sum / np.maximum(counts, 1), np.nan)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "accuracy": accuracy,
        "confidence": mean_conf,
        "counts": counts,
    }


def ece(probs: Any, labels: Any, n_bins: int = 10) -> float:
    """Expected calibration error: sum_b (n_b / N) * |acc_b - conf_b| over equal-width bins."""
    bins = reliability_bins(probs, labels, n_bins)
    counts = bins["counts"]
    filled = counts > 0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(counts[filled] * gaps) / counts.sum())


def brier(probs: Any, labels: Any) -> float:
    """Mean over examples of sum_c (p_c - onehot_c)^2 (range [0, 2])."""
    p = _probs(probs, "probs")
    y = _labels(labels, p.shape[0])
    onehot = np.zeros_like(p)
    onehot[np.arange(p.shape[0]), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of the labels under softmax(logits / temperature)."""
    z = _probs(logits, "logits") / temperature
    y = _labels(labels, z.shape[0])
    return float(-np.mean(log_softmax(z, axis=1)[np.arange(z.shape[0]), y]))


TEMPERATURE_BOUNDS = (0.05, 20.0)


def fit_temperature(logits: Any, labels: Any, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) (Guo et al., 2017).

    One scalar cannot change a prediction, only its confidence, so fitting it on a split that nothing was trained
    on measures how over- or under-confident a model is there: T > 1 means over-confident. The NLL is convex in
    1/T, so a bounded search over log T finds the minimum; a bound is returned when the data push past it (e.g.
    every example right with ever larger margins).
    """
    from scipy.optimize import minimize_scalar

    z = _probs(logits, "logits")
    y = _labels(labels, z.shape[0])
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    found = minimize_scalar(
        lambda log_t: nll(z, y, float(np.exp(log_t))), bounds=(lo, hi), method="bounded", options={"xatol": 1e-6}
    )
    return float(np.exp(found.x))


def _kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise KL(p || q) in nats; q is clamped at EPS so a zero in q stays finite."""
    return np.sum(xlogy(p, p) - p * np.log(np.clip(q, EPS, None)), axis=1)


def classification_fidelity(
    p_teacher: Any,
    p_student: Any,
    labels: Any | None = None,
    n_bins: int = 10,
) -> dict[str, float | int]:
    """How closely a student's output distribution follows the teacher's.

    Always: ``agreement``, ``kl_teacher_student`` (mean KL(T||S), nats), ``js`` (mean
    Jensen-Shannon, nats, in [0, ln 2]), ``confidence_teacher`` / ``confidence_student`` (mean top-class
    probability), ``n``. With labels also: ``ece_teacher``,
    ``ece_student``, ``brier_teacher``, ``brier_student``, the flip table
    ``flip_student_only``, ``flip_teacher_only``, ``flip_both``, ``flip_neither`` and
    ``student_advantage`` / ``student_deficit`` (the first two counts divided by N).
    Label-dependent keys are omitted rather than NaN so results.json stays valid JSON.
    """
    pt = _probs(p_teacher, "p_teacher")
    ps = _probs(p_student, "p_student")
    if pt.shape != ps.shape:
        raise ValueError(f"teacher {pt.shape} and student {ps.shape} shapes differ")
    n = pt.shape[0]
    pred_t = pt.argmax(axis=1)
    pred_s = ps.argmax(axis=1)
    m = 0.5 * (pt + ps)
    js_rows = 0.5 * _kl_rows(pt, m) + 0.5 * _kl_rows(ps, m)
    out: dict[str, float | int] = {
        "agreement": float(np.mean(pred_t == pred_s)),
        "kl_teacher_student": float(np.mean(np.maximum(_kl_rows(pt, ps), 0.0))),
        "js": float(np.clip(np.mean(js_rows), 0.0, np.log(2.0))),
        "confidence_teacher": float(np.mean(pt.max(axis=1))),
        "confidence_student": float(np.mean(ps.max(axis=1))),
        "n": int(n),
    }
    if labels is None:
        return out
    y = _labels(labels, n)
    if y.min() < 0 or y.max() >= pt.shape[1]:
        raise ValueError(f"labels must lie in [0, {pt.shape[1]}), got [{y.min()}, {y.max()}]")
    right_t = pred_t == y
    right_s = pred_s == y
    student_only = int(np.sum(right_s & ~right_t))
    teacher_only = int(np.sum(right_t & ~right_s))
    out.update(
        {
            "ece_teacher": ece(pt, y, n_bins),
            "ece_student": ece(ps, y, n_bins),
            "brier_teacher": brier(pt, y),
            "brier_student": brier(ps, y),
            "flip_student_only": student_only,
            "flip_teacher_only": teacher_only,
            "flip_both": int(np.sum(right_t & right_s)),
            "flip_neither": int(np.sum(~right_t & ~right_s)),
            "student_advantage": student_only / n,
            "student_deficit": teacher_only / n,
        }
    )
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r, NaN when either side is constant (undefined, not an error)."""
    if a.shape[0] < 2:
        return float("nan")
    da, db = a - a.mean(), b - b.mean()
    denom = np.sqrt(np.sum(da * da) * np.sum(db * db))
    if denom == 0.0:
        return float("nan")
    return float(np.clip(np.sum(da * db) / denom, -1.0, 1.0))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rho as Pearson on average ranks (ties handled like scipy)."""
    return _pearson(rankdata(a), rankdata(b))


def regression_fidelity(
    y_teacher: Any,
    y_student: Any,
    labels: Any | None = None,
) -> dict[str, float | int]:
    """Agreement between two regressors' predictions (the analogue of label agreement).

    Returns ``pred_pearson``, ``pred_spearman`` (NaN if a model is constant),
    ``mean_abs_diff``, ``n``; with labels also ``n_student_closer`` and
    ``n_teacher_closer`` (strictly closer to the gold value; ties count for neither).
    """
    yt = _to_numpy(y_teacher).reshape(-1)
    ys = _to_numpy(y_student).reshape(-1)
    if yt.shape != ys.shape or yt.shape[0] == 0:
        raise ValueError(f"prediction shapes differ or are empty: {yt.shape} vs {ys.shape}")
    out: dict[str, float | int] = {
        "pred_pearson": _pearson(yt, ys),
        "pred_spearman": _spearman(yt, ys),
        "mean_abs_diff": float(np.mean(np.abs(yt - ys))),
        "n": int(yt.shape[0]),
    }
    if labels is None:
        return out
    y = _labels(labels, yt.shape[0], dtype=np.float64)
    err_t = np.abs(yt - y)
    err_s = np.abs(ys - y)
    out["n_student_closer"] = int(np.sum(err_s < err_t))
    out["n_teacher_closer"] = int(np.sum(err_t < err_s))
    return out
