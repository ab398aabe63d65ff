"""Model selection: a held-out slice of train that nothing trains on, and the protocols kept as ablations."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from mpdistil.config import ConfigError
from mpdistil.context import RunContext
from mpdistil.data.splits import SplitTooSmall, quiz_split, three_way_split
from tests.helpers import run_cfg

CB = ["task=cb", "method=mpdistil", "method.curriculum_tasks=[rte]"]


def test_three_way_split_is_disjoint_stratified_and_seeded():
    labels = [0] * 60 + [1] * 30 + [2] * 10
    parts = three_way_split(labels, 0.1, 0.1, seed=3)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(100))
    assert {k: len(v) for k, v in parts.items()} == {"train": 80, "quiz": 10, "heldout": 10}
    for idx in parts.values():
        assert {labels[i] for i in idx} == {0, 1, 2}  # every class in every slice
    again = three_way_split(labels, 0.1, 0.1, seed=3)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = three_way_split(labels, 0.1, 0.1, seed=4)
    assert not np.array_equal(parts["heldout"], other["heldout"])


def test_a_class_too_small_for_three_slices_is_refused_with_the_sizes():
    with pytest.raises(SplitTooSmall, match=r"would give train′ \d+, quiz \d+, held-out \d+, but class 2 has 2"):
        three_way_split([0] * 20 + [1] * 20 + [2] * 2, 0.1, 0.1, seed=1)


def test_a_task_too_small_is_refused_in_one_line_before_training(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"text {i},{'a' if i % 2 else 'b'}\n" for i in range(20))
                     + "rare one,c\nrare two,c\n")
    task = ["task=custom", f"task.train={train}", f"task.dev={train}", "task.text_fields=[text]",
            "task.label_field=label"]
    with pytest.raises(ConfigError) as err:
        run_cfg(tmp_path / "run", *task)
    message = str(err.value)
    assert "\n" not in message and "task custom: 22 training examples would give train′" in message
    assert "trainer.selection_split=quiz" in message
    assert not (tmp_path / "run" / "results.json").exists()


def test_the_paper_protocol_keeps_its_train_and_quiz_split(tmp_path, superglue):
    """With dev (or quiz) selection no slice is carved out: train′ and quiz are the 9:1 split as before."""
    from mpdistil.data.splits import subsample_indices

    run_cfg(tmp_path / "dev", *CB, f"data_dir={superglue}", "trainer.selection_split=dev", "method.phases=[teacher]")
    splits = json.loads((tmp_path / "dev" / "splits.json").read_text())
    assert "heldout" not in splits
    labels = np.array([["entailment", "contradiction", "neutral"].index(json.loads(line)["label"])
                       for line in (superglue / "CB" / "train.jsonl").read_text().splitlines()])
    kept = subsample_indices(labels, 40, 42, True)
    train, quiz = quiz_split(labels[kept], 0.1, 42, True)
    assert splits["train"] == kept[train].tolist() and splits["quiz"] == kept[quiz].tolist()


def _recording(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Every split whose metrics are computed, and whether that happened while a phase group was training."""
    from mpdistil import groups

    reads: list[tuple[str, bool]] = []
    training = [False]
    real_metrics, real_train = RunContext.metrics_from_logits, groups.train

    def metrics(self: RunContext, logits: Any, split: str) -> dict[str, float]:
        reads.append((split, training[0]))
        return real_metrics(self, logits, split)

    def train(*args: Any) -> None:
        training[0] = True
        try:
            real_train(*args)
        finally:
            training[0] = False

    monkeypatch.setattr(RunContext, "metrics_from_logits", metrics)
    monkeypatch.setattr(groups, "train", train)
    return reads


def test_held_out_selection_never_reads_dev_while_training(tmp_path, superglue, monkeypatch):
    reads = _recording(monkeypatch)
    results = run_cfg(tmp_path / "run", *CB, f"data_dir={superglue}", "trainer.reuse_cache=false")
    chosen = {split for split, training in reads if training}
    assert chosen == {"heldout"}  # every epoch, pass and episode was scored on the held-out slice only
    assert any(split == "dev" and not training for split, training in reads)  # dev is reported
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    parts = [set(splits[k]) for k in ("train", "quiz", "heldout")]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 40
    assert results["protocol"]["selected_on"] == "heldout" and results["protocol"]["reported"] == ["dev"]
    for phase in ("teacher", "distill", "meta_teacher", "curriculum"):
        assert results["phases"][phase]["selection"]  # each kept state has its held-out scores
    assert "heldout" in results["agents"]["teacher"]


def test_last_selects_nothing_and_keeps_the_last_epoch_and_episode(tmp_path, superglue, monkeypatch):
    reads = _recording(monkeypatch)
    results = run_cfg(tmp_path / "run", *CB, f"data_dir={superglue}", "trainer.selection_split=last",
                      "method.teacher_epochs=2", "method.student_epochs=2", "method.episodes=3")
    assert not [split for split, training in reads if training]  # nothing is scored while training
    phases = results["phases"]
    assert phases["teacher"]["best_epoch"] == 1 and phases["distill"]["best_epoch"] == 1
    assert phases["meta_teacher"]["best_epoch"] == 1 and phases["curriculum"]["best_episode"] == 2
    assert results["protocol"]["selected_on"] is None
