"""The paradox analysis script on synthetic run folders with a planted relation."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "analyze_paradox.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("analyze_paradox", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _write_run(folder: Path, *, undistilled: float | None, student: float, teacher: float,
               agreement: float, kl: float, attr: float, layers: int, params: int) -> None:
    agents = {"teacher": {"dev": {"accuracy": teacher}}, "student": {"dev": {"accuracy": student}}}
    if undistilled is not None:
        agents["undistilled"] = {"dev": {"accuracy": undistilled}}
    data = {
        "task": {"name": "cb", "main_metric": "accuracy"},
        "model": {"teacher_layers": 6, "student_layers": layers, "student_params": params},
        "agents": agents,
        "fidelity": {"student_vs_teacher": {"dev": {
            "agreement": agreement, "kl_teacher_student": kl, "attr_spearman": attr, "js": 0.01,
        }}},
    }
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(data))


def _planted_runs(root: Path, n: int = 8) -> None:
    for i in range(n):
        gain = 0.01 * i + 0.002 * i * i
        undistilled = 0.6
        _write_run(
            root / "multirun" / "2025-01-01" / str(i),
            undistilled=undistilled,
            student=undistilled + gain,
            teacher=0.8,
            agreement=0.5 + 0.05 * i,
            kl=1.0 - 0.1 * i,
            attr=[0.3, 0.9, 0.1, 0.7, 0.5, 0.2, 0.8, 0.4][i],
            layers=3,
            params=[5, 1, 8, 3, 7, 2, 6, 4][i] * 1_000_000,
        )
    _write_run(root / "multirun" / "broken", undistilled=None, student=0.7, teacher=0.8,
               agreement=0.9, kl=0.1, attr=0.5, layers=3, params=1)


def test_recovers_planted_correlation_and_writes_outputs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    out = tmp_path / "out"
    _planted_runs(runs)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(runs), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stdout and "no undistilled" in proc.stdout
    assert (out / "paradox.md").is_file()
    png = out / "paradox.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "paradox.md").read_text()
    assert "| all | gain vs agreement with teacher | 8 | 1.000 |" in md
    assert "no evidence (p ≥ 0.05)" in md
    assert "cannot compute: factor does not vary" in md

    mod = _load_script()
    records, notes = mod.collect_runs(runs)
    assert len(records) == 8 and len(notes) == 1
    tests = {t.factor: t for t in mod.run_tests(records)}
    assert tests["agreement"].rho == pytest.approx(1.0)
    assert tests["agreement"].p < 1e-3
    assert tests["kl_teacher_student"].rho == pytest.approx(-1.0)
    assert tests["kl_teacher_student"].p < 1e-3
    assert abs(tests["student_params"].rho) < 0.5
    assert tests["student_params"].p > 0.05
    assert tests["student_params"].verdict.startswith("no evidence")
    assert math.isnan(tests["student_layers"].rho)
    assert tests["agreement"].verdict.startswith("gain rises")


def test_too_few_runs_gives_nan_rows_not_a_crash(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for i in range(2):
        _write_run(runs / str(i), undistilled=0.6, student=0.6 + 0.1 * i, teacher=0.8,
                   agreement=0.5 + 0.1 * i, kl=0.2, attr=0.5, layers=3, params=10)
    mod = _load_script()
    assert mod.main([str(runs), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "paradox.md").read_text()
    assert "NaN" in md and "need ≥ 3" in md
    assert (tmp_path / "out" / "paradox.png").is_file()


def test_empty_folder(tmp_path: Path) -> None:
    mod = _load_script()
    assert mod.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert "0 used" in (tmp_path / "out" / "paradox.md").read_text()
