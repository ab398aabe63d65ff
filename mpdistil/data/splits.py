"""Seeded, deterministic index splits: train'/quiz (docs/method.md, section 2) and subsampling.

Every function returns sorted indices, so the same seed gives the same examples in the same order
on every machine, and the indices can be saved with the run and reused.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, TypeVar

import numpy as np

from mpdistil.atomic import write_json

T = TypeVar("T")


def _is_class_label(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _groups(labels: Sequence[Any]) -> list[np.ndarray]:
    """Indices per class, classes in a fixed order (sorted by value)."""
    by_class: dict[Any, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    keys = sorted(by_class, key=lambda k: (str(type(k)), k) if k is not None else ("", 0))
    return [np.asarray(by_class[k], dtype=np.int64) for k in keys]


def _allocate(counts: Sequence[int], total: int, minimum: Sequence[int], maximum: Sequence[int]) -> list[int]:
    """Per-class quotas summing to ``total`` (as far as the bounds allow), proportional to ``counts``.

    Largest-remainder rounding, ties broken by class order, so the result is deterministic.
    """
    n = sum(counts)
    if n == 0:
        return [0 for _ in counts]
    exact = [total * c / n for c in counts]
    quota = [min(max(math.floor(e), lo), hi) for e, lo, hi in zip(exact, minimum, maximum)]
    while sum(quota) < total:
        room = [i for i in range(len(counts)) if quota[i] < maximum[i]]
        if not room:
            break
        quota[max(room, key=lambda i: (exact[i] - quota[i], -i))] += 1
    while sum(quota) > total:
        room = [i for i in range(len(counts)) if quota[i] > minimum[i]]
        if not room:
            break
        quota[max(room, key=lambda i: (quota[i] - exact[i], -i))] -= 1
    return quota


def quiz_split(
    labels: Sequence[Any], fraction: float, seed: int, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..n-1 into (train', quiz), with round(fraction * n) quiz examples.

    Stratified: each class contributes in proportion, and every class with at least two examples
    has at least one in quiz and one in train', so the quiz reward sees every class.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"quiz fraction {fraction} must lie in (0, 1); the paper uses 0.1")
    n = len(labels)
    rng = np.random.default_rng(seed)
    if n < 2:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    total = min(max(1, int(round(fraction * n))), n - 1)
    if not stratify:
        order = rng.permutation(n)
        return np.sort(order[total:]), np.sort(order[:total])
    groups = _groups(labels)
    counts = [len(g) for g in groups]
    quota = _allocate(counts, total, [1 if c >= 2 else 0 for c in counts], [max(c - 1, 0) for c in counts])
    quiz = [rng.permutation(g)[:q] for g, q in zip(groups, quota)]
    quiz_idx = np.sort(np.concatenate(quiz)) if quiz else np.zeros(0, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    mask[quiz_idx] = False
    return np.flatnonzero(mask).astype(np.int64), quiz_idx.astype(np.int64)


class SplitTooSmall(ValueError):
    """The training examples cannot fill train′, quiz and held-out slices as asked."""


def three_way_split(labels: Sequence[Any], quiz_fraction: float, heldout_fraction: float, seed: int,
                    stratify: bool = True) -> dict[str, np.ndarray]:
    """Positions of train′, quiz and held-out: ``heldout_fraction`` and ``quiz_fraction`` of all n examples.

    The held-out slice is carved first (stratified, by its own stream of the seed), then the rest is split
    into train′ and quiz as :func:`quiz_split` does, so quiz keeps about ``quiz_fraction · n`` examples.
    Classification needs every class in every slice: a class with fewer than three examples, or an empty
    slice, raises :class:`SplitTooSmall` with the sizes it would get.
    """
    if not 0.0 < heldout_fraction < 1.0 or quiz_fraction + heldout_fraction >= 1.0:
        raise ValueError(f"held-out fraction {heldout_fraction} with quiz fraction {quiz_fraction} leaves no train′")
    n = len(labels)
    heldout_seed = int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
    rest, heldout = quiz_split(labels, heldout_fraction, heldout_seed, stratify) if n >= 2 else \
        (np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64))
    rest_labels = [labels[i] for i in rest]
    tr, qz = quiz_split(rest_labels, min(quiz_fraction / (1.0 - heldout_fraction), 0.99), seed, stratify) \
        if len(rest) >= 2 else (np.arange(len(rest), dtype=np.int64), np.zeros(0, dtype=np.int64))
    out = {"train": rest[tr], "quiz": rest[qz], "heldout": heldout}
    sizes = ", ".join(f"{name} {len(idx)}" for name, idx in (("train′", out["train"]), ("quiz", out["quiz"]),
                                                           ("held-out", heldout)))
    if any(len(idx) == 0 for idx in out.values()):
        raise SplitTooSmall(f"{n} training examples would give {sizes}")
    if stratify:
        small = {str(k): c for k, c in zip(*np.unique(np.asarray(labels), return_counts=True)) if c < 3}
        if small:
            listed = ", ".join(f"class {k} has {c}" for k, c in small.items())
            raise SplitTooSmall(f"{n} training examples would give {sizes}, but {listed} (each slice needs one)")
    return out


def subsample_indices(labels: Sequence[Any], n: int, seed: int, stratify: Optional[bool] = None) -> np.ndarray:
    """Sorted positions of ``n`` items drawn without replacement (stratified for class labels)."""
    size = len(labels)
    if n >= size:
        return np.arange(size, dtype=np.int64)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if stratify is None:
        stratify = size > 0 and all(_is_class_label(label) for label in labels)
    rng = np.random.default_rng(seed)
    if not stratify:
        return np.sort(rng.permutation(size)[:n]).astype(np.int64)
    groups = _groups(labels)
    counts = [len(g) for g in groups]
    floor = [1 if n >= len(groups) else 0 for _ in groups]
    quota = _allocate(counts, n, floor, counts)
    picked = [rng.permutation(g)[:q] for g, q in zip(groups, quota)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def subsample(examples: Sequence[T], n: Optional[int], seed: int, stratify: Optional[bool] = None) -> list[T]:
    """``n`` of the examples in their original order (all of them when ``n`` is None or too large).

    Stratified by label when the labels are class indices (``stratify=None`` decides that).
    """
    if n is None or n >= len(examples):
        return list(examples)
    labels = [getattr(ex, "label", None) for ex in examples]
    return [examples[i] for i in subsample_indices(labels, n, seed, stratify)]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def save_split_indices(path: os.PathLike | str, indices: Mapping[str, Any]) -> Path:
    """Write the split indices as JSON, atomically, so a crash never leaves half a file."""
    return write_json(path, _jsonable(indices), indent=1)


def load_split_indices(path: os.PathLike | str) -> dict[str, Any]:
    """Read what :func:`save_split_indices` wrote (lists of ints stay lists)."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
