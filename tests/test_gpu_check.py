"""experiments/gpu_check.py: its refusal without CUDA, its comparisons and report on synthetic inputs, its run
overrides against the real config tree, and (tests marked gpu) the CUDA path itself."""
from __future__ import annotations

import copy
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from mpdistil.config import validate
from tests.helpers import REPO, make_cfg, run_cfg

SCRIPT = REPO / "experiments" / "gpu_check.py"
NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}  # hides any GPU from torch


def load_gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gc = load_gpu_check()


def results(losses: dict[str, float], dev: dict[str, dict[str, float]], n_dev: int = 24) -> dict[str, Any]:
    """The parts of a results.json the comparisons read."""
    return {"task": {"sizes": {"train": 32, "dev": n_dev}}, "protocol": {"reported": ["dev"]},
            "phases": {p: {"history": [{"loss": 9.0}, {"loss": v}]} for p, v in losses.items()},
            "agents": {row: {"dev": m, "quiz": {"accuracy": 0.0}} for row, m in dev.items()},
            "fidelity": {"student_vs_teacher": {"dev": {"agreement": 0.9, "kl_teacher_student": 0.1}}}}


CPU = results({"teacher": 0.5, "distill": 1.2}, {"teacher": {"accuracy": 0.875, "macro_f1": 0.87},
                                                 "student": {"accuracy": 0.75, "macro_f1": 0.74}})
PREDICTIONS = {"rows": {"teacher": {"dev": [0, 1, 2] * 8}, "student": {"dev": [0, 1, 1] * 8}}}


def flipped(predictions: dict[str, Any], row: str, count: int) -> dict[str, Any]:
    out = copy.deepcopy(predictions)
    out["rows"][row]["dev"][:count] = [(p + 1) % 3 for p in out["rows"][row]["dev"][:count]]
    return out


def test_without_cuda_it_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                          env=NO_GPU, cwd=tmp_path, timeout=120)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == gc.NO_CUDA_EXIT == 2
    assert len(lines) == 1 and "no CUDA device" in lines[0], lines
    assert not out.exists()


def test_the_refusal_comes_before_any_heavy_import() -> None:
    code = (f"import runpy, sys\ntry:\n    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
            "except SystemExit as e:\n    print('exit', e.code)\n"
            "print('loaded:', *sorted(m for m in ('transformers', 'hydra', 'omegaconf', 'higher', 'datasets', "
            "'mpdistil') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=NO_GPU, cwd=REPO,
                          timeout=120)
    assert proc.stdout.splitlines() == ["exit 2", "loaded:"], proc.stdout + proc.stderr


def test_runs_that_agree_within_tolerance_pass() -> None:
    cuda = copy.deepcopy(CPU)
    cuda["phases"]["distill"]["history"][-1]["loss"] = 1.2 * (1 + 5e-4)
    cuda["agents"]["student"]["dev"]["accuracy"] = 0.75 + 1 / 24  # one dev example flipped
    cuda["agents"]["student"]["dev"]["macro_f1"] = 0.80  # more than one example's weight: reported, not gated
    passed, numbers = gc.compare_runs(CPU, cuda, gc.Tolerance(loss_rtol=1e-3), PREDICTIONS,
                                      flipped(PREDICTIONS, "student", 1))
    assert passed, numbers["problems"]
    assert numbers["changed_predictions"] == {"teacher/dev": 0, "student/dev": 1}
    assert numbers["dev_metrics"]["student/dev/macro_f1"]["ok"] is None
    assert numbers["final_losses"]["distill/loss"]["relative_difference"] == pytest.approx(5e-4, rel=1e-3)
    assert numbers["metric_tolerance"] == pytest.approx(1 / 24)
    assert set(numbers["dev_metrics"]) == {"teacher/dev/accuracy", "teacher/dev/macro_f1", "student/dev/accuracy",
                                           "student/dev/macro_f1"}  # quiz is not a reported split


@pytest.mark.parametrize("change, expected", [
    (lambda r: r["phases"]["distill"]["history"][-1].update(loss=1.2 * 1.002), "distill/loss"),
    (lambda r: r["phases"]["teacher"]["history"][-1].update(loss=float("nan")), "teacher/loss"),
    (lambda r: r["agents"]["student"]["dev"].update(accuracy=0.75 + 2 / 24), "student/dev/accuracy"),
    (lambda r: r["phases"].pop("distill"), "recorded losses differ: ['distill/loss']"),
    (lambda r: r["agents"].pop("student"), "dev metrics differ"),
])
def test_a_run_out_of_tolerance_is_reported_as_a_failure(change: Any, expected: str) -> None:
    """Any one loss, accuracy or recorded quantity off is enough."""
    cuda = copy.deepcopy(CPU)
    change(cuda)
    passed, numbers = gc.compare_runs(CPU, cuda, gc.Tolerance(loss_rtol=1e-3))
    assert not passed
    assert any(expected in p for p in numbers["problems"]), numbers["problems"]


@pytest.mark.parametrize("predictions, expected", [
    (flipped(PREDICTIONS, "teacher", 2), "teacher/dev: 2 dev predictions differ (at most 1)"),
    ({"rows": {"teacher": PREDICTIONS["rows"]["teacher"]}}, "student/dev: 24 dev predictions differ (at most 1)"),
    ({"rows": {**PREDICTIONS["rows"], "student": {"dev": [0]}}}, "student/dev: 24 dev predictions differ (at most 1)"),
])
def test_more_changed_predictions_than_allowed_fail(predictions: dict[str, Any], expected: str) -> None:
    passed, numbers = gc.compare_runs(CPU, copy.deepcopy(CPU), gc.TINY, PREDICTIONS, predictions)
    assert not passed and numbers["problems"] == [expected]


def test_nothing_to_compare_is_a_failure() -> None:
    empty = results({}, {})
    passed, numbers = gc.compare_runs(empty, copy.deepcopy(empty), gc.TINY)
    assert not passed and "nothing to compare" in numbers["problems"][0]


def test_a_sane_reduced_precision_run_and_the_ways_it_can_fail() -> None:
    passed, numbers = gc.sane_run(CPU, 0.7)
    assert passed, numbers["problems"]
    low = gc.sane_run(CPU, 0.8)
    assert not low[0] and "student/dev/accuracy" in low[1]["problems"][0]
    assert gc.sane_run(CPU, None)[0]  # no accuracy bar
    broken = copy.deepcopy(CPU)
    broken["phases"]["distill"]["history"][0]["loss"] = float("inf")
    broken["fidelity"]["student_vs_teacher"]["dev"]["kl_teacher_student"] = float("nan")
    passed, numbers = gc.sane_run(broken, None)
    assert not passed and "distill.0.loss" in numbers["problems"][0] and "kl_teacher_student" in numbers["problems"][0]
    outside = copy.deepcopy(CPU)
    outside["agents"]["teacher"]["dev"]["macro_f1"] = 1.5
    assert "outside [0, 1]" in gc.sane_run(outside, None)[1]["problems"][0]


def test_gradients_are_compared_by_relative_distance() -> None:
    g = [torch.linspace(-1, 1, 12).view(3, 4), torch.ones(4)]
    close = [t * (1 + 1e-6) for t in g]
    passed, numbers = gc.compare_gradients(g, close, rtol=1e-4)
    assert passed and numbers["relative_difference"] == pytest.approx(1e-6, rel=0.1)
    assert numbers["cosine"] == pytest.approx(1.0)
    far = [g[0], g[1] + 1e-2]
    passed, numbers = gc.compare_gradients(g, far, rtol=1e-4)
    assert not passed and "relative L2 difference" in numbers["problems"][0]
    assert not gc.compare_gradients(g, [g[0], g[1] * float("nan")])[0]
    assert not gc.compare_gradients(g, [torch.zeros(3, 4), torch.zeros(4)])[0]
    assert not gc.compare_gradients(g, [g[0]])[0]


def test_the_report_is_strict_json_with_every_check(tmp_path: Path) -> None:
    def crashes() -> tuple[bool, dict, float]:
        raise RuntimeError("CUDA error: an illegal memory access")

    checks = [gc.run_check("good", "exact", lambda: (True, {"loss": float("nan"), "ratio": (1.0, float("inf"))},
                                                       12.5)),
              gc.run_check("bad", "1e-3 relative", lambda: (False, {"problems": ["teacher loss off"]}, None)),
              gc.run_check("crash", "none", crashes)]
    report = gc.build_report({"gpu": "Test GPU", "driver": "1.0", "cuda": "12.x", "torch": torch.__version__},
                             checks, "python experiments/gpu_check.py")
    path = gc.write_report(tmp_path / "sub" / "gpu_check.json", report)

    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    saved = json.loads(path.read_text(), parse_constant=refuse)
    assert not saved["passed"] and saved["failed"] == ["bad", "crash"]
    good, bad, crash = saved["checks"]
    assert good["numbers"] == {"loss": "nan", "ratio": [1.0, "inf"]} and good["peak_gpu_mb"] == 12.5
    assert bad["tolerance"] == "1e-3 relative" and bad["error"] is None
    assert crash["error"].startswith("RuntimeError: CUDA error: an illegal memory access")
    text = gc.summary(saved)
    assert "PASS  good" in text and "FAIL  bad" in text and "teacher loss off" in text
    assert text.splitlines()[-1] == "failed: bad, crash"


def test_overrides_replace_keys_in_place() -> None:
    base = ["task=cb", "method.episodes=200", "seed=1"]
    assert gc.replace_overrides(base, ["method.episodes=20", "trainer.device=cuda"]) == \
        ["task=cb", "method.episodes=20", "seed=1", "trainer.device=cuda"]
    assert base == ["task=cb", "method.episodes=200", "seed=1"]


def test_every_run_composes_with_the_real_config(tmp_path: Path) -> None:
    task_dir = gc.write_polarity_task(tmp_path / "polarity")
    runs = {"tiny": [*gc.tiny_overrides(gc.FIXTURE_SUPERGLUE), *gc.COMPARABLE, *gc.on("cuda")],
            "minilm": [*gc.minilm_overrides(task_dir), *gc.on("cuda", "fp16")],
            "anchor": gc.anchor_overrides(gc.FIXTURE_SUPERGLUE, "cuda", "bf16")}
    cfgs = {name: make_cfg(*overrides) for name, overrides in runs.items()}
    for cfg in cfgs.values():
        validate(cfg)
        assert cfg.trainer.device == "cuda" and cfg.logger.name == "none" and not cfg.trainer.reuse_cache
    tiny, minilm, anchor = cfgs["tiny"], cfgs["minilm"], cfgs["anchor"]
    assert tiny.model.name == "tiny" and tiny.method.authors_no_dropout and tiny.method.policy == "uniform"
    assert tiny.trainer.deterministic and tiny.trainer.selection_split == "last"
    assert tiny.method.meta_objective == "mixed" and list(tiny.method.curriculum_tasks) == ["copa", "rte", "wic", "wsc"]
    assert minilm.model.name == "minilm" and minilm.trainer.precision == "fp16" and minilm.task.name == "custom"
    assert (anchor.method.teacher_epochs, anchor.method.student_epochs, anchor.method.episodes) == (2, 2, 20)
    assert anchor.trainer.precision == "bf16" and anchor.task.name == "cb" and anchor.model.name == "minilm"
    assert len({o.split("=", 1)[0] for o in runs["anchor"]}) == len(runs["anchor"])


def test_the_polarity_task_is_fixed_balanced_and_tests_other_nouns(tmp_path: Path) -> None:
    a, b = gc.write_polarity_task(tmp_path / "a"), gc.write_polarity_task(tmp_path / "b")
    assert (a / "train.csv").read_bytes() == (b / "train.csv").read_bytes()
    rows = {name: list(csv.DictReader(open(a / f"{name}.csv"))) for name in ("train", "dev")}
    assert [len(rows["train"]), len(rows["dev"])] == [96, 48]
    assert sum(r["label"] == "positive" for r in rows["dev"]) == 24
    for r in rows["dev"]:
        assert not any(f" {noun}" in f" {r['text']}" for noun in gc.TRAIN_NOUNS), r


def test_recorded_overrides_name_no_folder_of_this_machine(tmp_path: Path) -> None:
    workdir = tmp_path / "tiny"
    got = gc.portable([f"data_dir={REPO / 'tests/fixtures/superglue'}", f"task.train={tmp_path / 'polarity/t.csv'}",
                       "seed=1"], workdir)
    assert got == ["data_dir=./tests/fixtures/superglue", "task.train=<work>/polarity/t.csv", "seed=1"]


def test_a_real_run_is_read_and_compared(tmp_path: Path) -> None:
    """The tiny comparison's run through main.py on the CPU: what the checks read exists in results.json."""
    run = gc.main_py([*gc.tiny_overrides(gc.FIXTURE_SUPERGLUE), *gc.COMPARABLE, *gc.on("cpu"),
                      "eval.attribution=none"], tmp_path / "cpu")
    assert set(gc.final_losses(run.results)) == {"teacher/loss", "undistilled/loss", "distill/loss",
                                                 "meta_teacher/loss", "meta_teacher/pilot_quiz_loss"}
    assert {k.split("/")[0] for k in gc.dev_metrics(run.results)} == \
        {"teacher", "undistilled", "student", "meta_teacher", "mpdistil"}
    assert gc.dev_size(run.results) == 24 and run.peak_gpu_mb is None
    assert run.results["phases"]["curriculum"]["tasks"] == ["cb", "copa", "rte", "wic", "wsc"]
    passed, numbers = gc.compare_runs(run.results, run.results, gc.TINY, run.predictions, run.predictions)
    assert passed and set(numbers["changed_predictions"].values()) == {0}
    assert len(numbers["changed_predictions"]) == 5
    assert gc.sane_run(run.results, None)[0]
    shifted = copy.deepcopy(run.results)
    shifted["phases"]["distill"]["history"][-1]["loss"] *= 1.01
    passed, numbers = gc.compare_runs(run.results, shifted, gc.TINY, run.predictions, flipped(run.predictions,
                                                                                               "mpdistil", 2))
    assert not passed and numbers["problems"][0].startswith("distill/loss")
    assert numbers["problems"][1] == "mpdistil/dev: 2 dev predictions differ (at most 1)"


@pytest.mark.gpu
def test_a_tiny_run_on_cuda_keeps_every_tensor_on_the_gpu(tmp_path: Path, superglue: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import mpdistil.run as run_module

    contexts = []

    def capture(*args: Any, **kwargs: Any) -> Any:
        ctx = original(*args, **kwargs)
        contexts.append(ctx)
        return ctx

    original = run_module.build_context
    monkeypatch.setattr(run_module, "build_context", capture)
    off_gpu: set[str] = set()

    def on_gpu(module: torch.nn.Module, args: tuple) -> None:
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False),
                   *(a for a in args if torch.is_tensor(a))]
        if any(t.device.type != "cuda" for t in tensors):
            off_gpu.add(type(module).__name__)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(on_gpu)
    try:
        res = run_cfg(tmp_path, "task=cb", f"data_dir={superglue}", "method=mpdistil", "method.meta_objective=mixed",
                      "method.curriculum_tasks=[copa,rte,wic,wsc]", "trainer.device=cuda")
    finally:
        handle.remove()
    assert res["device"].startswith("cuda") and res["memory"]["peak_cuda_mb"] > 0
    assert not off_gpu, f"modules ran with tensors off the GPU: {sorted(off_gpu)}"
    (ctx,) = contexts
    for name, agent in ctx.all_agents().items():
        devices = {t.device.type for t in [*agent.parameters(), *agent.buffers()]}
        assert devices == {"cuda"}, (name, devices)
    assert all(math.isfinite(v) for v in gc.final_losses(res).values())


@pytest.mark.gpu
def test_the_second_order_meta_gradient_on_cuda_matches_the_cpu() -> None:
    passed, numbers, peak = gc.check_meta_gradient()
    assert passed, numbers["problems"]
    assert peak > 0 and numbers["higher"]["norm_cuda"] > 0
