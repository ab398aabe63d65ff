"""Teacher-labelled coverage (data.transfer): the sources, their record, the soft-only loss and the cache identity."""
from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mpdistil.config import ConfigError, validate
from mpdistil.data.transfer import parse_size, perturb, transfer_examples
from mpdistil.data.types import Example
from mpdistil.losses import distillation_loss, pkd_loss, soft_loss
from tests.helpers import custom_task, make_cfg, run_cfg


def test_sizes_parse_as_counts_or_multiples():
    assert parse_size(None) is None
    assert parse_size("500") == ("cap", 500)
    assert parse_size("4x") == ("times", 4.0) and parse_size("0.5x") == ("times", 0.5)
    for bad in ("x4", "-3", "0", "4 times", "0x"):
        with pytest.raises(ValueError):
            parse_size(bad)


@pytest.mark.parametrize("overrides, message", [
    (["data.transfer=[wikipedia]"], "none of augment, test, a task name"),
    (["data.transfer=[/nowhere/texts.csv]"], "does not exist"),
    (["data.transfer=[augment,augment]"], "more than once"),
    (["task=cb", "data.transfer=[cb]"], "names the main task"),
    (["data.transfer=[augment]", "data.transfer_size=lots"], "data.transfer_size"),
    (["data.transfer=[augment]", "data.augment_rate=0"], "data.augment_rate"),
    (["data.transfer=[augment]", "method=metadistil"], "not to metadistil"),
    (["data.transfer=[augment]", "method=kd", "method.teacher_noise=logit_gauss"], "drawn for train' targets only"),
])
def test_impossible_transfer_settings_are_refused_before_any_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(*overrides))


def test_perturbations_are_seeded_and_do_what_they_say():
    ex = Example(7, ("one two three four five six seven eight nine ten",), 1)
    words = ex.texts[0].split()

    def run(how: str, seed: int = 0) -> list[str]:
        return perturb(ex, how, 0.3, np.random.default_rng(seed), "[MASK]").texts[0].split()

    assert run("delete") == run("delete") and run("delete") != run("delete", 1)
    deleted = run("delete")
    assert 0 < len(deleted) < len(words) and all(w in words for w in deleted)
    swapped = run("swap")
    assert swapped != words and Counter(swapped) == Counter(words)
    masked = run("mask")
    assert len(masked) == len(words) and 0 < masked.count("[MASK]") < len(words)
    assert all(m in ("[MASK]", w) for m, w in zip(masked, words))
    assert perturb(Example(1, ("solo",), 0), "delete", 1.0, np.random.default_rng(0), "").texts == ("solo",)
    assert perturb(ex, "delete", 0.3, np.random.default_rng(0), "").label is None


def test_sources_are_recorded_and_the_size_is_a_seeded_sample(tmp_path):
    texts = tmp_path / "texts.csv"
    texts.write_text("text\n" + "".join(f"an unlabelled line {i}\n" for i in range(30)))
    cfg = make_cfg(*custom_task(tmp_path), f"data.transfer=[augment,{texts}]", "data.augment_multiplier=2",
                   "data.transfer_size=3x")
    train = [Example(i, (f"a good film number {i}",), i % 2) for i in range(10)]
    examples, record = transfer_examples(cfg, train, [], "[MASK]", None, tmp_path)
    assert record["pool"] == 2 * 10 + 30 and record["requested"] == 30 and record["size"] == len(examples) == 30
    assert sum(record["per_source"].values()) == 30
    assert set(record["per_source"]) <= {"augment:delete", "file:texts.csv"}
    assert [e["uid"] for e in record["examples"]] == [ex.uid for ex in examples]
    assert all(ex.label is None for ex in examples)
    again, _ = transfer_examples(cfg, train, [], "[MASK]", None, tmp_path)
    assert [ex.texts for ex in again] == [ex.texts for ex in examples]
    OmegaConf.update(cfg, "seed", 3)
    other, _ = transfer_examples(cfg, train, [], "[MASK]", None, tmp_path)
    assert [ex.uid for ex in other] != [ex.uid for ex in examples]


def test_a_file_needs_one_column_per_segment(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"premise": "a", "hypothesis": "b"}\n')
    cfg = make_cfg("task=cb", f"data.transfer=[{pairs}]")
    train = [Example(0, ("p", "h"), 0)]
    with pytest.raises(Exception, match="text_a"):
        transfer_examples(cfg, train, [], None, None, tmp_path)
    OmegaConf.update(cfg, "data.transfer_fields", ["premise", "hypothesis"])
    examples, record = transfer_examples(cfg, train, [], None, None, tmp_path)
    assert examples[0].texts == ("a", "b") and record["per_source"] == {"file:pairs.jsonl": 1}
    OmegaConf.update(cfg, "data.transfer_fields", ["premise"])
    with pytest.raises(ConfigError, match="one column per segment"):
        transfer_examples(cfg, train, [], None, None, tmp_path)


def test_another_task_must_have_the_same_input_shape(superglue, tmp_path):
    cfg = make_cfg("task=cb", f"data_dir={superglue}", "data.transfer=[copa]")
    with pytest.raises(ConfigError, match="same input shape"):
        transfer_examples(cfg, [Example(0, ("p", "h"), 0)], [], None, str(superglue), tmp_path)
    OmegaConf.update(cfg, "data.transfer", ["rte"])
    examples, record = transfer_examples(cfg, [Example(0, ("p", "h"), 0)], [], None, str(superglue), tmp_path)
    assert examples and record["per_source"] == {"task:rte": len(examples)}


def test_without_labels_the_loss_is_the_soft_and_pkd_terms_alone():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    s_cls, t_cls = [torch.randn(4, 8, generator=g)], [torch.randn(4, 8, generator=g)]
    loss, parts = distillation_loss(student, teacher, None, "classification", 0.5, 2.0, "kl", 3.0, s_cls, t_cls)
    expected = 0.5 * soft_loss(student, teacher, 2.0, "classification", "kl") + 3.0 * pkd_loss(s_cls, t_cls)
    torch.testing.assert_close(loss, expected)
    assert "ce" not in parts and set(parts) == {"kd", "pkd"}


def test_a_run_distils_on_the_transfer_set_and_keeps_the_caches_it_does_not_touch(tmp_path):
    task = custom_task(tmp_path)
    texts = tmp_path / "texts.csv"
    texts.write_text("text\n" + "".join(f"a {w} movie take {i}\n" for i in range(12) for w in ("fine", "dull")))
    cache = tmp_path / "cache"
    plain = run_cfg(tmp_path / "plain", *task, "method=kd", cache_dir=cache)
    out = tmp_path / "coverage"
    run = run_cfg(out, *task, "method=kd", f"data.transfer=[augment,{texts}]", "data.transfer_size=1.5x",
                  "data.augment=swap", cache_dir=cache)
    train_size = run["task"]["sizes"]["train"]
    recorded = run["task"]["transfer"]
    assert recorded["pool"] == train_size + 24  # one swapped copy of each train' input, and the file's lines
    assert recorded["size"] == recorded["requested"] == round(1.5 * train_size)
    on_disk = json.loads((out / "transfer.json").read_text())
    assert len(on_disk["examples"]) == recorded["size"]
    assert Counter(e["source"] for e in on_disk["examples"]) == Counter(recorded["per_source"])
    kd = run["phases"]["distill"]
    assert kd["transfer"]["examples"] == recorded["size"] and 0.0 < kd["transfer"]["teacher_confidence"] <= 1.0
    assert all("transfer_kd" in epoch and "transfer_ce" not in epoch for epoch in kd["history"])
    # the teacher and the undistilled student do not read the transfer set: their caches are those of the plain run
    assert run["phases"]["teacher"]["cached"] and run["phases"]["undistilled"]["cached"]
    assert not kd["cached"]
    assert run["agents"]["teacher"] == plain["agents"]["teacher"]
    assert kd["history"] != plain["phases"]["distill"]["history"]


def test_frontier_filtering_beside_a_transfer_set_ranks_train_only_and_distils_every_transfer_target(
        tmp_path, monkeypatch):
    from mpdistil.phases import distill as distill_module

    calls: list[tuple[bool, list[int], Any]] = []  # (transfer batch?, indices, soft weights) of the distilled student
    real_loss, real_inputs, seen = distill_module.distillation_loss, distill_module.model_inputs, {}

    def inputs(batch, *args, **kwargs):
        seen["index"] = batch["index"].tolist()
        return real_inputs(batch, *args, **kwargs)

    def loss(*args, **kwargs):
        if args[4] > 0:
            calls.append((args[2] is None, seen["index"], kwargs.get("soft_weights")))
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(distill_module, "model_inputs", inputs)
    monkeypatch.setattr(distill_module, "distillation_loss", loss)
    run = run_cfg(tmp_path / "run", *custom_task(tmp_path), "method=kd", "method.student_epochs=2",
                  "data.transfer=[augment]", "data.transfer_size=1x", "method.frontier_filter=student_prob",
                  "method.frontier_keep=0.5", "method.frontier_warmup=1")
    kd, n, size = run["phases"]["distill"], run["task"]["sizes"]["train"], run["task"]["transfer"]["size"]
    frontier = kd["frontier"]
    assert frontier["transfer_unfiltered"] == size == kd["transfer"]["examples"] == n
    assert [(e["epoch"], e["n"], e["count"]) for e in frontier["epochs"]] == [(1, n, round(0.5 * n))]
    last = calls[len(calls) // 2:]  # two epochs of the same batches: the second is the filtered one
    transfer = [(idx, w) for from_transfer, idx, w in last if from_transfer]
    assert sorted(i for idx, _ in transfer for i in idx) == list(range(size))  # every transfer target, once
    assert all(w is None for _, w in transfer)
    dropped = sorted(i for from_transfer, idx, w in last if not from_transfer
                     for i, v in zip(idx, w.tolist()) if v == 0.0)
    assert dropped == frontier["epochs"][0]["filtered"]
