"""Student-frontier filtering of the soft term and noisy teachers: the pure functions on hand-built tensors, then
what the phases do with them in tiny real runs (``debug=fast``, the small custom task)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from mpdistil import frontier as FR
from mpdistil import losses as L
from mpdistil.config import ConfigError, validate
from mpdistil.phases import distill as distill_module
from mpdistil.phases import teacher as teacher_module
from mpdistil.phases.distill import DistillPhase
from tests.helpers import custom_task, make_cfg, run_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

FILTER = ("method=kd", "method.frontier_warmup=0", "method.student_epochs=2")


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def softmax(z: list[float], tau: float = 1.0) -> list[float]:
    e = [math.exp(v / tau) for v in z]
    return [v / sum(e) for v in e]


# 1. The per-example soft loss ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["kl", "mse"])
def test_per_example_soft_loss_with_unit_weights_is_the_batchmean_loss(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(7, 3, generator=g), 3 * torch.randn(7, 3, generator=g)
    y = torch.randint(0, 3, (7,), generator=g)
    per = L.soft_loss_per_example(s, t, 2.0, "classification", name)
    assert per.shape == (7,)
    assert per.mean().item() == pytest.approx(L.soft_loss(s, t, 2.0, "classification", name).item(), rel=1e-6)
    plain, parts = L.distillation_loss(s, t, y, "classification", 0.5, 2.0, name)
    unit, unit_parts = L.distillation_loss(s, t, y, "classification", 0.5, 2.0, name, soft_weights=torch.ones(7))
    assert unit.item() == pytest.approx(plain.item(), rel=1e-6)
    assert unit_parts["kd"] == pytest.approx(parts["kd"], rel=1e-6)
    # one example alone: the per-example value is the loss of a batch of one
    assert per[2].item() == pytest.approx(L.soft_loss(s[2:3], t[2:3], 2.0, "classification", name).item(), rel=1e-6)


def test_a_loss_registered_without_a_per_example_form_is_evaluated_per_example(monkeypatch) -> None:
    def cosine(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
        return (1 - torch.nn.functional.cosine_similarity(s, t, dim=-1)).mean()

    monkeypatch.setitem(L.LOSSES, "cosine", cosine)
    s, t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    per = L.soft_loss_per_example(s, t, 1.0, "classification", "cosine")
    assert per.tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    assert per.mean().item() == pytest.approx(cosine(s, t, 1.0).item(), rel=1e-6)


def test_weighted_soft_term_matches_the_hand_computation() -> None:
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0], [2.0, 0.0]])
    y = torch.tensor([0, 1, 1])
    w = torch.tensor([1.0, 0.0, 0.25])
    tau, alpha = 2.0, 0.4
    d = [tau ** 2 * kl(softmax(tt, tau), softmax(ss, tau)) for ss, tt in zip(s.tolist(), t.tolist())]
    soft = (1.0 * d[0] + 0.0 * d[1] + 0.25 * d[2]) / 3  # Σ w·D / B: example 1 contributes nothing
    ce = sum(-math.log(softmax(ss)[yy]) for ss, yy in zip(s.tolist(), y.tolist())) / 3
    total, parts = L.distillation_loss(s, t, y, "classification", alpha, tau, "kl", soft_weights=w)
    assert parts["kd"] == pytest.approx(soft, rel=1e-6)
    assert total.item() == pytest.approx(alpha * soft + (1 - alpha) * ce, rel=1e-6)


# 2. Which targets are filtered --------------------------------------------------------------------------

# Five train' examples, three classes. Teacher targets and student logits are chosen so that the two criteria
# disagree: example 2's teacher is nearly uniform (the student gives its label little probability, but at τ = 2
# the KL is small), example 3's teacher is very confident (the student agrees, but is far less sure). Examples 1
# and 4 have the same student logits, so their student_prob scores tie exactly; on example 4 the two agree.
TEACHER = torch.tensor([[2.0, 0, 0], [0, 3, 0], [0.2, 0, 0], [6, 0, 0], [0, 1, 0]])
STUDENT = torch.tensor([[0.0, 0, 0], [0, 1, 0], [0, 2, 0], [1.5, 0, 0], [0, 1, 0]])
GOLD = torch.tensor([0, 2, 0, 1, 2])


def test_frontier_scores_are_the_hand_values() -> None:
    p_target = [softmax(s)[max(range(3), key=t.__getitem__)] for s, t in zip(STUDENT.tolist(), TEACHER.tolist())]
    assert (-FR.frontier_scores(STUDENT, TEACHER, "student_prob", 2.0)).tolist() == pytest.approx(p_target, rel=1e-6)
    kls = [kl(softmax(t, 2.0), softmax(s, 2.0)) for s, t in zip(STUDENT.tolist(), TEACHER.tolist())]
    assert FR.frontier_scores(STUDENT, TEACHER, "kl_quantile", 2.0).tolist() == pytest.approx(kls, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize(("criterion", "keep", "expected"), [
    # p_S(ŷ_T): 0.333, 0.576, 0.107, 0.691, 0.576 -> lowest first; examples 1 and 4 tie, the lower index goes first
    ("student_prob", 0.6, [0, 2]),
    ("student_prob", 0.4, [0, 1, 2]),
    # KL at τ = 2: 0.123, 0.117, 0.132, 0.366, 0 -> highest first
    ("kl_quantile", 0.6, [2, 3]),
    ("kl_quantile", 0.4, [0, 2, 3]),
    ("kl_quantile", 1.0, []),
    ("student_prob", 0.2, [0, 1, 2, 4]),
    ("student_prob", 0.1, [0, 1, 2, 3, 4]),  # 0.9 · 5 = 4.5 rounds up
])
def test_the_targets_furthest_beyond_the_student_are_filtered(criterion: str, keep: float, expected: list[int]) -> None:
    weights, record = FR.filter_epoch(STUDENT, TEACHER, GOLD, criterion, keep, "drop", 2.0)
    assert record["filtered"] == expected and record["count"] == len(expected) and record["n"] == 5
    if expected:
        assert weights.tolist() == [0.0 if i in expected else 1.0 for i in range(5)]
    else:
        assert weights is None


def test_weight_mode_weighs_filtered_targets_by_the_students_probability_of_the_teachers_label() -> None:
    weights, record = FR.filter_epoch(STUDENT, TEACHER, GOLD, "kl_quantile", 0.6, "weight", 2.0)
    p2, p3 = softmax([0, 2, 0])[0], softmax([1.5, 0, 0])[0]
    assert weights.tolist() == pytest.approx([1.0, 1.0, p2, p3, 1.0], rel=1e-6)
    assert record["weights"] == pytest.approx([p2, p3], rel=1e-6)


def test_the_flip_table_counts_teacher_mistakes_among_filtered_and_kept() -> None:
    # teacher predicts 0, 1, 0, 0, 1; gold 0, 2, 0, 1, 2 -> wrong on examples 1, 3 and 4
    # student predicts 0, 1, 1, 0, 1 -> right on 0 only
    _, record = FR.filter_epoch(STUDENT, TEACHER, GOLD, "kl_quantile", 0.6, "drop", 2.0)  # filters 2 and 3
    assert record["flip"]["filtered"] == {"n": 2, "teacher_wrong": 1, "teacher_right": 1, "both": 0,
                                          "teacher_only": 1, "student_only": 0, "neither": 1}
    assert record["flip"]["kept"] == {"n": 3, "teacher_wrong": 2, "teacher_right": 1, "both": 1,
                                      "teacher_only": 0, "student_only": 0, "neither": 2}
    log = FR.FrontierLog()
    log.add(1, record)
    log.add(2, FR.filter_epoch(STUDENT, TEACHER, GOLD, "student_prob", 0.6, "drop", 2.0)[1])  # filters 0 and 2
    assert log.times_filtered == {"0": 1, "2": 2, "3": 1}
    summary = log.summary()
    assert summary["filtered"]["n"] == 4 and summary["teacher_error_rate_filtered"] == pytest.approx(1 / 4)
    restored = FR.FrontierLog()
    restored.load_state_dict(log.state_dict())
    assert restored.state_dict() == log.state_dict()


# 3. Noisy teachers --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "classes", "rate", "flipped"), [(50, 3, 0.3, 15), (40, 2, 0.25, 10), (7, 4, 0.5, 4),
                                                               (20, 5, 0.0, 0), (20, 5, 1.0, 20)])
def test_label_flip_flips_exactly_the_requested_fraction_to_other_classes(n: int, classes: int, rate: float,
                                                                          flipped: int) -> None:
    labels = torch.arange(n) % classes
    new, idx = FR.flip_labels(labels, rate, classes, torch.Generator().manual_seed(3))
    changed = (new != labels).nonzero().flatten()
    assert idx.tolist() == changed.tolist() and len(idx) == flipped  # every chosen label moved to another class
    assert int(new.min()) >= 0 and int(new.max()) < classes
    again, idx_again = FR.flip_labels(labels, rate, classes, torch.Generator().manual_seed(3))
    assert torch.equal(again, new) and torch.equal(idx_again, idx)
    if 0 < flipped < n:
        other, _ = FR.flip_labels(labels, rate, classes, torch.Generator().manual_seed(4))
        assert not torch.equal(other, new)


def test_logit_noise_is_reproducible_and_has_the_requested_scale() -> None:
    noise = FR.logit_noise((10000, 3), 0.7, torch.Generator().manual_seed(5))
    assert torch.equal(noise, FR.logit_noise((10000, 3), 0.7, torch.Generator().manual_seed(5)))
    assert not torch.equal(noise, FR.logit_noise((10000, 3), 0.7, torch.Generator().manual_seed(6)))
    assert float(noise.std()) == pytest.approx(0.7, rel=0.03)
    assert abs(float(noise.mean())) < 0.03
    assert not FR.logit_noise((4, 2), 0.0, torch.Generator().manual_seed(5)).any()


# 4. In real runs ----------------------------------------------------------------------------------------

def student_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "student" / "model.safetensors"))


@pytest.mark.parametrize("overrides", [
    ("method.frontier_filter=student_prob",),
    ("method.frontier_filter=kl_quantile", "method.frontier_mode=weight"),
], ids=["student_prob-drop", "kl_quantile-weight"])
def test_keeping_every_target_is_bit_identical_to_no_filter(tmp_path: Path, overrides: tuple[str, ...]) -> None:
    task, cache = custom_task(tmp_path), tmp_path / "cache"
    plain = run_cfg(tmp_path / "plain", *task, *FILTER, cache_dir=cache)
    kept = run_cfg(tmp_path / "kept", *task, *FILTER, *overrides, "method.frontier_keep=1.0", cache_dir=cache)
    frontier = kept["phases"]["distill"]["frontier"]
    assert [e["epoch"] for e in frontier["epochs"]] == [0, 1]  # the filter ran in both epochs ...
    assert all(e["count"] == 0 for e in frontier["epochs"]) and frontier["times_filtered"] == {}  # ... kept all
    assert not kept["phases"]["distill"]["cached"]
    a, b = student_weights(tmp_path / "plain"), student_weights(tmp_path / "kept")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert kept["agents"]["student"] == plain["agents"]["student"]
    strip = lambda h: [{k: v for k, v in e.items() if k != "frontier_filtered"} for e in h]  # noqa: E731
    assert strip(kept["phases"]["distill"]["history"]) == plain["phases"]["distill"]["history"]


def spy(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, calls: list[tuple[str, Any]]) -> None:
    """Record every call of ``module.name`` (its arguments) in ``calls``, in order with the other spies."""
    real = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append((name, (args, kwargs)))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def test_filtering_starts_after_warmup_and_drops_exactly_the_recorded_examples(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []
    for name in ("model_inputs", "distillation_loss", "predict"):
        spy(monkeypatch, distill_module, name, calls)
    out = run_cfg(tmp_path / "run", *custom_task(tmp_path), "method=kd", "method.student_epochs=3",
                  "method.frontier_filter=student_prob", "method.frontier_keep=0.75", "method.frontier_warmup=1")
    record = out["phases"]["distill"]["frontier"]
    n = record["epochs"][0]["n"]
    assert [e["epoch"] for e in record["epochs"]] == [1, 2]  # nothing in the warm-up epoch
    assert all(e["count"] == round(0.25 * n) for e in record["epochs"])
    assert sum(record["times_filtered"].values()) == 2 * round(0.25 * n)
    for e in record["epochs"]:
        assert e["flip"]["filtered"]["n"] + e["flip"]["kept"]["n"] == n
    # the distilled student's calls (α > 0), split into epochs by the student predictions made at their starts
    epochs: list[list[tuple[list[int], Any]]] = [[]]
    index: list[int] = []
    for name, (args, kwargs) in calls:
        if name == "predict":
            epochs.append([])
        elif name == "model_inputs":
            index = args[0]["index"].tolist()
        elif args[4] > 0:
            epochs[-1].append((index, kwargs["soft_weights"]))
    assert len(epochs) == 3  # one prediction over train' per filtered epoch, none in the warm-up
    assert epochs[0] and all(w is None for _, w in epochs[0])
    for e, batches in zip(record["epochs"], epochs[1:]):
        dropped = sorted(i for idx, w in batches for i, v in zip(idx, w.tolist()) if v == 0.0)
        assert dropped == e["filtered"]
        assert sum(len(idx) for idx, _ in batches) == n


def test_label_flip_changes_the_teachers_labels_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []
    spy(monkeypatch, teacher_module, "model_inputs", calls)
    spy(monkeypatch, teacher_module, "hard_loss", calls)
    student_calls: list[tuple[str, Any]] = []
    spy(monkeypatch, distill_module, "model_inputs", student_calls)
    spy(monkeypatch, distill_module, "distillation_loss", student_calls)
    captured: dict[str, Any] = {}
    real_start = DistillPhase.start

    def start(self: DistillPhase, ctx: Any) -> None:
        captured["labels"] = ctx.splits["train"].labels.clone()
        real_start(self, ctx)

    monkeypatch.setattr(DistillPhase, "start", start)
    out = run_cfg(tmp_path / "run", *custom_task(tmp_path), "method=kd", "method.teacher_noise=label_flip",
                  "method.teacher_noise_rate=0.25")
    noise = out["phases"]["teacher"]["teacher_noise"]
    true = captured["labels"]
    assert noise["of"] == len(true) and noise["flipped"] == round(0.25 * len(true)) == len(noise["flipped_indices"])
    seen: dict[int, int] = {}
    index: list[int] = []
    for name, (args, _) in calls:
        if name == "model_inputs":
            index = args[0]["index"].tolist()
        else:
            seen.update(zip(index, args[1].tolist()))
    assert sorted(seen) == list(range(len(true)))
    moved = sorted(i for i, label in seen.items() if label != int(true[i]))
    assert moved == noise["flipped_indices"]
    for name, (args, _) in student_calls:  # the students are trained on the true labels
        if name == "model_inputs":
            index = args[0]["index"].tolist()
        else:
            assert args[2].tolist() == true[index].tolist()


def test_logit_noise_is_fixed_per_example_across_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[int, list[torch.Tensor]] = {}
    real = DistillPhase.targets

    def targets(self: DistillPhase, ctx: Any, idx: torch.Tensor, choices: int, *rest: Any) -> Any:
        noisy = real(self, ctx, idx, choices, *rest)
        if noisy is not None:
            clean = self.soft_targets(ctx, idx, choices)
            for i, row in zip(idx.tolist(), noisy - clean):
                seen.setdefault(i, []).append(row)
        return noisy

    monkeypatch.setattr(DistillPhase, "targets", targets)
    out = run_cfg(tmp_path / "run", *custom_task(tmp_path), "method=kd", "method.student_epochs=2",
                  "method.teacher_noise=logit_gauss", "method.teacher_noise_scale=0.5")
    assert all(len(rows) == 2 and torch.equal(rows[0], rows[1]) for rows in seen.values())
    noise = torch.stack([seen[i][0] for i in sorted(seen)])
    record = out["phases"]["distill"]["teacher_noise"]
    assert record["entries"] == noise.numel() and record["scale"] == 0.5
    assert record["realised_std"] == pytest.approx(float(noise.std()), rel=1e-5)
    assert 0.25 < record["realised_std"] < 1.0
    assert "teacher_noise" not in out["phases"]["undistilled"]


def test_multiple_choice_with_the_meta_teachers_targets(tmp_path: Path, superglue: Path) -> None:
    """COPA scores choices, and from the second epoch on T' gives the targets that are ranked and made noisy."""
    out = run_cfg(tmp_path / "run", "task=copa", f"data_dir={superglue}", "method=mpdistil",
                  "method.curriculum_tasks=[]", "method.student_epochs=2", "method.frontier_filter=kl_quantile",
                  "method.frontier_keep=0.7", "method.frontier_warmup=0", "method.teacher_noise=logit_gauss")
    record = out["phases"]["distill"]
    n = record["frontier"]["epochs"][0]["n"]
    assert [(e["epoch"], e["count"]) for e in record["frontier"]["epochs"]] == [(0, round(0.3 * n)),
                                                                                (1, round(0.3 * n))]
    assert record["teacher_noise"]["entries"] == 2 * n  # one noisy logit per choice


class _Killed(Exception):
    """Stands for a kill right after a checkpoint."""


def test_a_run_resumed_between_filtered_epochs_ends_as_an_uninterrupted_one(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from mpdistil import groups

    args = [*custom_task(tmp_path), "method=kd", "method.student_epochs=3", "method.frontier_filter=kl_quantile",
            "method.frontier_keep=0.5", "method.frontier_warmup=1", "trainer.reuse_cache=false"]
    whole = run_cfg(tmp_path / "whole", *args)

    def kill(where: str) -> None:
        if where == "distill:1":
            raise _Killed

    with monkeypatch.context() as mp:
        mp.setattr(groups, "kill_point", kill)
        with pytest.raises(_Killed):
            run_cfg(tmp_path / "resumed", *args)
    assert (tmp_path / "resumed" / "checkpoint" / "meta.json").is_file()
    resumed = run_cfg(tmp_path / "resumed", *args)
    strip = lambda r: {k: v for k, v in r["phases"]["distill"].items() if k not in ("cached", "cache")}  # noqa: E731
    assert [e["epoch"] for e in resumed["phases"]["distill"]["frontier"]["epochs"]] == [1, 2]
    assert strip(resumed) == strip(whole)
    a, b = student_weights(tmp_path / "whole"), student_weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


# 5. Config checks ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "needle"), [
    (("method.frontier_keep=0",), "method.frontier_keep=0"),
    (("method.frontier_keep=1.5",), "method.frontier_keep=1.5"),
    (("method.frontier_warmup=-1",), "method.frontier_warmup=-1"),
    (("method.frontier_filter=margin",), "method.frontier_filter='margin'"),
    (("method.frontier_mode=soft",), "method.frontier_mode='soft'"),
    (("method.teacher_noise=dropout",), "method.teacher_noise='dropout'"),
    (("method.teacher_noise_rate=1.5",), "method.teacher_noise_rate=1.5"),
    (("method.teacher_noise_scale=-1",), "method.teacher_noise_scale=-1"),
    (("task=stsb", "method.frontier_filter=student_prob"), "regression task; set method.frontier_filter=none"),
    (("task=stsb", "method.teacher_noise=label_flip"), "regression task; use method.teacher_noise=logit_gauss"),
    (("method=metadistil", "method.frontier_filter=kl_quantile"), "not on metadistil's"),
    (("method=metadistil", "method.teacher_noise=logit_gauss"), "not on metadistil's"),
])
def test_frontier_and_noise_settings_are_checked(overrides: tuple[str, ...], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")) as info:
        validate(make_cfg(*overrides))
    assert "\n" not in str(info.value)


def test_noise_and_filters_that_apply_are_accepted() -> None:
    validate(make_cfg("task=stsb", "method.teacher_noise=logit_gauss"))
    validate(make_cfg("method=metadistil", "method.teacher_noise=label_flip"))
    validate(make_cfg("method=kd", "method.frontier_filter=kl_quantile", "method.frontier_keep=0.5"))
