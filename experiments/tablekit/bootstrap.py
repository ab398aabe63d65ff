"""Paired bootstrap over dev examples: is one row's metric above another's beyond what the dev sample explains?

Two rows (say MPDistil and KD) are compared on the examples both predicted, seed by seed. Within a seed
the examples are resampled with replacement, the *same* resample for both rows (so an example's
difficulty cancels out), and the metric of each row is recomputed on the resample. One bootstrap
replicate is one such resample per seed; its value is the mean over seeds of the per-seed differences
A − B, the same statistic as the reported difference. Over ``RESAMPLES`` replicates the 2.5th and
97.5th percentiles give a 95% percentile interval. The interval is about the dev examples, with the
trained models held fixed: seed-to-seed variation of training enters only through the seeds averaged
over, so with few seeds it says how stable a difference is on these dev sets, not on new training runs.

For class predictions every metric depends only on the confusion matrix, which depends only on how
many times each distinct (gold, A, B) triple is drawn. A resample of n indices is therefore drawn as
multinomial counts over those triples: the same distribution as drawing indices, at a cost that
does not grow with n. Regression scores (Pearson, Spearman) are resampled by index, in chunks.
The resampling is seeded by task, split and seed, so a table renders to the same bytes every time.
"""
from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from mpdistil.metrics.task_metrics import compute_metrics

RESAMPLES = 2000
LEVEL = 0.95
BOOTSTRAP_SEED = 20240417
SCORE_METRICS = ("pearson", "spearman")
_CHUNK_ELEMENTS = 2_000_000  # resampled scores held at once, per side
_SCORE_CACHE: dict[tuple, np.ndarray] = {}  # one row's replicate correlations, see _score_resamples


@dataclass(frozen=True)
class SeedSample:
    """One seed's paired examples: gold labels and both rows' predictions, aligned."""

    seed: int
    gold: np.ndarray
    a: np.ndarray
    b: np.ndarray


@dataclass(frozen=True)
class Paired:
    """A − B in points (percent, or 100 × correlation), per seed and averaged, with its percentile interval."""

    seeds: tuple[int, ...]
    per_seed: tuple[float, ...]
    diff: float
    lo: float
    hi: float
    resamples: int

    @property
    def same_sign(self) -> int:
        """Seeds whose own difference has the sign of the mean difference (zero counts as zero's sign)."""
        sign = np.sign(self.diff)
        return int(sum(np.sign(d) == sign for d in self.per_seed))

    @property
    def above(self) -> bool:
        """A above B: the whole interval is above zero."""
        return self.lo > 0

    @property
    def below(self) -> bool:
        return self.hi < 0


def rng_for(task: str, split: str, seed: int) -> np.random.Generator:
    """The resampling stream of one task, split and seed: stable across renders and machines."""
    return np.random.default_rng([BOOTSTRAP_SEED, zlib.crc32(task.encode()), zlib.crc32(split.encode()),
                                  int(seed) % 2 ** 32])


# ------------------------------------------------------------------------------------- metrics, vectorised


def confusion_metric(metric: str, cm: np.ndarray) -> np.ndarray:
    """A class metric from confusion matrices ``cm[..., gold, pred]``, with the conventions of task_metrics.

    A metric whose textbook formula is undefined (a constant prediction for MCC, no class-1 prediction
    for F1) is 0, as in ``mpdistil.metrics.task_metrics``.
    """
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum(axis=(-2, -1))
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    gold, pred = cm.sum(axis=-1), cm.sum(axis=-2)
    if metric == "accuracy":
        return tp.sum(axis=-1) / n
    if metric == "f1":
        if cm.shape[-1] < 2:
            return np.zeros(n.shape)
        denom = gold[..., 1] + pred[..., 1]
        return np.where(tp[..., 1] > 0, 2 * tp[..., 1] / np.maximum(denom, 1), 0.0)
    if metric == "macro_f1":
        denom = gold + pred
        present = denom > 0
        per_class = np.where(present, 2 * tp / np.maximum(denom, 1), 0.0)
        return per_class.sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)
    if metric == "mcc":
        cov_gp = tp.sum(axis=-1) * n - (gold * pred).sum(axis=-1)
        var = (n ** 2 - (pred ** 2).sum(axis=-1)) * (n ** 2 - (gold ** 2).sum(axis=-1))
        return np.where(var > 0, cov_gp / np.sqrt(np.where(var > 0, var, 1.0)), 0.0)
    raise ValueError(f"{metric!r} is not a class metric")


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair; 0 where either row is constant (task_metrics' convention)."""
    xc, yc = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    sxx, syy = (xc * xc).sum(axis=1), (yc * yc).sum(axis=1)
    ok = (np.ptp(x, axis=1) > 0) & (np.ptp(y, axis=1) > 0)
    return np.where(ok, (xc * yc).sum(axis=1) / np.sqrt(np.where(ok, sxx * syy, 1.0)), 0.0)


def score_metric(metric: str, pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Pearson or Spearman of each row of ``pred`` against the same row of ``gold`` (2-D arrays)."""
    if metric == "spearman":
        ok = (np.ptp(pred, axis=1) > 0) & (np.ptp(gold, axis=1) > 0)
        return np.where(ok, _rowwise_pearson(rankdata(pred, axis=1), rankdata(gold, axis=1)), 0.0)
    if metric == "pearson":
        return _rowwise_pearson(pred, gold)
    raise ValueError(f"{metric!r} is not a score metric")


# ---------------------------------------------------------------------------------------------- replicates


def _class_replicates(metric: str, s: SeedSample, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """A − B of a class metric on ``resamples`` resamples of one seed's examples (multinomial over triples)."""
    k = int(max(s.gold.max(), s.a.max(), s.b.max())) + 1
    triples, counts = np.unique(np.stack([s.gold, s.a, s.b], axis=1).astype(np.int64), axis=0, return_counts=True)
    n = int(counts.sum())
    draws = rng.multinomial(n, counts / n, size=resamples).astype(np.float64)  # (resamples, triples)
    out = []
    for side in (1, 2):
        onehot = np.zeros((len(triples), k * k))
        onehot[np.arange(len(triples)), triples[:, 0] * k + triples[:, side]] = 1.0
        out.append(confusion_metric(metric, (draws @ onehot).reshape(resamples, k, k)))
    return 100.0 * (out[0] - out[1])


def _score_resamples(metric: str, pred: np.ndarray, gold: np.ndarray, task: str, split: str, seed: int,
                     resamples: int) -> np.ndarray:
    """One row's correlation on each of ``resamples`` index resamples of one seed's examples.

    The resamples depend only on task, split, seed and the number of examples, so every comparison of
    a seed draws the same indices; a row's replicate scores are therefore computed once and shared by
    all the comparisons it is in (a row is in up to ten, and ranking resamples is the slow part).
    """
    key = (metric, task, split, int(seed), resamples, _digest(gold), _digest(pred))
    if key not in _SCORE_CACHE:
        rng = rng_for(task, split, seed)
        n = len(gold)
        chunk = max(1, min(resamples, _CHUNK_ELEMENTS // max(n, 1)))
        out = []
        for start in range(0, resamples, chunk):
            idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
            out.append(score_metric(metric, pred[idx], gold[idx]))
        _SCORE_CACHE[key] = np.concatenate(out)
    return _SCORE_CACHE[key]


def _digest(a: np.ndarray) -> bytes:
    """A key for an array's exact contents (the cache above must never mix two rows up)."""
    raw = np.ascontiguousarray(a).tobytes() + str((a.dtype, a.shape)).encode()
    return hashlib.blake2b(raw, digest_size=16).digest()


def _score_replicates(metric: str, s: SeedSample, task: str, split: str, resamples: int) -> np.ndarray:
    """A − B of a correlation on ``resamples`` index resamples of one seed's examples."""
    a = _score_resamples(metric, s.a, s.gold, task, split, s.seed, resamples)
    b = _score_resamples(metric, s.b, s.gold, task, split, s.seed, resamples)
    return 100.0 * (a - b)


def point_difference(metric: str, s: SeedSample) -> float:
    """A − B of one seed on all its paired examples, in points, by the run's own metric code."""
    a = compute_metrics([metric], s.a, s.gold)[metric]
    b = compute_metrics([metric], s.b, s.gold)[metric]
    return 100.0 * (a - b)


def paired_bootstrap(metric: str, samples: Sequence[SeedSample], task: str, split: str,
                     resamples: int = RESAMPLES) -> Paired:
    """The mean over seeds of A − B, and its percentile interval from paired resamples within each seed."""
    if not samples:
        raise ValueError("no seed with paired examples")
    per_seed = [point_difference(metric, s) for s in samples]
    if metric in SCORE_METRICS:
        reps = np.mean([_score_replicates(metric, s, task, split, resamples) for s in samples], axis=0)
    else:
        reps = np.mean([_class_replicates(metric, s, rng_for(task, split, s.seed), resamples) for s in samples],
                       axis=0)
    lo, hi = np.percentile(reps, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    diff = float(np.mean(per_seed))
    return Paired(tuple(s.seed for s in samples), tuple(per_seed), diff, _clean(float(lo)), _clean(float(hi)),
                  resamples)


def _clean(x: float) -> float:
    """Round off float noise (a difference that is 0 by construction must not print as an interval off 0)."""
    return 0.0 if math.isclose(x, 0.0, abs_tol=1e-9) else x
