"""Table presets, launcher/sweeper configs, and experiments/tables.py (run + render) on synthetic runs."""
from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy.stats import binom

from mpdistil.config import register_configs, validate
from mpdistil.metrics.task_metrics import compute_metrics

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
TABLES_PY = REPO / "experiments" / "tables.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true"}


def load_tables() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mpdistil_tables", TABLES_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tables = load_tables()
import paper_tables  # noqa: E402  (put on the path by tables.py)
from tablekit.bootstrap import SeedSample, confusion_metric, paired_bootstrap, rng_for, score_metric  # noqa: E402
from tablekit.predictions import decode_uids, encode_uids, majority_class  # noqa: E402


def make_cfg(*overrides: str) -> Any:
    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def tables_py(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TABLES_PY), *args], capture_output=True, text=True, cwd=REPO,
                          env=ENV, timeout=timeout)


# --------------------------------------------------------------------------------------------- presets

PAPER_TABLES = {"table1a": "bert_base", "table1b": "deberta_xxl", "table4": "bert_base"}


@pytest.mark.parametrize("method", ["pkd", "mpdistil", "kd", "undistilled"])
@pytest.mark.parametrize("experiment", [*PAPER_TABLES, "cpu_repro", "ablation_authors_code"])
def test_table_presets_compose_and_validate(experiment: str, method: str) -> None:
    cfg = make_cfg(f"experiment={experiment}", f"method={method}")
    validate(cfg)
    m = cfg.method
    assert cfg.model.name == PAPER_TABLES.get(experiment, "minilm")
    assert (m.teacher_lr, m.student_lr, m.meta_lr) == (2e-5, 3e-5, 1e-3)
    assert (m.alpha, m.temperature, m.gamma) == (0.5, 5.0, 0.99)
    assert (cfg.trainer.batch_size, cfg.task.max_length, cfg.trainer.selection_split) == (8, 128, "dev")
    assert m.beta == {"pkd": 100.0, "mpdistil": 100.0, "kd": 0.0}.get(method, m.beta)
    if experiment in PAPER_TABLES:
        assert (m.teacher_epochs, m.student_epochs, m.episodes) == (10, 10, 200)
        assert cfg.task.max_train_examples is None and cfg.task.max_eval_examples is None
    else:
        assert cfg.model.student_layers == 3 and cfg.task.max_train_examples == 1000


def test_paper_curriculum_actions() -> None:
    assert list(make_cfg("experiment=table1a").method.curriculum_tasks) == ["boolq", "cb", "copa", "rte", "wic", "wsc"]
    assert "glue_rte" in make_cfg("experiment=table4").method.curriculum_tasks


def test_authors_code_preset_equals_the_ablation_setting() -> None:
    preset = make_cfg("experiment=ablation_authors_code", "method=mpdistil")
    by_overrides = make_cfg("experiment=cpu_repro", "method=mpdistil", *tables.ABLATIONS["authors_code"].overrides)
    assert OmegaConf.to_container(preset) == OmegaConf.to_container(by_overrides)


@pytest.mark.parametrize("setting", list(tables.ABLATIONS))
def test_every_ablation_setting_composes(setting: str) -> None:
    ablation = tables.ABLATIONS[setting]
    cfg = make_cfg("experiment=cpu_repro", f"method={ablation.method}", *ablation.overrides)
    validate(cfg)


# ------------------------------------------------------------------------------------ launchers/sweepers

# The plugins in requirements.txt: choice -> (package, class its _target_ names, "module:config dataclass").
PLUGINS = {
    "hydra/launcher=joblib": ("hydra_plugins.hydra_joblib_launcher", "JoblibLauncher", "config:JobLibLauncherConf"),
    "hydra/launcher=submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "SlurmLauncher",
                                      "config:SlurmQueueConf"),
    "hydra/sweeper=optuna_search": ("hydra_plugins.hydra_optuna_sweeper", "OptunaSweeper",
                                    "config:OptunaSweeperConf"),
}

# hydra-ray-launcher cannot be installed beside requirements.txt: its last release, 1.2.2, pins cloudpickle<3, while
# joblib>=1.5 (scikit-learn's) needs cloudpickle>=3. So conf/hydra/launcher/ray.yaml is checked against the plugin's
# config as hydra-ray-launcher 1.2.2 defines it (hydra_plugins/hydra_ray_launcher/_config.py):
#   RayLauncherConf: _target_ = RAY_TARGET, ray: RayConf
#   RayConf:         init: Dict[str, Any] = {"address": None}, remote: Dict[str, Any] = {}
# The launcher calls ray.init(**ray.init) once and wraps each job in ray.remote(**ray.remote).
RAY_TARGET = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
RAY_LAUNCHER_CONF_FIELDS = {"_target_", "ray"}
RAY_CONF_FIELDS = {"init", "remote"}
# Documented keyword arguments of ray.init() and options of ray.remote() for a task (Ray 2.x) that a preset may set.
RAY_INIT_ARGS = {"address", "num_cpus", "num_gpus", "resources", "object_store_memory", "namespace", "runtime_env",
                 "include_dashboard", "ignore_reinit_error", "log_to_driver", "logging_level"}
RAY_REMOTE_OPTIONS = {"num_cpus", "num_gpus", "resources", "memory", "max_calls", "max_retries", "retry_exceptions",
                      "runtime_env", "scheduling_strategy", "accelerator_type"}


def plugin_module(choice: str) -> str:
    """The plugin's package; a missing plugin fails the test (requirements.txt installs them all)."""
    module = PLUGINS[choice][0]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        pytest.fail(f"{module} is not installed: pip install -r requirements.txt")
    return module


def main_py(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], capture_output=True, text=True, cwd=REPO,
                          env=ENV, timeout=timeout)


@pytest.mark.parametrize("choice", [*PLUGINS, "hydra/launcher=ray"])
def test_launcher_and_sweeper_configs_compose(choice: str) -> None:
    """Each preset composes with main.py's config; Ray's from our file alone (its plugin is not installed)."""
    target = PLUGINS[choice][1] if choice in PLUGINS else RAY_TARGET
    if choice in PLUGINS:
        plugin_module(choice)
    out = main_py(choice, "--cfg", "all")  # the job config and the hydra config, in one start-up
    assert out.returncode == 0, out.stderr
    node = yaml.safe_load(out.stdout)
    assert {"task", "model", "method", "trainer", "hydra"} <= set(node)
    group = "launcher" if "launcher" in choice else "sweeper"
    assert node["hydra"][group]["_target_"].endswith(target)


@pytest.mark.parametrize("choice", list(PLUGINS))
def test_our_configs_set_every_plugin_field(choice: str) -> None:
    """Complete files keep working when Hydra stops merging same-named plugin schemas."""
    import dataclasses

    module = plugin_module(choice)
    sub, cls = PLUGINS[choice][2].split(":")
    schema = getattr(importlib.import_module(f"{module}.{sub}"), cls)
    group, name = choice.split("=")
    ours = yaml.safe_load((CONF / f"{group}/{name}.yaml").read_text())
    fields = {f.name for f in dataclasses.fields(schema)} - {"defaults"}
    if name == "optuna_search":  # extends the plugin's schema by its defaults list: only what it changes
        assert {"direction", "params", "n_trials", "sampler"} <= set(ours) and ours["defaults"][0] == "optuna"
        assert set(ours["params"]) == {"method.alpha", "method.beta", "method.temperature", "method.student_lr",
                                       "method.meta_lr", "method.episodes"}
    else:
        assert fields <= set(ours), sorted(fields - set(ours))


def test_ray_preset_matches_the_plugin_config() -> None:
    """conf/hydra/launcher/ray.yaml against hydra-ray-launcher 1.2.2's config dataclasses, written out above."""
    ours = yaml.safe_load((CONF / "hydra/launcher/ray.yaml").read_text())
    assert ours["_target_"] == RAY_TARGET
    assert set(ours) == RAY_LAUNCHER_CONF_FIELDS  # every field, nothing the plugin's schema would refuse
    assert set(ours["ray"]) == RAY_CONF_FIELDS
    init, remote = ours["ray"]["init"], ours["ray"]["remote"]
    assert isinstance(init, dict) and set(init) <= RAY_INIT_ARGS, sorted(set(init) - RAY_INIT_ARGS)
    assert isinstance(remote, dict) and set(remote) <= RAY_REMOTE_OPTIONS, sorted(set(remote) - RAY_REMOTE_OPTIONS)
    assert "address" in init and (init["address"] is None or isinstance(init["address"], str))
    for key in ("num_cpus", "num_gpus"):
        assert init.get(key) is None or (isinstance(init[key], int) and init[key] >= 0), (key, init[key])
        assert isinstance(remote.get(key, 0), (int, float)) and remote.get(key, 0) >= 0, (key, remote[key])
    assert isinstance(remote.get("max_calls", 0), int) and remote.get("max_calls", 0) >= 0


TOY_APP = '''
import math
import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="toy", version_base="1.3")
def main(cfg: DictConfig) -> float:
    m = cfg.method
    return -(m.alpha - 0.3) ** 2 - (math.log10(m.beta) - 2) ** 2 + 0.01 * m.episodes


if __name__ == "__main__":
    main()
'''


def toy_app(tmp_path: Path) -> Path:
    """A stand-in for main.py with the method fields the search space names, and our conf on its search path."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "toy.yaml").write_text(yaml.safe_dump({
        "method": {"alpha": 0.5, "beta": 100.0, "temperature": 5.0, "student_lr": 3e-5, "meta_lr": 1e-3,
                   "episodes": 200},
        "hydra": {"searchpath": [f"file://{CONF}"]},
    }))
    (tmp_path / "app.py").write_text(TOY_APP)
    return tmp_path / "app.py"


def test_joblib_launcher_runs_a_toy_sweep(tmp_path: Path) -> None:
    plugin_module("hydra/launcher=joblib")
    app = toy_app(tmp_path)
    out = subprocess.run([sys.executable, str(app), "-m", "hydra/launcher=joblib", "method.alpha=0.1,0.9",
                          f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True, text=True, cwd=tmp_path,
                         env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Joblib.Parallel(n_jobs=2" in out.stdout + out.stderr
    assert len(list((tmp_path / "sweep").glob("*/.hydra"))) == 2


def test_optuna_search_space_runs_on_a_toy_objective(tmp_path: Path) -> None:
    plugin_module("hydra/sweeper=optuna_search")
    app = toy_app(tmp_path)
    out = subprocess.run([sys.executable, str(app), "-m", "hydra/sweeper=optuna_search", "hydra.sweeper.n_trials=4",
                          f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True, text=True, cwd=tmp_path,
                         env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"method.alpha", "method.beta", "method.temperature", "method.student_lr",
                                        "method.meta_lr", "method.episodes"}
    assert 0.1 <= best["best_params"]["method.alpha"] <= 0.9
    assert best["best_params"]["method.episodes"] in (50, 100, 200)
    assert "Directions: ['maximize']" in out.stdout + out.stderr


# ------------------------------------------------------------------------------------------- paper data


# Cells read off the paper's tables (MPDistil, ICLR 2024): (table, row, task) -> the cell, in the column's order.
PAPER_SPOT_VALUES = {
    ("1a", "teacher", "cb"): (83.9,),
    ("1a", "undistilled", "boolq"): (71.6,),
    ("1a", "meta_col", "copa"): (66.0,),
    ("1a", "mpdistil_col_real", "copa"): (70.0,),
    ("1a", "mpdistil_com_binary", "wic"): (59.6,),
    ("1a", "no_curriculum_com", "wic"): (58.0,),
    ("1b", "teacher", "rte"): (90.6,),
    ("1b", "kd", "cb"): (76.9,),
    ("1b", "meta_com", "cb"): (78.5,),
    ("1b", "mpdistil_col_binary", "wsc"): (66.3,),
    ("1b", "mpdistil_com_binary", "copa"): (69.0,),
    ("4", "teacher", "mnli"): (83.7, 83.4),
    ("4", "teacher", "stsb"): (89.4, 89.1),
    ("4", "undistilled", "qnli"): (85.0,),
    ("4", "kd", "mrpc"): (80.0, 86.2),
    ("4", "meta_col", "sst2"): (93.5,),
    ("4", "mpdistil_col_binary", "wnli"): (63.3,),
    ("4", "no_curriculum_com", "qqp"): (90.2, 86.8),
}


def test_paper_tables_spot_values() -> None:
    """The transcription has every row and column, and agrees with the paper on the cells above."""
    for key, columns in (("1a", paper_tables.SUPERGLUE_COLUMNS), ("1b", paper_tables.SUPERGLUE_COLUMNS),
                         ("4", paper_tables.GLUE_COLUMNS)):
        table = paper_tables.PAPER[key]
        assert list(table) == list(paper_tables.ROWS), key
        for row, cells in table.items():
            assert list(cells) == [c.task for c in columns], (key, row)
            for col in columns:
                cell = cells[col.task]
                assert len(cell) == len(col.parts) and all(0 < v <= 100 for v in cell), (key, row, col.task, cell)
    for (key, row, task), cell in PAPER_SPOT_VALUES.items():
        assert paper_tables.PAPER[key][row][task] == cell, (key, row, task)


# ------------------------------------------------------------------------------------ synthetic run dirs


def write_run(folder: Path, *, task: str, method: str, seed: int, agents: dict[str, dict[str, dict[str, float]]],
              meta_loss: str = "col", reward: str = "binary", experiment_name: str | None = "table1a",
              curriculum: bool = True, main_metric: str = "accuracy", policy: str | None = None) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({
        "task": {"name": task, "kind": "classification", "metrics": ["accuracy"], "main_metric": main_metric},
        "method": {"name": method, "phases": []}, "selection_split": "dev", "seed": seed, "agents": agents}))
    method_cfg = {"name": method, "meta_loss": meta_loss, "reward": reward, "curriculum": curriculum,
                  **({"policy": policy} if policy else {})}
    (folder / "config.json").write_text(json.dumps({
        "seed": seed, "experiment_name": experiment_name, "task": {"name": task}, "method": method_cfg}))


def right_on(labels: list[int], correct: int, offset: int = 0) -> list[int]:
    """Predictions right on exactly ``correct`` examples: those at positions offset, offset+1, ... (cyclic)."""
    n = len(labels)
    good = {(offset + i) % n for i in range(correct)}
    return [y if i in good else 1 - y for i, y in enumerate(labels)]


def write_pred_run(folder: Path, *, labels: list[int], preds: dict[str, list[int]], counts: dict[str, int],
                   uids: list[Any] | None = None, **kw: Any) -> None:
    """A run whose results.json accuracies come from its predictions.json, as a real run's do."""
    agents = {a: acc(sum(p == y for p, y in zip(ps, labels)) / len(labels)) for a, ps in preds.items()}
    write_run(folder, agents=agents, **kw)
    (folder / "predictions.json").write_text(json.dumps({
        "task": kw["task"], "kind": "classification", "label_names": ["no", "yes"], "main_metric": "accuracy",
        "train_label_counts": counts,
        "splits": {"dev": {"uids": [str(u) for u in (uids or range(len(labels)))], "labels": labels}},
        "rows": {a: {"dev": ps} for a, ps in preds.items()}}))


def acc(v: float) -> dict[str, dict[str, float]]:
    return {"dev": {"accuracy": v}}


@pytest.fixture()
def table_runs(tmp_path: Path) -> Path:
    """CB over seeds 1-3: every run but MPDistil com + real; col + real lacks seed 3."""
    root = tmp_path / "runs"
    teacher, student = [0.80, 0.82, 0.84], [0.83, 0.85, 0.87]
    for i, seed in enumerate((1, 2, 3)):
        write_run(root / "kd" / f"cb/seed{seed}/pkd", task="cb", method="pkd", seed=seed,
                  agents={"teacher": acc(teacher[i]), "undistilled": acc(0.70 + 0.01 * i), "student": acc(student[i])})
        for loss, reward in (("col", "binary"), ("com", "binary"), ("col", "real")):
            if (loss, reward, seed) == ("col", "real", 3):
                continue
            base = 0.75 if reward == "binary" else 0.60
            write_run(root / "mpdistil" / f"cb/seed{seed}/{loss}_{reward}", task="cb", method="mpdistil", seed=seed,
                      meta_loss=loss, reward=reward,
                      agents={"teacher": acc(0.5), "undistilled": acc(0.5), "student": acc(base + 0.01 * i),
                              "meta_teacher": acc(0.90 if loss == "col" else 0.88),
                              "mpdistil": acc((0.86 if reward == "binary" else 0.65) + 0.02 * i)})
    write_run(root / "other" / "x", task="cb", method="pkd", seed=1, experiment_name="table4",
              agents={"teacher": acc(0.1), "undistilled": acc(0.1), "student": acc(0.1)})
    (root / "mpdistil" / "cb/seed3/com_real/.hydra").mkdir(parents=True)
    return root


def md_row(text: str, title: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {title} |"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_render_table_markdown(table_runs: Path, tmp_path: Path) -> None:
    out = tables_py("render", "table1a", str(table_runs), "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "out" / "table1a.md").read_text()
    assert md == out.stdout
    header = md_row(md, "row")
    assert header == ["row", "BoolQ", "CB", "COPA", "RTE", "WiC", "WSC"]
    cb = header.index("CB")
    # teacher: 80, 82, 84 -> 82.0 ± 2.0 over 3 seeds; paper 83.9
    assert md_row(md, "teacher")[cb] == "82.0 ± 2.0 [n=3] (83.9; Δ -1.9)"
    # KD student (pkd run) above our teacher by mean; no predictions to test it: ^, not *
    assert md_row(md, "student, KD")[cb] == "85.0 ± 2.0^ [n=3] (80.4; Δ +4.6)"
    # undistilled from the pkd run, not from the mpdistil runs' 50.0
    assert md_row(md, "student, undistilled")[cb] == "71.0 ± 1.0 [n=3] (75.0; Δ -4.0)"
    # meta-teacher rows: not students, never marked
    assert md_row(md, "meta-teacher, col")[cb] == "90.0 ± 0.0 [n=3] (83.9; Δ +6.1)"
    assert md_row(md, "MPDistil col + binary")[cb] == "88.0 ± 2.0^ [n=3] (83.9; Δ +4.1)"
    # a missing seed shows in n; one seed short of the others
    assert md_row(md, "MPDistil col + real")[cb] == "66.0 ± 1.4 [n=2] (82.1; Δ -16.1)"
    # never run: missing, with the paper value beside it
    assert md_row(md, "MPDistil com + real")[cb] == "— (78.6)"
    # no-curriculum rows come from the binary run (75, 76, 77), not the real one (60, 61)
    assert md_row(md, "no curriculum, col")[cb] == "76.0 ± 1.0 [n=3] (78.6; Δ -2.6)"
    assert md_row(md, "no curriculum, com")[cb] == "76.0 ± 1.0 [n=3] (76.8; Δ -0.8)"
    assert md_row(md, "teacher")[header.index("BoolQ")] == "— (75.3)"
    assert "experiment_name is not `table1a`" in md and "other/x" in md
    assert "without results.json" in md and "com_real" in md
    assert str(table_runs) not in md  # paths relative to the runs folder: a committed table names no machine

    with open(tmp_path / "out" / "table1a.csv") as f:
        grid = list(csv.reader(f))
    assert grid[0] == header and grid[3][cb] == "85.0 ± 2.0^ [n=3] (80.4; Δ +4.6)"
    assert grid[-1] == ["majority class (train)"] + ["—"] * 6  # no predictions: no baseline
    assert "## Paired comparisons\n\nNone: no per-example predictions among the inputs" in md
    assert "run(s) without per-example predictions (no predictions.json" in md
    with open(tmp_path / "out" / "table1a_long.csv") as f:
        long = {(r["row"], r["task"]): r for r in csv.DictReader(f)}
    kd = long[("kd", "cb")]
    assert (kd["ours_mean"], kd["ours_std"], kd["n"], kd["seeds"], kd["paper"], kd["delta"], kd["beats_teacher"],
            kd["vs_teacher"], kd["at_or_below_majority"]) == (
        "85.0000", "2.0000", "3", "1 2 3", "80.4000", "4.6000", "1", "no per-example predictions", "")
    with open(tmp_path / "out" / "table1a_comparisons.csv") as f:
        comparisons = list(csv.DictReader(f))
    kd_vs_teacher = next(r for r in comparisons if r["comparison"] == "student, KD vs teacher")
    assert (kd_vs_teacher["cell_seeds"], kd_vs_teacher["diff"], kd_vs_teacher["verdict"]) == (
        "1 2 3", "", "no per-example predictions")
    assert long[("mpdistil_com_real", "cb")]["n"] == "0" and long[("mpdistil_com_real", "cb")]["ours_mean"] == ""


def test_beats_teacher_mark_pairs_seeds(tmp_path: Path) -> None:
    """A student cell with fewer seeds than the teacher is compared with the teacher on its own seeds."""
    runs = tmp_path / "runs"
    for seed, teacher in ((1, 0.50), (2, 0.90)):
        write_run(runs / "kd" / f"seed{seed}", task="cb", method="pkd", seed=seed,
                  agents={"teacher": acc(teacher), "undistilled": acc(0.4), "student": acc(0.4)})
    write_run(runs / "mpdistil" / "seed1", task="cb", method="mpdistil", seed=1,
              agents={"teacher": acc(0.5), "undistilled": acc(0.4), "student": acc(0.4),
                      "meta_teacher": acc(0.5), "mpdistil": acc(0.60)})
    out = tables_py("render", "table1a", str(runs))
    assert out.returncode == 0, out.stderr
    md = (runs / "table1a.md").read_text()
    cb = md_row(md, "row").index("CB")
    assert md_row(md, "teacher")[cb].startswith("70.0 ± 28.3 [n=2]")
    assert md_row(md, "MPDistil col + binary")[cb].startswith("60.0^ [n=1]")  # 60 > 50 on seed 1, though < 70
    assert md_row(md, "student, KD")[cb].startswith("40.0 ± 0.0 [n=2]")


def test_render_pairs_and_single_seed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs / "mnli", task="mnli", method="pkd", seed=7, experiment_name="table4",
              agents={"teacher": {"dev_matched": {"accuracy": 0.80}, "dev_mismatched": {"accuracy": 0.81}},
                      "undistilled": {"dev_matched": {"accuracy": 0.70}, "dev_mismatched": {"accuracy": 0.70}},
                      "student": {"dev_matched": {"accuracy": 0.79}, "dev_mismatched": {"accuracy": 0.82}}})
    write_run(runs / "stsb", task="stsb", method="pkd", seed=7, experiment_name="table4",
              agents={"teacher": {"dev": {"pearson": 0.885, "spearman": 0.88}},
                      "undistilled": {"dev": {"pearson": 0.85}},
                      "student": {"dev": {"pearson": 0.87, "spearman": 0.86}}})
    out = tables_py("render", "table4", str(runs))
    assert out.returncode == 0, out.stderr
    md = (runs / "table4.md").read_text()
    header = md_row(md, "row")
    assert header[1:4] == ["MNLI (m/mm)", "MRPC (acc/F1)", "QNLI"] and "STS-B (P/S)" in header
    assert md_row(md, "student, KD")[1] == "79.0 / 82.0^ [n=1] (80.3/80.8; Δ -1.3/+1.2)"
    stsb = header.index("STS-B (P/S)")
    assert md_row(md, "student, undistilled")[stsb] == "85.0 / — [n=1] (88.8/88.5; Δ -3.8/—)"
    assert md_row(md, "MPDistil col + binary")[stsb] == "— (89.1/88.9)"
    assert md_row(md, "majority class (train)")[stsb] == "n/a" and "`n/a` for regression (STS-B)" in md


def md_grid(md: str) -> list[str]:
    return [ln for ln in md.splitlines() if ln.startswith("| ")]


def long_cells(path: Path) -> dict[tuple[str, str, str], tuple[str, ...]]:
    with open(path) as f:
        return {(r["row"], r["task"], r["part"]):
                (r["ours_mean"], r["ours_std"], r["n"], r["seeds"], r["beats_teacher"]) for r in csv.DictReader(f)}


def test_seeds_csv_rerenders_the_table_and_takes_new_seeds(table_runs: Path, tmp_path: Path) -> None:
    """The per-seed CSV alone rebuilds the table; a later seed's runs add to it; a run beats a stale value."""
    first = tmp_path / "first"
    assert tables_py("render", "table1a", str(table_runs), "--out", str(first)).returncode == 0
    with open(first / "table1a_seeds.csv") as f:
        seeds = list(csv.DictReader(f))
    kd1 = next(r for r in seeds if (r["row"], r["task"], r["seed"]) == ("kd", "cb", "1"))
    assert float(kd1["value"]) == pytest.approx(83.0) and kd1["run"] == "kd/cb/seed1/pkd"
    assert str(table_runs) not in (first / "table1a_seeds.csv").read_text()

    again = tables_py("render", "table1a", str(first / "table1a_seeds.csv"), "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert md_grid(again.stdout) == md_grid((first / "table1a.md").read_text())
    assert long_cells(tmp_path / "again" / "table1a_long.csv") == long_cells(first / "table1a_long.csv")

    later = tmp_path / "later"
    write_run(later / "kd/cb/seed4/pkd", task="cb", method="pkd", seed=4,
              agents={"teacher": acc(0.86), "undistilled": acc(0.74), "student": acc(0.70)})
    write_run(later / "kd/cb/seed1/pkd", task="cb", method="pkd", seed=1,  # a rerun that disagrees with the CSV
              agents={"teacher": acc(0.80), "undistilled": acc(0.70), "student": acc(0.81)})
    merged = tables_py("render", "table1a", str(first / "table1a_seeds.csv"), str(later), "--out", str(first))
    assert merged.returncode == 0, merged.stderr
    md = (first / "table1a.md").read_text()
    cb = md_row(md, "row").index("CB")
    assert md_row(md, "teacher")[cb].startswith("83.0 ± 2.6 [n=4]")  # 80, 82, 84 from the CSV + 86
    assert md_row(md, "student, KD")[cb].startswith("80.8 ± 7.6 [n=4]")  # 81 (the rerun), 85, 87, 70
    assert "seed 1: run kd/cb/seed1/pkd gives 81.0000, a seeds CSV 83.0000" in md
    assert md_row(md, "MPDistil col + binary")[cb].startswith("88.0 ± 2.0^ [n=3]")  # untouched, still marked


RESULTS = REPO / "experiments" / "results"
COMMITTED_TABLES = {  # table -> (its folder, the files it re-renders from)
    "cpu_repro": ("cpu_repro", ("_seeds.csv", "_long.csv", "_predictions.json")),
    "cpu_repro_glue": ("cpu_repro", ("_seeds.csv", "_long.csv", "_predictions.json")),
    "cpu_heldout": ("cpu_heldout", ("_seeds.csv", "_long.csv", "_predictions.json")),
    "ablation": ("cpu_heldout", ("_seeds.csv", "_predictions.json")),
}


@pytest.mark.parametrize("table", sorted(COMMITTED_TABLES))
def test_committed_cpu_tables_rerender_from_their_csvs(table: str, tmp_path: Path) -> None:
    """RUN.md promises the committed tables re-render from their committed files (per-seed values, the long CSV where
    a table takes one, and the per-example predictions); a renderer change must keep that."""
    folder, inputs = COMMITTED_TABLES[table]
    committed = RESULTS / folder
    out = tables_py("render", table, *(str(committed / f"{table}{suffix}") for suffix in inputs),
                    "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    for suffix in (".csv", "_long.csv", "_seeds.csv", "_comparisons.csv", "_predictions.json"):
        assert (tmp_path / f"{table}{suffix}").read_bytes() == (committed / f"{table}{suffix}").read_bytes(), suffix
    assert md_grid((tmp_path / f"{table}.md").read_text()) == md_grid((committed / f"{table}.md").read_text())


def test_long_csv_keeps_only_columns_nothing_else_fills(table_runs: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert tables_py("render", "table1a", str(table_runs), "--out", str(first)).returncode == 0
    long_csv = first / "table1a_long.csv"
    kept = tables_py("render", "table1a", str(long_csv), "--out", str(tmp_path / "kept"))
    assert kept.returncode == 0, kept.stderr
    assert md_grid(kept.stdout) == md_grid((first / "table1a.md").read_text())  # marks and stds carried over
    assert "- cb: cells kept from `table1a_long.csv`" in kept.stdout
    with open(tmp_path / "kept" / "table1a_seeds.csv") as f:
        assert list(csv.DictReader(f)) == []  # a summary has no per-seed values to pass on

    copa = tmp_path / "copa"
    write_run(copa / "kd/copa/seed1/pkd", task="copa", method="pkd", seed=1,
              agents={"teacher": acc(0.60), "undistilled": acc(0.55), "student": acc(0.62)})
    both = tables_py("render", "table1a", str(long_csv), str(copa), "--out", str(tmp_path / "both"))
    md = both.stdout
    header = md_row(md, "row")
    assert md_row(md, "student, KD")[header.index("COPA")].startswith("62.0^ [n=1]")
    assert md_row(md, "student, KD")[header.index("CB")] == "85.0 ± 2.0^ [n=3] (80.4; Δ +4.6)"

    cb = tmp_path / "cb"
    write_run(cb / "kd/cb/seed9/pkd", task="cb", method="pkd", seed=9,
              agents={"teacher": acc(0.50), "undistilled": acc(0.50), "student": acc(0.40)})
    fresh = tables_py("render", "table1a", str(long_csv), str(cb), "--out", str(tmp_path / "fresh")).stdout
    assert md_row(fresh, "student, KD")[header.index("CB")].startswith("40.0 [n=1]")  # runs replace the column
    assert md_row(fresh, "MPDistil col + binary")[header.index("CB")] == "— (83.9)"  # whole: no stale cells beside
    assert "cells kept" not in fresh


def test_render_refuses_another_tables_csv_before_writing(table_runs: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert tables_py("render", "table1a", str(table_runs), "--out", str(first)).returncode == 0
    before = (first / "table1a.md").read_text()
    out = tables_py("render", "table4", str(first / "table1a_seeds.csv"), "--out", str(first))
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith("error:") and "holds table 'table1a'" in out.stderr
    assert not (first / "table4.md").exists() and (first / "table1a.md").read_text() == before
    bad = tables_py("render", "table1a", str(first / "table1a.md"), "--out", str(first))
    assert bad.returncode != 0
    assert "is not a runs folder, a table1a_seeds/_long.csv or a table1a_predictions.json" in bad.stderr


def test_render_ablation(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed, (full, pilot) in zip((1, 2), ((0.80, 0.70), (0.82, 0.74)), strict=True):
        write_run(runs / "full" / f"cb/seed{seed}", task="cb", method="mpdistil", seed=seed,
                  experiment_name="ablation/full",
                  agents={"teacher": acc(0.80), "undistilled": acc(0.6), "student": acc(0.75), "mpdistil": acc(full)})
        write_run(runs / "meta_pilot" / f"cb/seed{seed}", task="cb", method="mpdistil", seed=seed,
                  experiment_name="ablation/meta_pilot",
                  agents={"teacher": acc(0.81), "undistilled": acc(0.6), "student": acc(0.7), "mpdistil": acc(pilot)})
    write_run(runs / "nocurr" / "cb/seed1", task="cb", method="mpdistil", seed=1, curriculum=False,
              experiment_name="ablation/my_setting",
              agents={"teacher": acc(0.81), "undistilled": acc(0.6), "student": acc(0.77)})
    out = tables_py("render", "ablation", str(runs))
    assert out.returncode == 0, out.stderr
    md = (runs / "ablation.md").read_text()
    assert md_row(md, "setting") == ["setting", "what changes", "cb"]
    assert md_row(md, "full")[2] == "81.0 ± 1.4^ [n=2]"  # above the teacher by mean; no predictions to test
    assert md_row(md, "meta_pilot")[2] == "72.0 ± 2.8 [n=2] (Δ full -9.0)"
    assert md_row(md, "no curriculum")[2] == "75.0 ± 0.0 [n=2] (Δ full -6.0)"
    assert md_row(md, "teacher")[2] == "80.0 ± 0.0 [n=2]"
    assert md_row(md, "my_setting")[2] == "77.0 [n=1] (Δ full -3.0)"  # against full's seed 1 (80), not its mean


# ------------------------------------------------------------------------------------- paired comparisons


def a_right_on_k_more(seed: int, n: int, k: int, rng: np.random.Generator) -> SeedSample:
    """B wrong on half the examples; A the same as B except right on k of B's mistakes."""
    gold = rng.integers(0, 2, n)
    b = gold.copy()
    wrong = rng.choice(n, size=n // 2, replace=False)
    b[wrong] = 1 - gold[wrong]
    a = b.copy()
    a[wrong[:k]] = gold[wrong[:k]]
    return SeedSample(seed, gold, a, b)


def test_paired_bootstrap_interval_when_one_row_is_right_on_k_more_examples() -> None:
    n, k, seeds = 50, 5, (1, 2, 3)
    rng = np.random.default_rng(0)
    p = paired_bootstrap("accuracy", [a_right_on_k_more(s, n, k, rng) for s in seeds], "cb", "dev")
    assert p.per_seed == pytest.approx((10.0, 10.0, 10.0)) and p.diff == pytest.approx(10.0)
    assert p.seeds == seeds and p.same_sign == 3 and p.resamples == 2000
    # A replicate draws the k examples X ~ Binomial(n · seeds, k / n) times over all seeds; A − B = 100 X / (n · seeds)
    total = n * len(seeds)
    lo, hi = (100 * binom.ppf(q, total, k / n) / total for q in (0.025, 0.975))
    assert abs(p.lo - lo) <= 100 / total and abs(p.hi - hi) <= 100 / total, (p.lo, lo, p.hi, hi)
    assert 0 < p.lo < 10 < p.hi and p.above and not p.below
    one = paired_bootstrap("accuracy", [a_right_on_k_more(1, 60, 1, rng)], "cb", "dev")
    assert one.diff == pytest.approx(100 / 60) and one.lo == 0 and not one.above  # one example: a tie
    again = paired_bootstrap("accuracy", [a_right_on_k_more(s, n, k, np.random.default_rng(0)) for s in seeds],
                             "cb", "dev")
    assert (again.lo, again.hi) == (p.lo, p.hi)  # seeded: a table renders to the same bytes every time


def test_paired_bootstrap_without_a_difference_contains_zero() -> None:
    gold = np.array([0, 1] * 25)
    a, b = gold.copy(), gold.copy()
    a[:5], b[5:10] = 1 - gold[:5], 1 - gold[5:10]  # each right where the other is wrong, as often
    p = paired_bootstrap("accuracy", [SeedSample(s, gold, a, b) for s in (1, 2, 3)], "cb", "dev")
    assert p.diff == 0 and p.per_seed == (0.0, 0.0, 0.0) and p.same_sign == 3
    assert p.lo < 0 < p.hi and p.lo == pytest.approx(-p.hi, abs=1.0) and not p.above and not p.below
    same = paired_bootstrap("mcc", [SeedSample(1, gold, a, a)], "cb", "dev")
    assert (same.diff, same.lo, same.hi) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("metric", ["accuracy", "f1", "macro_f1", "mcc"])
def test_resampled_class_metrics_are_the_run_metrics(metric: str) -> None:
    """The bootstrap's metrics from confusion matrices agree with mpdistil's, degenerate cases included."""
    rng = np.random.default_rng(1)
    for k, n in ((2, 40), (3, 57)):
        gold = rng.integers(0, k, n)
        for pred in (rng.integers(0, k, n), np.zeros(n, dtype=int), gold.copy(), (gold + 1) % k,
                     np.where(rng.random(n) < 0.8, gold, (gold + 1) % k)):
            cm = np.zeros((k, k))
            np.add.at(cm, (gold, pred), 1)
            assert confusion_metric(metric, cm) == pytest.approx(compute_metrics([metric], pred, gold)[metric])


@pytest.mark.parametrize("metric", ["pearson", "spearman"])
def test_resampled_score_metrics_are_the_run_metrics(metric: str) -> None:
    rng = np.random.default_rng(2)
    gold = np.round(rng.uniform(0, 5, 30), 1)
    for pred in (gold + rng.normal(0, 1, 30), np.round(gold), np.full(30, 2.5)):
        got = score_metric(metric, pred[None, :], gold[None, :])[0]
        assert got == pytest.approx(compute_metrics([metric], pred, gold)[metric])


@pytest.mark.parametrize("metric", ["pearson", "spearman"])
def test_score_bootstrap_shares_resamples_without_mixing_rows(metric: str) -> None:
    """A row's replicate correlations are computed once per seed and reused; each comparison must still
    equal a fresh index resampling of its own two rows, whichever comparison ran first."""
    rng = np.random.default_rng(3)
    gold = np.round(rng.uniform(0, 5, 50), 1)
    rows = {name: gold + rng.normal(0, sd, 50) for name, sd in (("a", 0.5), ("b", 1.0), ("c", 2.0))}

    def fresh(x: str, y: str) -> tuple[float, float]:
        idx = rng_for("stsb_share", "dev", 4).integers(0, 50, size=(300, 50))
        reps = 100 * (score_metric(metric, rows[x][idx], gold[idx]) - score_metric(metric, rows[y][idx], gold[idx]))
        lo, hi = np.percentile(reps, [2.5, 97.5])
        return float(lo), float(hi)

    for x, y in (("a", "b"), ("a", "c"), ("c", "b"), ("b", "a")):
        p = paired_bootstrap(metric, [SeedSample(4, gold, rows[x], rows[y])], "stsb_share", "dev", resamples=300)
        assert (p.lo, p.hi) == pytest.approx(fresh(x, y), abs=1e-12)
        assert p.diff == pytest.approx(100 * (score_metric(metric, rows[x][None], gold[None])[0]
                                              - score_metric(metric, rows[y][None], gold[None])[0]))
    assert paired_bootstrap(metric, [SeedSample(4, gold, rows["b"], rows["a"])], "stsb_share", "dev",
                            resamples=300).hi < 0  # a is the closer row: b − a sits below zero


def test_majority_class_and_uid_ranges() -> None:
    assert majority_class({"0": 3, "1": 7, "2": 7}) == 1 and majority_class({}) is None
    keys = ["0", "1", "2", "5", "7", "8"]
    assert encode_uids(keys) == {"uid_ranges": "0-2,5,7-8"} and decode_uids(encode_uids(keys)) == keys
    assert encode_uids(["a-1", "07"]) == {"uids": ["a-1", "07"]}


DEV = [0] * 40 + [1] * 20  # 60 dev examples; training counts make class 0 the majority: 66.7% on dev
COUNTS = {"0": 30, "1": 10}


@pytest.fixture()
def pred_runs(tmp_path: Path) -> Path:
    """CB over seeds 1-3 with predictions: KD right on 1 more example than the teacher (a tie), MPDistil on 20 more.

    Seed 3's MPDistil run lists its dev examples in reverse order: examples pair by uid, not position.
    """
    root = tmp_path / "runs"
    for seed in (1, 2, 3):
        teacher = right_on(DEV, 30, seed)
        write_pred_run(root / f"kd/cb/seed{seed}", labels=DEV, counts=COUNTS, task="cb", method="pkd", seed=seed,
                       preds={"teacher": teacher, "undistilled": [0] * 60, "student": right_on(DEV, 31, seed)})
        preds = {"teacher": teacher, "undistilled": [0] * 60, "student": right_on(DEV, 31, seed),
                 "meta_teacher": teacher, "mpdistil": right_on(DEV, 50, seed)}
        order = list(range(60))[::-1] if seed == 3 else list(range(60))
        write_pred_run(root / f"mpdistil/cb/seed{seed}/col_binary", labels=[DEV[i] for i in order], counts=COUNTS,
                       task="cb", method="mpdistil", seed=seed, uids=order,
                       preds={a: [ps[i] for i in order] for a, ps in preds.items()})
    return root


def comparison_cells(md: str) -> dict[str, str]:
    """The CB cell of each line of the paired-comparison grid."""
    part = md.split("## Paired comparisons", 1)[1]
    header = md_row(part, "comparison")
    return {row[0]: row[header.index("CB")] for row in
            ([c.strip() for c in ln.strip().strip("|").split("|")] for ln in part.splitlines()
             if ln.startswith("| ") and not ln.startswith("| comparison"))}


def test_render_prints_star_only_when_the_interval_excludes_zero(pred_runs: Path, tmp_path: Path) -> None:
    out = tables_py("render", "table1a", str(pred_runs), "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    md = out.stdout
    cb = md_row(md, "row").index("CB")
    assert md_row(md, "student, KD")[cb] == "51.7 ± 0.0° [n=3] (80.4; Δ -28.7)"  # above by mean, a tie: no mark
    assert md_row(md, "MPDistil col + binary")[cb] == "83.3 ± 0.0* [n=3] (83.9; Δ -0.6)"
    comparisons = comparison_cells(md)
    assert comparisons["student, KD vs teacher"] == "+1.7 [+0.0, +3.9] 3/3 tie"
    assert comparisons["MPDistil col + binary vs teacher"].startswith("+33.3 [+")
    assert comparisons["MPDistil col + binary vs teacher"].endswith("3/3 beats teacher")
    assert comparisons["MPDistil col + binary vs KD"].endswith("3/3 beats KD")
    assert comparisons["MPDistil col + real vs KD"] == "—"
    with open(tmp_path / "out" / "table1a_comparisons.csv") as f:
        rows = {r["comparison"]: r for r in csv.DictReader(f)}
    mpd = rows["MPDistil col + binary vs teacher"]
    assert (mpd["seeds"], mpd["per_seed"], mpd["diff"]) == ("1 2 3", "33.3333 33.3333 33.3333", "33.3333")
    assert float(mpd["lo"]) > 0 and mpd["verdict"] == "beats teacher"
    assert rows["student, KD vs teacher"]["verdict"] == "tie" and float(rows["student, KD vs teacher"]["lo"]) == 0


def test_majority_class_row_and_mark(pred_runs: Path, tmp_path: Path) -> None:
    out = tables_py("render", "table1a", str(pred_runs), "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    md = out.stdout
    cb = md_row(md, "row").index("CB")
    assert md_row(md, "majority class (train)")[cb] == "66.7 ± 0.0 [n=3]"
    assert md_row(md, "majority class (train)")[md_row(md, "row").index("COPA")] == "—"
    assert md_row(md, "teacher")[cb].startswith("50.0 ± 0.0° [n=3]")  # below the baseline
    assert md_row(md, "student, undistilled")[cb].startswith("66.7 ± 0.0*° [n=3]")  # at it (always class 0)
    assert md_row(md, "MPDistil col + binary")[cb].startswith("83.3 ± 0.0* [n=3]")  # above it
    with open(tmp_path / "out" / "table1a_long.csv") as f:
        long = {(r["row"], r["task"]): r for r in csv.DictReader(f)}
    assert (long[("kd", "cb")]["vs_teacher"], long[("kd", "cb")]["at_or_below_majority"]) == ("tie", "1")
    assert (long[("mpdistil_col_binary", "cb")]["vs_teacher"],
            long[("mpdistil_col_binary", "cb")]["at_or_below_majority"]) == ("beats teacher", "0")
    assert (long[("majority", "cb")]["ours_mean"], long[("majority", "cb")]["seeds"]) == ("66.6667", "1 2 3")


def test_predictions_file_rerenders_every_output(pred_runs: Path, tmp_path: Path) -> None:
    """Seeds CSV + predictions file alone give the same files as the run folders; a .json.gz is read too."""
    first, again = tmp_path / "first", tmp_path / "again"
    assert tables_py("render", "table1a", str(pred_runs), "--out", str(first)).returncode == 0
    stored = json.loads((first / "table1a_predictions.json").read_text())
    seed3 = stored["tasks"]["cb"]["seeds"]["3"]
    assert seed3["splits"]["dev"] == {"uid_ranges": "0-59", "labels": "0" * 40 + "1" * 20}
    assert seed3["rows"]["undistilled"] == {"dev": "0" * 60} and seed3["runs"]["kd"] == "kd/cb/seed3"
    assert set(seed3["rows"]) == {"teacher", "undistilled", "kd", "meta_col", "mpdistil_col_binary",
                                  "no_curriculum_col"}
    assert str(pred_runs) not in (first / "table1a_predictions.json").read_text()

    out = tables_py("render", "table1a", str(first / "table1a_seeds.csv"), str(first / "table1a_predictions.json"),
                    "--out", str(again))
    assert out.returncode == 0, out.stderr
    for suffix in (".csv", "_long.csv", "_seeds.csv", "_comparisons.csv", "_predictions.json"):
        assert (again / f"table1a{suffix}").read_bytes() == (first / f"table1a{suffix}").read_bytes(), suffix
    ours, theirs = ((d / "table1a.md").read_text().splitlines() for d in (again, first))
    assert [ln for ln in ours if not ln.startswith("From ")] == [ln for ln in theirs if not ln.startswith("From ")]

    packed = tmp_path / "table1a_predictions.json.gz"
    packed.write_bytes(gzip.compress((first / "table1a_predictions.json").read_bytes()))
    gz = tables_py("render", "table1a", str(first / "table1a_seeds.csv"), str(packed), "--out", str(tmp_path / "gz"))
    assert gz.returncode == 0, gz.stderr
    assert (tmp_path / "gz" / "table1a_comparisons.csv").read_bytes() == (
        first / "table1a_comparisons.csv").read_bytes()
    wrong = tables_py("render", "table4", str(first / "table1a_predictions.json"), "--out", str(tmp_path / "x"))
    assert wrong.returncode != 0 and "holds table 'table1a'" in wrong.stderr


def test_a_run_wins_over_the_predictions_file(pred_runs: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert tables_py("render", "table1a", str(pred_runs), "--out", str(first)).returncode == 0
    later = tmp_path / "later"
    rerun = right_on(DEV, 58, 1)
    write_pred_run(later / "rerun/cb/seed1", labels=DEV, counts=COUNTS, task="cb", method="pkd", seed=1,
                   preds={"teacher": right_on(DEV, 30, 1), "undistilled": [0] * 60, "student": rerun})
    out = tables_py("render", "table1a", str(first / "table1a_seeds.csv"), str(first / "table1a_predictions.json"),
                    str(later), "--out", str(tmp_path / "merged"))
    assert out.returncode == 0, out.stderr
    stored = json.loads((tmp_path / "merged" / "table1a_predictions.json").read_text())["tasks"]["cb"]["seeds"]
    assert stored["1"]["rows"]["kd"]["dev"] == "".join(map(str, rerun))
    assert stored["1"]["runs"]["kd"] == "rerun/cb/seed1"
    assert stored["1"]["runs"]["meta_col"] == "mpdistil/cb/seed1/col_binary"  # no run for it: from the file
    assert stored["2"]["runs"]["kd"] == "kd/cb/seed2"
    assert ("student, KD / cb / seed 1: predictions from rerun/cb/seed1 differ from `table1a_predictions.json` "
            "(run kd/cb/seed1); using the former") in out.stdout
    with open(tmp_path / "merged" / "table1a_comparisons.csv") as f:
        kd = next(r for r in csv.DictReader(f) if r["comparison"] == "student, KD vs teacher")
    assert kd["per_seed"] == "46.6667 1.6667 1.6667"  # seed 1 from the rerun, seeds 2 and 3 from the file


def test_star_needs_predictions_on_every_seed_of_the_cell(pred_runs: Path, tmp_path: Path) -> None:
    """A seed without predictions leaves the interval silent about it: ^ (by mean), not *."""
    write_run(pred_runs / "old/cb/seed4/col_binary", task="cb", method="mpdistil", seed=4,
              agents={"teacher": acc(0.5), "undistilled": acc(0.6), "student": acc(0.5), "meta_teacher": acc(0.5),
                      "mpdistil": acc(0.8)})
    write_run(pred_runs / "old/cb/seed4/pkd", task="cb", method="pkd", seed=4,
              agents={"teacher": acc(0.5), "undistilled": acc(0.6), "student": acc(0.5)})
    out = tables_py("render", "table1a", str(pred_runs), "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    md = out.stdout
    cb = md_row(md, "row").index("CB")
    assert md_row(md, "MPDistil col + binary")[cb].startswith("82.5 ± 1.7^ [n=4]")
    assert comparison_cells(md)["MPDistil col + binary vs teacher"].endswith("3/3 beats teacher")  # seeds 1-3
    assert "2 run(s) without per-example predictions" in md and "old/cb/seed4/pkd" in md
    with open(tmp_path / "out" / "table1a_long.csv") as f:
        long = {(r["row"], r["task"]): r for r in csv.DictReader(f)}
    assert long[("mpdistil_col_binary", "cb")]["vs_teacher"] == "predictions for some seeds only"


def write_regression_run(folder: Path, seed: int, gold: list[float], preds: dict[str, list[float]]) -> None:
    agents = {a: {"dev": {m: compute_metrics([m], np.array(p), np.array(gold))[m] for m in ("pearson", "spearman")}}
              for a, p in preds.items()}
    write_run(folder, task="stsb", method="pkd", seed=seed, agents=agents, experiment_name="table4",
              main_metric="pearson")
    (folder / "predictions.json").write_text(json.dumps({
        "task": "stsb", "kind": "regression", "label_names": [], "main_metric": "pearson", "train_label_counts": {},
        "splits": {"dev": {"uids": list(range(len(gold))), "labels": gold}},
        "rows": {a: {"dev": p} for a, p in preds.items()}}))


def test_regression_comparisons_and_no_majority_row(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    runs = tmp_path / "runs"
    for seed in (1, 2):
        gold = np.round(rng.uniform(0, 5, 80), 2)
        write_regression_run(runs / f"stsb{seed}", seed, gold.tolist(), {
            "teacher": np.round(gold + rng.normal(0, 0.3, 80), 5).tolist(),
            "undistilled": np.round(gold + rng.normal(0, 3.0, 80), 5).tolist(),
            "student": np.round(gold + rng.normal(0, 3.0, 80), 5).tolist()})
    out = tables_py("render", "table4", str(runs))
    assert out.returncode == 0, out.stderr
    md = out.stdout
    stsb = md_row(md, "row").index("STS-B (P/S)")
    assert md_row(md, "majority class (train)")[stsb] == "n/a"
    part = md.split("## Paired comparisons", 1)[1]
    kd = md_row(part, "student, KD vs teacher")[stsb]
    assert re.fullmatch(r"P -\d+\.\d \[-\d+\.\d, -\d+\.\d\] 2/2 below teacher / "
                        r"S -\d+\.\d \[-\d+\.\d, -\d+\.\d\] 2/2 below teacher", kd), kd
    stored = json.loads((runs / "table4_predictions.json").read_text())["tasks"]["stsb"]["seeds"]["1"]
    assert isinstance(stored["rows"]["kd"]["dev"], list) and isinstance(stored["splits"]["dev"]["labels"], list)


def test_ablation_compares_the_learned_policy_with_uniform(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in (1, 2, 3):
        common = {"teacher": right_on(DEV, 30, seed), "undistilled": [0] * 60, "student": right_on(DEV, 40, seed)}
        write_pred_run(runs / "full" / f"cb/seed{seed}", labels=DEV, counts=COUNTS, task="cb", method="mpdistil",
                       seed=seed, experiment_name="ablation/full",
                       preds={**common, "meta_teacher": common["teacher"], "mpdistil": right_on(DEV, 55, seed)})
        write_pred_run(runs / "uniform" / f"cb/seed{seed}", labels=DEV, counts=COUNTS, task="cb", method="mpdistil",
                       seed=seed, experiment_name="ablation/uniform", policy="uniform",
                       preds={**common, "meta_teacher": common["teacher"], "mpdistil": right_on(DEV, 40, seed)})
    out = tables_py("render", "ablation", str(runs))
    assert out.returncode == 0, out.stderr
    md = out.stdout
    assert md_row(md, "full")[2] == "91.7 ± 0.0* [n=3]"
    assert md_row(md, "uniform")[2] == "66.7 ± 0.0* [n=3] (Δ full -25.0)"
    part = md.split("## Paired comparisons", 1)[1]
    assert md_row(part, "learned vs uniform policy (full vs uniform)")[1].endswith("3/3 beats uniform")
    assert md_row(part, "full vs no curriculum")[1].startswith("+25.0 [+")
    with open(runs / "ablation_comparisons.csv") as f:
        rows = {r["comparison"]: r for r in csv.DictReader(f)}
    assert rows["learned vs uniform policy (full vs uniform)"]["diff"] == "25.0000"
    assert rows["uniform vs teacher"]["verdict"] == "beats teacher"


ABLATION_FILES = (".csv", "_long.csv", "_seeds.csv", "_comparisons.csv", "_predictions.json")


def test_ablation_rerenders_from_its_seeds_csv_and_predictions(tmp_path: Path) -> None:
    """Without its run folders the ablation comes back whole from the two files; a later run adds its seed."""
    runs = tmp_path / "runs"
    for seed in (1, 2):
        common = {"teacher": right_on(DEV, 30, seed), "undistilled": [0] * 60, "student": right_on(DEV, 40, seed)}
        for setting, right in (("full", 50 + seed), ("uniform", 38), ("ce_only", 44 - seed)):
            write_pred_run(runs / setting / f"cb/seed{seed}", labels=DEV, counts=COUNTS, task="cb",
                           method="mpdistil", seed=seed, experiment_name=f"ablation/{setting}",
                           policy="uniform" if setting == "uniform" else None,
                           preds={**common, "meta_teacher": common["teacher"], "mpdistil": right_on(DEV, right, seed)})
    first = tmp_path / "first"
    assert tables_py("render", "ablation", str(runs), "--out", str(first)).returncode == 0
    with open(first / "ablation_seeds.csv") as f:
        seeds = {(r["row"], r["task"], r["seed"]): r for r in csv.DictReader(f)}
    assert float(seeds[("full:final", "cb", "2")]["value"]) == pytest.approx(100 * 52 / 60)
    assert seeds[("uniform:teacher", "cb", "1")]["run"] == "uniform/cb/seed1"
    assert str(runs) not in (first / "ablation_seeds.csv").read_text()

    files = [str(first / "ablation_seeds.csv"), str(first / "ablation_predictions.json")]
    again = tables_py("render", "ablation", *files, "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    for suffix in ABLATION_FILES:
        assert (tmp_path / "again" / f"ablation{suffix}").read_bytes() == (first / f"ablation{suffix}").read_bytes()
    assert md_grid(again.stdout) == md_grid((first / "ablation.md").read_text())
    part = again.stdout.split("## Paired comparisons", 1)[1]
    assert md_row(part, "learned vs uniform policy (full vs uniform)")[1].endswith("2/2 beats uniform")

    values_only = tables_py("render", "ablation", files[0], "--out", str(tmp_path / "values_only")).stdout
    assert md_row(values_only, "full")[2] == md_row(again.stdout, "full")[2].replace("*", "^")  # untested now
    assert "None: no per-example predictions" in values_only

    later = tmp_path / "later"
    write_run(later / "full/cb/seed3", task="cb", method="mpdistil", seed=3, experiment_name="ablation/full",
              agents={"teacher": acc(0.5), "undistilled": acc(0.5), "student": acc(0.6), "mpdistil": acc(0.7)})
    write_run(later / "full/cb/seed1", task="cb", method="mpdistil", seed=1, experiment_name="ablation/full",
              agents={"teacher": acc(0.5), "undistilled": acc(0.5), "student": acc(0.6), "mpdistil": acc(0.8)})
    merged = tables_py("render", "ablation", *files, str(later), "--out", str(tmp_path / "merged")).stdout
    assert md_row(merged, "full")[2] == "78.9 ± 8.4^ [n=3]"  # 80 (the rerun), 86.7 (the CSV), 70 (the new seed)
    assert "full:final / cb / seed 1: run full/cb/seed1 gives 80.0000, a seeds CSV 85.0000" in merged
    assert "2 run(s) without per-example predictions" in merged

    bad = tables_py("render", "ablation", str(first / "ablation_long.csv"), "--out", str(tmp_path / "bad"))
    assert bad.returncode != 0 and "re-renders from ablation_seeds.csv" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_dry_run_prints_the_distinct_sweeps(tmp_path: Path) -> None:
    out = tables_py("run", "table4", "--tasks", "mnli", "stsb", "--seeds", "1", "2", "--runs-root", str(tmp_path),
                    "--data-dir", str(tmp_path / "my data"), "--launcher", "joblib", "--dry-run", "--",
                    "model=tiny", "method.episodes=2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 5 and lines[4].startswith("# then: python experiments/tables.py render table4")
    cmds = [shlex.split(line) for line in lines[:4]]
    for args, task in zip(cmds, ("mnli", "mnli", "stsb", "stsb"), strict=True):
        assert args[1:3] == [str(REPO / "main.py"), "-m"] and args[-2:] == ["model=tiny", "method.episodes=2"]
        for part in ("experiment=table4", f"task={task}", "seed=1,2", "experiment_name=table4",
                     "hydra/launcher=joblib", "data_dir='" + str(tmp_path / "my data") + "'"):
            assert part in args, (part, args)
    kd, mpd = cmds[0], cmds[1]
    assert "method=pkd" in kd and f"hydra.sweep.dir={tmp_path}/table4/mnli/kd" in kd
    assert "hydra.sweep.subdir=seed${seed}" in kd
    assert ["method=mpdistil", "method.meta_loss=col,com", "method.reward=binary,real"] == mpd[3:6]
    assert "hydra.sweep.subdir=seed${seed}/${method.meta_loss}_${method.reward}" in mpd
    assert not (tmp_path / "table4").exists()
    only = tables_py("run", "table4", "--tasks", "mnli", "stsb", "--only", "mpdistil", "--runs-root", str(tmp_path),
                     "--dry-run")
    assert only.returncode == 0, only.stderr
    assert [re.search(r"hydra.sweep.dir=\S+/table4/(\S+)", c).group(1)
            for c in only.stdout.strip().splitlines()[:-1]] == ["mnli/mpdistil", "stsb/mpdistil"]


def test_ablation_dry_run_always_includes_the_full_method() -> None:
    out = tables_py("run", "ablation", "--settings", "meta_pilot", "metadistil", "--tasks", "cb", "--seeds", "1",
                    "--dry-run")
    assert out.returncode == 0, out.stderr
    cmds = out.stdout.strip().splitlines()[:-1]
    assert [re.search(r"experiment_name=(\S+)", c).group(1) for c in cmds] == [
        "ablation/full", "ablation/meta_pilot", "ablation/metadistil"]
    assert "experiment=cpu_repro" in cmds[1] and "method.meta_objective=pilot" in cmds[1]
    assert "method=metadistil" in cmds[2]
    bad = tables_py("run", "ablation", "--settings", "nope", "--dry-run")
    assert bad.returncode == 2 and "unknown ablation setting" in bad.stderr
    bad = tables_py("run", "ablation", "--only", "kd", "--dry-run")
    assert bad.returncode == 2 and "--settings" in bad.stderr


# ------------------------------------------------------------------------------------------- end to end


CB_LABELS = ("entailment", "contradiction", "neutral")
NAMES = ("Anna", "Maria", "Clara", "Sofia", "Julia", "Laura")


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def write_superglue(root: Path, sizes: tuple[int, int, int] = (48, 16, 6)) -> Path:
    """Synthetic CB and WSC folders in the official SuperGLUE layout; the test files have no labels."""
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        cb, wsc = [], []
        for i in range(n):
            name, other, label = NAMES[i % len(NAMES)], NAMES[(i + 1) % len(NAMES)], CB_LABELS[i % 3]
            verb = {"entailment": "was", "contradiction": "was never", "neutral": "may have been"}[label]
            cb.append({"premise": f"{name} said that the train left the station at {i} o'clock.",
                       "hypothesis": f"The train {verb} at the station at {i} o'clock.", "label": label, "idx": i})
            referent = i % 2 == 0  # span1 is the pronoun's referent on even lines
            wsc.append({"text": f"{name} thanked {other} because she had helped on day {i} .",
                        "target": {"span1_index": 0 if referent else 2, "span1_text": name if referent else other,
                                   "span2_index": 4, "span2_text": "she"},
                        "label": referent, "idx": i})
        for folder, records in (("CB", cb), ("WSC", wsc)):
            if split == "test":
                records = [{k: v for k, v in r.items() if k != "label"} for r in records]
            write_jsonl(root / folder / f"{split}.jsonl", records)
    return root


@pytest.mark.slow
def test_cpu_repro_table_end_to_end_on_a_tiny_model(tmp_path: Path) -> None:
    data = write_superglue(tmp_path / "superglue")
    root = tmp_path / "runs"
    out = tables_py("run", "cpu_repro", "--tasks", "cb", "--seeds", "1", "--data-dir", str(data), "--runs-root",
                    str(root), "--", "model=tiny", "trainer.progress=false", "logger=none", "method.teacher_epochs=1",
                    "method.student_epochs=1", "method.episodes=2", "task.max_train_examples=40",
                    "task.max_eval_examples=20", "method.curriculum_tasks=[cb,wsc]", "eval.attribution=none",
                    "trainer.save_student=false", "eval.write_test_predictions=false",
                    f"cache_dir={tmp_path / 'cache'}",
                    timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = sorted(p.relative_to(root).as_posix() for p in root.rglob("results.json"))
    assert results == ["cpu_repro/cb/kd/seed1/results.json",
                       *[f"cpu_repro/cb/mpdistil/seed1/{v}/results.json"
                         for v in ("col_binary", "col_real", "com_binary", "com_real")]]
    config = json.loads((root / "cpu_repro/cb/mpdistil/seed1/com_real/config.json").read_text())
    assert (config["experiment_name"], config["method"]["meta_loss"], config["method"]["reward"]) == (
        "cpu_repro", "com", "real")
    assert config["model"]["name"] == "tiny" and config["method"]["episodes"] == 2
    sweeps = [json.loads(line) for line in (root / "cpu_repro" / "sweeps.jsonl").read_text().splitlines()]
    assert [(s["sweep"], s["returncode"]) for s in sweeps] == [("cb/kd", 0), ("cb/mpdistil", 0)]

    rendered = tables_py("render", "cpu_repro", str(root / "cpu_repro"))
    assert rendered.returncode == 0, rendered.stderr
    md = (root / "cpu_repro" / "cpu_repro.md").read_text()
    header = md_row(md, "row")
    for title in paper_tables.ROW_TITLES.values():
        row = md_row(md, title)
        assert re.fullmatch(r"\d+\.\d[*°]* \[n=1\] \(\d+\.\d; Δ [+-]\d+\.\d\)", row[header.index("CB")]), row
        assert row[header.index("BoolQ")].startswith("— (")
    # real runs keep their predictions: every cell is tested, none is only above by mean
    stored = json.loads((root / "cpu_repro" / "cpu_repro_predictions.json").read_text())["tasks"]["cb"]
    assert set(stored["seeds"]["1"]["rows"]) == set(paper_tables.ROWS)
    assert stored["seeds"]["1"]["splits"]["dev"] == {"uid_ranges": "0-15", "labels": "012" * 5 + "0"}
    assert re.fullmatch(r"\d+\.\d \[n=1\]", md_row(md, "majority class (train)")[header.index("CB")])
    kd = md_row(md.split("## Paired comparisons", 1)[1], "MPDistil col + binary vs KD")[header.index("CB")]
    assert re.fullmatch(r"[+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\] [01]/1 (beats KD|below KD|tie)", kd), kd
