"""End-to-end runs through the real config tree on tiny models and the benchmark-layout fixture files."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from mpdistil.data.encode import encode_examples, iterate
from mpdistil.training import NonFiniteLossError
from tests.conftest import FIXTURES
from tests.helpers import main_py, run_cfg


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory, superglue):
    out = tmp_path_factory.mktemp("kd")
    results = run_cfg(out, "task=cb", f"data_dir={superglue}", "model=tiny", "method=kd")
    return out, results


def test_kd_run_writes_results_splits_and_a_loadable_student(kd_run):
    out, results = kd_run
    on_disk = json.loads((out / "results.json").read_text())
    assert set(on_disk["agents"]) == {"teacher", "undistilled", "student"}
    for row in on_disk["agents"].values():
        assert set(row["dev"]) == {"accuracy", "macro_f1"}
    assert {"teacher", "undistilled", "distill", "total"} <= set(on_disk["time"])
    assert on_disk["memory"]["peak_rss_mb"] > 0
    assert on_disk["machine"]["torch"] == torch.__version__ and on_disk["machine"]["cpus"] >= 1
    assert "flops" not in on_disk  # counted only when asked: the counter slows the run
    fid = on_disk["fidelity"]["student_vs_teacher"]["dev"]
    assert 0.0 <= fid["agreement"] <= 1.0 and fid["n"] == 24
    assert fid["flip_both"] + fid["flip_neither"] + fid["flip_student_only"] + fid["flip_teacher_only"] == 24
    splits = json.loads((out / "splits.json").read_text())
    parts = [set(splits[k]) for k in ("train", "quiz", "heldout")]  # held-out selection is the default
    assert sum(map(len, parts)) == 40 and len(set().union(*parts)) == 40
    assert (out / "config.json").is_file()
    assert any(p.endswith("CB.jsonl") for p in on_disk["outputs"]["test_predictions"])

    folder = out / "student"
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    from mpdistil.data.registry import load_task, task_config_for
    from mpdistil.data.splits import subsample

    cfg = task_config_for("cb", data_dir=str(FIXTURES / "superglue"))
    dev = subsample(load_task(cfg).dev["dev"], 24, 42)
    split = encode_examples(tok, dev, "cb", "dev", "classification", 128)
    preds = torch.zeros(len(split), dtype=torch.long)
    with torch.no_grad():
        for batch in iterate(split, 8, tok.pad_token_id):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           token_type_ids=batch["token_type_ids"]).logits
            preds[batch["index"]] = logits.argmax(-1)
    acc = float((preds == split.labels).float().mean())
    assert acc == pytest.approx(on_disk["agents"]["student"]["dev"]["accuracy"])


def test_split_is_deterministic_and_stratified(kd_run, tmp_path, superglue):
    out, _ = kd_run
    again = tmp_path / "again"
    run_cfg(again, "task=cb", f"data_dir={superglue}", "model=tiny", "method=undistilled",
            cache_dir=out / "cache")
    a, b = json.loads((out / "splits.json").read_text()), json.loads((again / "splits.json").read_text())
    assert a["train"] == b["train"] and a["quiz"] == b["quiz"]


def test_teacher_is_cached_and_reused(kd_run, tmp_path, superglue):
    out, first = kd_run
    second = run_cfg(tmp_path, "task=cb", f"data_dir={superglue}", "model=tiny", "method=kd",
                     cache_dir=out / "cache")
    assert second["phases"]["teacher"]["cached"] is True
    assert second["agents"]["teacher"]["dev"] == first["agents"]["teacher"]["dev"]


def test_mpdistil_run_over_two_other_tasks_has_every_key(tmp_path, superglue):
    results = run_cfg(tmp_path, "task=cb", f"data_dir={superglue}", "model=tiny", "method=mpdistil",
                      "method.curriculum_tasks=[rte,copa]", "method.episode_length=3")
    assert set(results["agents"]) == {"teacher", "meta_teacher", "undistilled", "student", "mpdistil"}
    cur = results["phases"]["curriculum"]
    assert cur["tasks"] == ["cb", "rte", "copa"] and len(cur["episode_rewards"]) == 2
    assert all(len(t) == 3 and set(t) <= {"cb", "rte", "copa"} for t in cur["trajectories"])
    assert sum(cur["action_distribution"].values()) == pytest.approx(1.0)
    assert results["selection_split"] == "heldout" and results["protocol"]["selected_on"] == "heldout"
    assert {"student_vs_teacher", "mpdistil_vs_teacher", "mpdistil_vs_meta_teacher"} <= set(results["fidelity"])
    assert results["phases"]["meta_teacher"]["meta_loss"] == "col"


def test_curriculum_ablation_reuses_cached_phases(tmp_path, superglue):
    common = ("task=cb", f"data_dir={superglue}", "model=tiny", "method=mpdistil", "method.curriculum_tasks=[]",
              "method.episode_length=2")
    first = run_cfg(tmp_path / "a", *common, cache_dir=tmp_path / "cache")
    second = run_cfg(tmp_path / "b", *common, "method.reward=real", cache_dir=tmp_path / "cache")
    assert all(second["phases"][p]["cached"] for p in ("teacher", "undistilled", "distill", "meta_teacher"))
    assert second["agents"]["student"]["dev"] == first["agents"]["student"]["dev"]
    assert second["phases"]["curriculum"]["reward"] == "real"
    assert second["phases"]["curriculum"]["tasks"] == ["cb"]


def test_selection_on_quiz_is_recorded(tmp_path, superglue):
    results = run_cfg(tmp_path, "task=cb", f"data_dir={superglue}", "model=tiny", "method=undistilled",
                      "trainer.selection_split=quiz")
    assert results["selection_split"] == "quiz"
    assert "accuracy" in results["phases"]["undistilled"]["selection"]
    from mpdistil.results import final_score

    assert final_score(results) == results["agents"]["undistilled"]["quiz"]["accuracy"]


def test_non_finite_loss_stops_with_a_clear_error(tmp_path, superglue):
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        run_cfg(tmp_path, "task=cb", f"data_dir={superglue}", "model=tiny", "method=undistilled",
                "method.student_lr=1e12", "method.student_epochs=3", "task.max_train_examples=80")


def test_wandb_offline_logs_and_none_imports_nothing(tmp_path, superglue):
    run_cfg(tmp_path, "task=cb", f"data_dir={superglue}", "model=tiny", "method=undistilled", "logger=wandb")
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert files, "no offline W&B run folder"
    blob = files[0].read_bytes()
    for key in (b"final/undistilled/dev/accuracy", b"undistilled/loss", b"undistilled/step", b"mpdistil"):
        assert key in blob, key
    code = ("import sys; from tests.helpers import run_cfg; from pathlib import Path;"
            f"run_cfg(Path(r'{tmp_path / 'none'}'), 'task=cb', 'data_dir={superglue}', 'model=tiny',"
            " 'method=undistilled'); print('wandb' in sys.modules)")
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=str(__import__("tests.helpers").helpers.REPO))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.slow
def test_main_py_multirun_sweep(tmp_path, superglue):
    proc = main_py("-m", "task=cb,rte", "seed=1,2", f"data_dir={superglue}", "model=tiny", "method=undistilled",
                   "logger=none", "trainer.progress=false", "method.student_epochs=1", "task.max_train_examples=30",
                   "task.max_eval_examples=16", f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'mr'}",
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted(tmp_path.glob("mr/*/results.json"))
    assert len(found) == 4
    seeds = sorted((json.loads(p.read_text())["task"]["name"], json.loads(p.read_text())["seed"]) for p in found)
    assert seeds == [("cb", 1), ("cb", 2), ("rte", 1), ("rte", 2)]


@pytest.mark.slow
def test_real_minilm_smoke(tmp_path, superglue):
    results = run_cfg(tmp_path, "task=rte", f"data_dir={superglue}", "model=minilm", "method=kd",
                      "task.max_train_examples=32", "task.max_eval_examples=16", "task.max_length=64")
    assert results["model"]["teacher_layers"] == 6 and results["model"]["student_layers"] == 3
    assert np.isfinite(results["agents"]["student"]["dev"]["accuracy"])


def test_out_of_domain_tasks_report_the_gap(tmp_path):
    results = run_cfg(tmp_path, "task=rte", f"data_dir={FIXTURES}", "model=tiny", "method=kd",
                      "eval.ood_tasks=[glue_rte]")
    ood = results["ood"]["glue_rte"]
    assert set(ood) == {"teacher", "undistilled", "student"}
    for row, metrics in ood.items():
        home = results["agents"][row]["dev"]["accuracy"]
        assert metrics["gap"] == pytest.approx(home - metrics["accuracy"])


def test_out_of_domain_task_with_other_labels_is_refused(tmp_path, superglue):
    from mpdistil.config import ConfigError

    with pytest.raises(ConfigError, match="same label scheme"):
        run_cfg(tmp_path, "task=cb", f"data_dir={superglue}", "model=tiny", "method=undistilled",
                "eval.ood_tasks=[rte]")


def test_default_partners_without_files_are_left_out_but_a_chosen_task_must_exist(tmp_path, superglue):
    """The fixture SuperGLUE folder, like the shared one, has no BoolQ: the default actions of RTE go on without it,
    recorded; a curriculum list the user wrote that names BoolQ stops with the data error before training."""
    from mpdistil.data.types import DataError

    common = ("task=rte", f"data_dir={superglue}", "model=tiny", "method=mpdistil", "method.episode_length=2",
              "method.phases=[teacher,distill+meta_teacher,curriculum]")
    results = run_cfg(tmp_path / "default", *common)
    assert results["phases"]["curriculum"]["tasks"] == ["rte", "cb", "copa", "wic", "wsc"]
    assert list(results["task"]["curriculum_tasks_left_out"]) == ["boolq"]
    with pytest.raises(DataError, match="BoolQ"):
        run_cfg(tmp_path / "chosen", *common, "method.curriculum_tasks=[boolq,cb]")
    assert not (tmp_path / "chosen" / "results.json").exists()


def test_bf16_autocast_runs_every_phase(tmp_path, superglue):
    """The GPU path's precision, exercised on CPU: every phase (incl. the pilot meta-gradient) under bf16."""
    results = run_cfg(tmp_path, "task=cb", f"data_dir={superglue}", "model=tiny", "method=mpdistil",
                      "method.curriculum_tasks=[rte]", "method.episode_length=2", "method.meta_objective=mixed",
                      "trainer.precision=bf16")
    for row in ("teacher", "undistilled", "student", "mpdistil", "meta_teacher"):
        assert np.isfinite(results["agents"][row]["dev"]["accuracy"]), row


def test_quiz_stats_policy_state_runs_under_the_tightest_padding_bound(tmp_path, superglue):
    """The quiz-statistics state (no other test reaches it) with inference batches of equal lengths only."""
    results = run_cfg(tmp_path, "task=cb", f"data_dir={superglue}", "model=tiny", "method=mpdistil",
                      "method.curriculum_tasks=[rte]", "method.episode_length=2", "method.policy_state=quiz_stats",
                      "trainer.eval_max_padding=0.0")
    policy = results["phases"]["curriculum"]["final_policy"]
    assert set(policy) == {"cb", "rte"} and abs(sum(policy.values()) - 1.0) < 1e-5


def test_scoring_every_third_episode_changes_which_can_be_picked_not_the_training(tmp_path, superglue):
    """method.select_every=3 over 5 episodes scores episodes 2 and 4 (the last) only; the policy's
    trajectories and rewards are those of the run that scores every episode."""
    common = ("task=cb", f"data_dir={superglue}", "model=tiny", "method=mpdistil", "method.curriculum_tasks=[rte]",
              "method.episode_length=2", "method.episodes=5", "trainer.reuse_cache=false", "trainer.count_flops=true")
    every_run = run_cfg(tmp_path / "every", *common)
    sparse_run = run_cfg(tmp_path / "sparse", *common, "method.select_every=3")
    every, sparse = every_run["phases"]["curriculum"], sparse_run["phases"]["curriculum"]
    assert sparse["trajectories"] == every["trajectories"]
    assert sparse["episode_rewards"] == every["episode_rewards"]
    assert sparse["best_episode"] in (2, 4)
    # Scoring is counted apart: 2 scorings against 5 at the same cost each, and the same training work.
    f_every, f_sparse = every_run["flops"], sparse_run["flops"]
    assert 5 * f_sparse["curriculum_selection"] == 2 * f_every["curriculum_selection"] > 0
    assert (f_every["curriculum"] - f_every["curriculum_selection"]
            == f_sparse["curriculum"] - f_sparse["curriculum_selection"])


def test_flops_are_summed_per_label_and_only_inside_timed_stretches():
    from types import SimpleNamespace

    from torch.utils.flop_counter import FlopCounterMode

    from mpdistil.context import RunContext

    a, b = torch.ones(4, 5), torch.ones(5, 3)
    with FlopCounterMode(display=False) as counter:
        ctx = SimpleNamespace(timings={}, flops={}, flop_counter=counter)
        for _ in range(2):
            with RunContext.timed(ctx, "phase"):
                a @ b
        torch.ones(64, 64) @ torch.ones(64, 64)  # outside every timed stretch
        with RunContext.timed(ctx, "evaluation"):
            torch.ones(2, 7) @ torch.ones(7, 1)
    assert ctx.flops == {"phase": 2 * (2 * 4 * 5 * 3), "evaluation": 2 * 2 * 7 * 1}
    assert set(ctx.timings) == {"phase", "evaluation"}
