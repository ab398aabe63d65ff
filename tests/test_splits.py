"""Quiz split and subsampling: deterministic, stratified, saved atomically."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mpdistil.data.splits import load_split_indices, quiz_split, save_split_indices, subsample, subsample_indices
from mpdistil.data.types import Example


def test_quiz_split_is_deterministic_disjoint_and_complete() -> None:
    labels = [0] * 70 + [1] * 20 + [2] * 10
    a = quiz_split(labels, 0.1, seed=7, stratify=True)
    b = quiz_split(labels, 0.1, seed=7, stratify=True)
    c = quiz_split(labels, 0.1, seed=8, stratify=True)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    train, quiz = a
    assert len(quiz) == 10 and len(train) == 90
    assert sorted(np.concatenate([train, quiz]).tolist()) == list(range(100))
    assert list(quiz) == sorted(quiz)


def test_quiz_split_is_stratified() -> None:
    labels = [0] * 70 + [1] * 20 + [2] * 10
    _, quiz = quiz_split(labels, 0.1, seed=0, stratify=True)
    assert Counter(labels[i] for i in quiz) == {0: 7, 1: 2, 2: 1}


def test_every_class_with_two_examples_reaches_quiz() -> None:
    labels = [0] * 50 + [1] * 2 + [2] * 1
    train, quiz = quiz_split(labels, 0.1, seed=3, stratify=True)
    quiz_classes = Counter(labels[i] for i in quiz)
    assert quiz_classes[1] == 1 and quiz_classes[2] == 0
    assert Counter(labels[i] for i in train)[1] == 1


def test_unstratified_split_for_regression() -> None:
    labels = list(np.linspace(0, 5, 41))
    train, quiz = quiz_split(labels, 0.1, seed=1, stratify=False)
    assert len(quiz) == 4 and len(train) == 37
    assert np.array_equal(quiz, quiz_split(labels, 0.1, seed=1, stratify=False)[1])


def test_bad_fraction_and_tiny_inputs() -> None:
    with pytest.raises(ValueError, match="fraction"):
        quiz_split([0, 1], 1.0, seed=0)
    train, quiz = quiz_split([1], 0.1, seed=0)
    assert train.tolist() == [0] and quiz.tolist() == []


def test_subsample_stratified_deterministic_and_ordered() -> None:
    examples = [Example(uid=i, texts=(f"t{i}",), label=0 if i < 80 else 1) for i in range(100)]
    picked = subsample(examples, 10, seed=5)
    assert [e.uid for e in picked] == [e.uid for e in subsample(examples, 10, seed=5)]
    assert Counter(e.label for e in picked) == {0: 8, 1: 2}
    assert [e.uid for e in picked] == sorted(e.uid for e in picked)
    assert subsample(examples, None, seed=5) == examples and len(subsample(examples, 500, seed=5)) == 100


def test_subsample_regression_and_rare_class() -> None:
    reg = [Example(uid=i, texts=("x",), label=float(i)) for i in range(30)]
    assert len(subsample(reg, 7, seed=0)) == 7
    idx = subsample_indices([0] * 98 + [1, 2], 3, seed=0)
    assert len(idx) == 3 and {98, 99} <= set(idx.tolist())


def test_save_split_indices_atomic_json(tmp_path: Path) -> None:
    path = tmp_path / "run" / "splits.json"
    train, quiz = quiz_split([0, 1] * 10, 0.1, seed=0)
    save_split_indices(path, {"train": train, "quiz": quiz, "seed": np.int64(0)})
    data = json.loads(path.read_text())
    assert data["quiz"] == quiz.tolist() and data["seed"] == 0
    assert load_split_indices(path) == data
    assert [p.name for p in path.parent.iterdir()] == ["splits.json"]
