"""The generalisation-vs-fidelity study (experiments/paradox.py): the grids' multiruns, and the renderer on synthetic
run folders in the schema a run writes (checked against one real tiny run)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from tests.helpers import REPO, custom_task, run_cfg

SCRIPT = REPO / "experiments" / "paradox.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mpdistil_paradox", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


paradox = load_script()
from tablekit import study  # noqa: E402  (paradox.py puts experiments/ on sys.path)


def accuracy(preds: list[int], labels: list[int]) -> float:
    return sum(p == y for p, y in zip(preds, labels)) / len(labels)


def write_run(
    folder: Path,
    preds: dict[str, list[int]],
    labels: list[int],
    fidelity: dict[str, float],
    seed: int = 1,
    temperature: float = 5.0,
    layers: int = 3,
    noise_rate: float | None = None,
) -> None:
    """A finished ``method=kd`` run folder: results.json, config.json and predictions.json as a run writes them (the
    fields the renderer reads; metrics consistent with the predictions)."""
    folder.mkdir(parents=True)
    agents = {row: {"dev": {"accuracy": accuracy(p, labels)}} for row, p in preds.items()}
    results = {
        "task": {
            "name": "cb",
            "kind": "classification",
            "main_metric": "accuracy",
            "metrics": ["accuracy"],
            "label_names": ["a", "b", "c"],
            "sizes": {"train": 40},
        },
        "method": {"name": "kd", "phases": ["teacher", "undistilled", "distill"]},
        "seed": seed,
        "model": {
            "teacher_layers": 6,
            "student_layers": layers,
            "student_init": "pretrained",
            "teacher_params": 1000,
            "student_params": 100 * layers,
        },
        "agents": agents,
        "final_row": "student",
        "fidelity": {"student_vs_teacher": {"dev": {"n": len(labels), **fidelity}}},
    }
    noise = (
        {"teacher_noise": "none"}
        if noise_rate is None
        else {"teacher_noise": "label_flip", "teacher_noise_rate": noise_rate}
    )
    config = {
        "seed": seed,
        "model": {"student_layers": layers, "student_init": "pretrained"},
        "method": {
            "name": "kd",
            "temperature": temperature,
            "frontier_filter": "none",
            "teacher_noise_rate": 0.1,
            "teacher_noise_scale": 1.0,
            **noise,
        },
        "data": {"transfer": [], "transfer_size": None},
    }
    doc = {
        "task": "cb",
        "kind": "classification",
        "label_names": ["a", "b", "c"],
        "main_metric": "accuracy",
        "train_label_counts": {"0": 20, "1": 15, "2": 5},
        "splits": {"dev": {"uids": [str(i) for i in range(len(labels))], "labels": labels}},
        "rows": {row: {"dev": p} for row, p in preds.items()},
    }
    for name, content in (("results.json", results), ("config.json", config), ("predictions.json", doc)):
        (folder / name).write_text(json.dumps(content))


LABELS = [i % 3 for i in range(30)]


def right_on(k: int, labels: list[int] = LABELS) -> list[int]:
    """Predictions right on the first ``k`` examples and wrong on the rest."""
    return [y if i < k else (y + 1) % 3 for i, y in enumerate(labels)]


def planted(root: Path) -> None:
    """Twelve runs whose gain rises with agreement and falls with KL; the temperature sets the gain's level."""
    temperatures = [1.0, 2.0, 5.0, 10.0]
    for i in range(12):
        write_run(
            root / "sweep" / f"{i}",
            {"teacher": right_on(20), "undistilled": right_on(10), "student": right_on(10 + i)},
            LABELS,
            {
                "agreement": 0.5 + 0.04 * i,
                "kl_teacher_student": 1.0 - 0.05 * i,
                "ece_student": [0.3, 0.1, 0.2, 0.5, 0.4, 0.6, 0.0, 0.8, 0.7, 0.9, 0.35, 0.15][i],
                "attr_spearman": 0.5,
            },
            seed=i,
            temperature=temperatures[i % 4],
        )


def test_a_planted_monotone_relation_is_recovered_with_an_interval_excluding_zero(tmp_path: Path) -> None:
    planted(tmp_path / "runs")
    records, notes = study.gather([tmp_path / "runs"], None)
    assert len(records) == 12 and notes == []
    corr = {c.measure: c for c in study.correlations(records)}
    assert corr["agreement"].rho == pytest.approx(1.0) and corr["agreement"].lo > 0
    assert corr["kl_teacher_student"].rho == pytest.approx(-1.0) and corr["kl_teacher_student"].hi < 0
    assert corr["agreement"].verdict == "gain rises with it"
    assert corr["attr_spearman"].reason and math.isnan(corr["attr_spearman"].rho)  # constant: no ρ
    ece = corr["ece_student"]
    assert -1 < ece.rho < 1 and ece.lo < ece.rho < ece.hi


def test_the_interval_of_an_unrelated_measure_covers_zero() -> None:
    n, rho, lo, hi, why = study.spearman_interval([3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "x")
    assert why == "" and n == 10 and lo < 0 < hi and lo <= rho <= hi


def test_render_writes_the_table_the_csv_and_the_plots(tmp_path: Path) -> None:
    planted(tmp_path / "runs")
    assert paradox.main(["render", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    with open(out / "paradox.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    by_run = {r["run"]: r for r in rows}
    five = by_run["runs/sweep/5"]
    assert float(five["gain"]) == pytest.approx(100 * 5 / 30, abs=1e-3) and five["temperature"] == "2.0"
    assert float(five["vs_teacher"]) == pytest.approx(100 * (15 - 20) / 30, abs=1e-3)
    means = {
        m.level: m
        for m in study.level_means(study.gather([tmp_path / "runs"], None)[0])
        if m.factor == "cb: temperature"
    }
    # temperature 1.0 holds runs 0, 4, 8: gains 0, 4 and 8 examples of 30
    assert list(means) == ["1.0", "2.0", "5.0", "10.0"]
    assert means["1.0"].n == 3 and means["1.0"].gain == pytest.approx(100 * 4 / 30)
    assert means["10.0"].gain == pytest.approx(100 * 7 / 30)
    md = (out / "paradox.md").read_text()
    assert "| all | agreement with the teacher | 12 | 1.00 | [1.00, 1.00] | gain rises with it |" in md
    for png in ("paradox_gain.png", "paradox_fidelity.png", "paradox_transfer.png"):
        assert (out / png).stat().st_size > 1000


def test_students_above_their_teacher_get_the_paired_interval(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(
        runs / "clear",
        {"teacher": right_on(18), "undistilled": right_on(10), "student": right_on(30)},
        LABELS,
        {"agreement": 0.6},
    )
    write_run(
        runs / "close",
        {"teacher": right_on(20), "undistilled": right_on(10), "student": right_on(21)},
        LABELS,
        {"agreement": 0.9},
        seed=2,
    )
    write_run(
        runs / "below",
        {"teacher": right_on(20), "undistilled": right_on(10), "student": right_on(15)},
        LABELS,
        {"agreement": 0.8},
        seed=3,
    )
    records, _ = study.gather([runs], None)
    table, above, beats = study.above_teacher_table(records)
    assert (above, beats) == (2, 1)
    clear = next(r for r in records if r["run"].endswith("clear"))
    assert clear["vs_teacher"] == pytest.approx(40.0) and 0 < clear["vs_teacher_lo"] < 40 < clear["vs_teacher_hi"]
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in table.splitlines()[2:]}
    assert lines["runs/clear"].endswith("| beats |") and lines["runs/close"].endswith("| tie |")
    assert "runs/below" not in lines


def test_a_later_render_grows_the_table_from_its_csv(tmp_path: Path) -> None:
    planted(tmp_path / "old")
    paradox.main(["render", str(tmp_path / "old"), "--out", str(tmp_path / "first")])
    write_run(
        tmp_path / "new" / "a",
        {"teacher": right_on(20), "undistilled": right_on(10), "student": right_on(26)},
        LABELS,
        {"agreement": 0.95},
        noise_rate=0.2,
    )
    records, _ = study.gather([tmp_path / "first" / "paradox.csv", tmp_path / "new"], None)
    assert len(records) == 13
    new = next(r for r in records if r["run"] == "new/a")
    assert new["teacher_noise"] == "label_flip:0.2" and new["vs_teacher_lo"] > 0
    old = next(r for r in records if r["run"] == "old/sweep/3")
    assert old["gain"] == pytest.approx(10.0, abs=1e-3) and old["agreement"] == pytest.approx(0.62)


def test_a_real_run_is_read_in_the_schema_it_is_written_in(tmp_path: Path, one_thread: None) -> None:
    results = run_cfg(tmp_path / "runs" / "one", *custom_task(tmp_path), "method=kd", "model.student_init=random")
    records, notes = study.gather([tmp_path / "runs"], None)
    assert notes == [] and len(records) == 1
    r = records[0]
    dev = results["agents"]
    assert r["gain"] == pytest.approx(100 * (dev["student"]["dev"]["accuracy"] - dev["undistilled"]["dev"]["accuracy"]))
    assert r["student_init"] == "random" and results["model"]["student_init"] == "random"
    assert r["agreement"] == pytest.approx(results["fidelity"]["student_vs_teacher"]["dev"]["agreement"])
    assert math.isfinite(r["vs_teacher_lo"]) and r["coverage"] == "none" and r["temperature"] == "5.0"


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )


def test_the_cpu_grid_lists_its_runs_and_overrides(tmp_path: Path) -> None:
    proc = run_script(
        "run",
        "--grid",
        "cpu",
        "--dry-run",
        "--seeds",
        "1",
        "2",
        "--runs-root",
        str(tmp_path),
        "--",
        "trainer.num_threads=1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    # the centre, then depths 1, 2, 6; temperatures 1, 2, 10; two flip rates; two coverages; filtering; random init;
    # crossed: the 1-layer student at temperatures 1, 2, 10, filtering under both flip rates, and random init at
    # depths 1, 2, 6
    assert "# grid cpu: 42 runs in 19 multiruns over 1 task(s)" in lines
    commands = [shlex.split(ln) for ln in lines if not ln.startswith("#")]
    assert len(commands) == 19
    assert {"model.student_layers=6", "model.student_init=random"} <= set.union(
        *({o for o in cmd if o.startswith("model.")} for cmd in commands if "model.student_init=random" in cmd))
    crossed = {frozenset(o for o in cmd if o.startswith(("model.student_layers", "method.temperature")))
               for cmd in commands}
    assert frozenset({"model.student_layers=1", "method.temperature=2.0"}) in crossed
    # at each flip rate the filter off and on share one multirun, the filter swept as a comma list
    assert any("method.frontier_filter=none,student_prob" in cmd and "method.teacher_noise_rate=0.2" in cmd
               for cmd in commands)
    assert all("eval.ood_tasks=[sentiment_amazon,sentiment_nyt,sentiment_tweets]" in cmd for cmd in commands)
    for cmd in commands:
        assert cmd[1:3] == [str(REPO / "main.py"), "-m"] and "method=kd" in cmd and "seed=1,2" in cmd
        assert "task=sentiment_movies" in cmd and cmd[-1] == "trainer.num_threads=1"
    varied = [
        {
            o
            for o in cmd
            if o.startswith(("model.", "method.temperature", "method.teacher_noise", "data.", "method.frontier_filter"))
        }
        for cmd in commands
    ]
    centre = {
        "model.student_layers=3",
        "method.temperature=5.0",
        "method.teacher_noise=none",
        "data.transfer=[]",
        "method.frontier_filter=none",
        "model.student_init=pretrained",
    }
    assert varied[0] == centre
    assert {
        "model.student_layers=6",
        "method.temperature=10.0",
        "method.teacher_noise_rate=0.2",
        "data.transfer_size=4x",
        "method.frontier_filter=student_prob",
        "model.student_init=random",
    } <= set.union(*varied)
    assert all(len(v - centre) in (1, 2, 3) for v in varied[1:])  # one factor (of one to three keys) moved
    assert "data.transfer=[sentiment_amazon,sentiment_nyt,sentiment_tweets]" in set.union(*varied)


def test_the_full_grid_is_the_factorial() -> None:
    from tablekit.grid import design, factors

    facs = factors(["augment"], 4, {"student_layers": 2, "temperature": 5.0})
    assert [len(f.levels) for f in facs] == [3, 4, 3, 3, 2, 2]  # depth 6 exceeds a 4-layer teacher
    assert len(design("full", facs)) == 3 * 4 * 3 * 3 * 2 * 2
    # one factor at a time, then the crossed cells: the 1-layer student at 3 more temperatures, the filter at 2
    # flip rates, random init at the 2 other depths
    assert len(design("cpu", facs)) == 1 + 2 + 3 + 2 + 2 + 1 + 1 + 3 + 2 + 2


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "--grid", "huge", "--dry-run"], "unknown grid 'huge'; use --grid full or --grid cpu"),
        (["run", "--tasks", "cb", "--dry-run"], "task cb has no --data-dir"),
        (["run", "--tasks", "cb", "--data-dir", "/no/such/folder", "--dry-run"], "/no/such/folder does not exist"),
        (["render", "EMPTY"], "no results.json under"),
    ],
)
def test_bad_input_fails_in_one_line_before_any_work(
    tmp_path: Path, monkeypatch: Any, args: list[str], needle: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    with pytest.raises(SystemExit) as exc:
        paradox.main(args)
    message = str(exc.value)
    assert message.startswith("error: ") and "\n" not in message and needle in message


def test_wandb_logging_without_wandb_fails_in_one_line_before_any_work(tmp_path: Path, monkeypatch: Any) -> None:
    planted(tmp_path / "runs")
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an environment without the package gives
    with pytest.raises(SystemExit, match=r"^error: --wandb needs the wandb package; pip install wandb"):
        paradox.main(["render", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--wandb"])
    assert not (tmp_path / "out").exists()


def test_the_benchmark_folder_goes_only_to_tasks_that_read_it(capsys: pytest.CaptureFixture[str]) -> None:
    fixtures = str(REPO / "tests" / "fixtures")
    args = ["run", "--grid", "cpu", "--tasks", "sentiment_movies", "cb", "--seeds", "1", "--data-dir", fixtures]
    assert paradox.main([*args, "--dry-run", "--", "model=tiny"]) == 0
    commands = [shlex.split(ln) for ln in capsys.readouterr().out.splitlines() if not ln.startswith("#")]
    for cmd in commands:
        assert (f"data_dir={fixtures}" in cmd) == ("task=cb" in cmd)
        if "task=cb" in cmd and "data.transfer_size=4x" in cmd:
            assert {"data.transfer=[augment]", "data.augment_multiplier=4"} <= set(cmd)
    # a 4-layer teacher: student depths 1, 2 and 3 only (2, the tiny model's, is the centre); 19 design points per
    # task (random init at depths 1 and 3 among them), the filter off and on at each flip rate in one multirun
    assert len(commands) == 2 * (1 + 2 + 3 + 2 + 2 + 1 + 1 + 3 + 2 + 2 - 2)
    assert not any("model.student_layers=6" in cmd for cmd in commands)


def point(gain: float, **levels: str) -> dict[str, Any]:
    centre = {
        "student_layers": "3",
        "temperature": "5.0",
        "teacher_noise": "none",
        "coverage": "none",
        "frontier": "none",
        "student_init": "pretrained",
    }
    return {"task": "cb", **centre, **levels, "gain": gain, "vs_teacher": gain - 5, "agreement": 0.9}


def test_level_means_hold_a_centre_in_a_one_factor_design_and_pool_in_a_factorial() -> None:
    # one factor at a time: the temperature's levels are compared at the centre only, not with the random-init run
    ofat = [
        point(1.0),
        point(3.0, temperature="10.0"),
        point(-4.0, student_init="random"),
        point(2.0, frontier="student_prob"),
    ]
    means = {(m.factor, m.level): m for m in study.level_means(ofat)}
    assert means[("cb: temperature", "5.0")].gain == 1.0 and means[("cb: temperature", "5.0")].n == 1
    assert means[("cb: temperature", "10.0")].held == "others at centre"
    # a 2 x 2 factorial: each level's mean is over both levels of the other factor
    grid = [
        point(g, frontier=f, student_init=i)
        for g, f, i in (
            (0.0, "none", "pretrained"),
            (2.0, "student_prob", "pretrained"),
            (-4.0, "none", "random"),
            (-1.0, "student_prob", "random"),
        )
    ]
    means = {(m.factor, m.level): m for m in study.level_means(grid)}
    assert means[("cb: frontier", "none")].gain == -2.0 and means[("cb: frontier", "student_prob")].gain == 0.5
    assert (
        means[("cb: student_init", "random")].n == 2
        and means[("cb: student_init", "random")].held == "averaged over the others"
    )


def test_confidence_against_out_of_domain_recovers_a_planted_relation() -> None:
    records = [{"confidence_student": 0.6 + 0.03 * i, "ood_student": 0.9 - 0.02 * i, "ood_gap": 0.01 * i}
               for i in range(10)]
    (_, n, rho, lo, hi, why), (_, _, rho_gap, lo_gap, _, _) = study.confidence_ood(records)
    assert why == "" and n == 10 and rho == pytest.approx(-1.0) and hi < 0
    assert rho_gap == pytest.approx(1.0) and lo_gap > 0
    assert "falls with confidence" in study.confidence_table(study.confidence_ood(records))



def test_crossed_cells_and_pooled_intervals_recover_a_planted_interaction() -> None:
    """Depth × temperature crossed around a one-factor-at-a-time centre: the cells appear with their own means, and
    the pooled paired interval of a cell whose student is right wherever the undistilled one is wrong excludes 0."""
    from tablekit.bootstrap import SeedSample

    gold = np.array([i % 2 for i in range(30)])

    def sample(seed: int, right: int) -> dict:
        student = np.where(np.arange(30) < right, gold, 1 - gold)
        return {"undistilled": SeedSample(seed, gold, student, 1 - gold),
                "teacher": SeedSample(seed, gold, student, gold)}

    def at(gain: float, layers: str, temperature: str, seed: int, right: int = 15) -> dict:
        p = point(gain, student_layers=layers, temperature=temperature)
        return {**p, "seed": str(seed), "metric": "accuracy", "student": right / 30, study.SAMPLES: sample(seed, right)}

    records = [at(1.0, "3", "5.0", s) for s in (1, 2, 3)] + [at(0.5, "3", "2.0", 1)] + \
        [at(9.0, "1", "5.0", s, right=30) for s in (1, 2)] + [at(-3.0, "1", "2.0", 1)]
    cells = {(m.factor, m.level): m for m in study.crossed_cells(records)}
    name = "cb: student_layers × temperature"
    assert set(cells) == {(name, f"{a} × {b}") for a in ("1", "3") for b in ("2.0", "5.0")}
    deep = cells[("cb: student_layers × temperature", "1 × 5.0")]
    assert deep.n == 2 and deep.gain == 9.0 and deep.gain_ci.lo == deep.gain_ci.hi == 100.0
    half = cells[("cb: student_layers × temperature", "3 × 5.0")]
    assert half.n == 3 and half.gain_ci.lo < 50.0 < half.gain_ci.hi
    assert study.crossed_cells([r for r in records if r["student_layers"] == "3"]) == []


def test_a_centre_with_crossed_sets_is_still_held_at_the_centre() -> None:
    """Most runs at τ = 5 but crossed sets at other temperatures: depth is compared at τ = 5, not averaged."""
    runs = [point(1.0, student_layers=d) for d in ("1", "2", "3", "6")] + [point(1.0), point(1.0)] + \
        [point(5.0, student_layers=d, temperature=t) for d in ("1", "3") for t in ("1.0", "2.0")]
    means = {(m.factor, m.level): m for m in study.level_means(runs)}
    assert means[("cb: student_layers", "1")].n == 1 and means[("cb: student_layers", "1")].held == "others at centre"


def test_a_render_from_its_csv_and_predictions_keeps_the_intervals(tmp_path: Path) -> None:
    """paradox.csv with paradox_predictions.json, without the run folders: the same tables, intervals included."""
    planted(tmp_path / "runs")
    assert paradox.main(["render", str(tmp_path / "runs"), "--out", str(tmp_path / "first")]) == 0
    first = tmp_path / "first"
    assert paradox.main(["render", str(first / "paradox.csv"), str(first / "paradox_predictions.json"),
                         "--out", str(tmp_path / "again")]) == 0
    tables = [(d / "paradox.md").read_text().split("## Plots")[0] for d in (first, tmp_path / "again")]
    assert tables[0] == tables[1] and "[+" in tables[0].split("## Mean gain")[1]
    bare = tmp_path / "bare"
    assert paradox.main(["render", str(first / "paradox.csv"), "--out", str(bare)]) == 0
    assert "| — |" in (bare / "paradox.md").read_text().split("## Mean gain")[1]
