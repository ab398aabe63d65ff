"""What a table is made from: finished run folders, which run fills which row, and earlier renderings' CSVs."""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paper_tables import ROW_TITLES

from .predictions import TablePredictions, read_table_predictions

MPD_ORDER = ("col_binary", "com_binary", "col_real", "com_real")  # binary first: its rows do not need the reward

# The two CSVs ``render`` writes beside a table and takes back as inputs. ``beats_teacher``: above the teacher by
# mean over the same seeds; ``vs_teacher``: the paired bootstrap's verdict; ``at_or_below_majority``: 1 or 0.
SEEDS_HEADER = ["table", "row", "task", "part", "split", "metric", "seed", "value", "run"]
LONG_HEADER = ["table", "row", "row_title", "task", "column", "part", "split", "metric", "ours_mean", "ours_std",
               "n", "seeds", "paper", "delta", "beats_teacher", "vs_teacher", "at_or_below_majority"]
LEGACY_LONG_HEADER = LONG_HEADER[:15]  # long CSVs written before the paired comparisons; still read
ABLATION_LONG_HEADER = ["row", "setting", "agent", "task", "mean", "std", "n", "seeds", "delta_full", "beats_teacher",
                        "vs_teacher"]


# ----------------------------------------------------------------------------------------------- reading runs


@dataclass
class Run:
    """One finished run folder: results.json plus the resolved config.json beside it."""

    path: Path
    results: dict[str, Any]
    config: dict[str, Any]
    mtime: float

    @property
    def task(self) -> str:
        return self.results["task"]["name"]

    @property
    def seed(self) -> int:
        return int(self.results.get("seed", self.config.get("seed")))

    @property
    def method(self) -> str:
        return self.results["method"]["name"]

    @property
    def experiment_name(self) -> str | None:
        return self.config.get("experiment_name")

    def method_value(self, key: str, default: Any = None) -> Any:
        return self.config.get("method", {}).get(key, default)

    @property
    def variant(self) -> str:
        """``<meta_loss>_<reward>`` of an mpdistil run."""
        return f"{self.method_value('meta_loss')}_{self.method_value('reward')}"

    def value(self, agent: str, split: str, metric: str) -> float | None:
        """A metric of one agent in percent, or None when the run did not produce it."""
        v = self.results.get("agents", {}).get(agent, {}).get(split, {}).get(metric)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else 100.0 * float(v)

    def dev_split(self) -> str | None:
        """The first reported dev split (MNLI: dev_matched)."""
        splits = {s for row in self.results.get("agents", {}).values() for s in row}
        return "dev" if "dev" in splits else next(iter(sorted(s for s in splits if s.startswith("dev"))), None)


@dataclass
class Scan:
    runs: list[Run] = field(default_factory=list)
    unfinished: list[Path] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def scan_runs(root: Path) -> Scan:
    """Every results.json under ``root``; run folders without one are reported, not guessed."""
    out = Scan()
    for res_path in sorted(root.rglob("results.json")):
        folder = res_path.parent
        try:
            results = json.loads(res_path.read_text())
            cfg_path = folder / "config.json"
            config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
            if not (isinstance(results["task"]["name"], str) and isinstance(results["method"]["name"], str)):
                raise TypeError("task.name and method.name must be strings")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out.unreadable.append(f"{folder}: {type(exc).__name__}: {exc}")
            continue
        if not config:
            out.unreadable.append(f"{folder}: no config.json")
            continue
        out.runs.append(Run(folder, results, config, res_path.stat().st_mtime))
    finished = {r.path for r in out.runs}
    for hydra_dir in sorted(root.rglob(".hydra")):
        if hydra_dir.parent not in finished and not (hydra_dir.parent / "results.json").exists():
            out.unfinished.append(hydra_dir.parent)
    return out


def scan_notes(scan: Scan, skipped: list[Run], why: str) -> list[str]:
    """The table's notes on a scan: runs left out (and why), folders without results, unreadable files."""
    notes = []
    if skipped:
        notes.append(f"{len(skipped)} run(s) skipped ({why}): " + ", ".join(str(r.path) for r in skipped))
    if scan.unfinished:
        notes.append(f"{len(scan.unfinished)} run folder(s) without results.json (failed or unfinished): "
                     + ", ".join(str(p) for p in scan.unfinished))
    notes += [f"unreadable: {u}" for u in scan.unreadable]
    return notes


# ------------------------------------------------------------------------------------------ rows from runs


def row_source(row: str, run: Run) -> tuple[str, int] | None:
    """(agent, priority) when ``run`` can fill ``row``; lower priority wins among runs of one task and seed.

    Rows that do not depend on the reward come from the reward=binary run when it exists; the teacher
    and undistilled rows from the pkd run (every run trains the same cached teacher).
    """
    m = run.method
    mp = m == "mpdistil"
    rank = MPD_ORDER.index(run.variant) if mp and run.variant in MPD_ORDER else len(MPD_ORDER)
    curriculum = bool(run.method_value("curriculum", True))
    if row == "teacher":
        return ("teacher", {"pkd": 0, "kd": 1}.get(m, 2 + rank if mp else 20))
    if row == "undistilled":
        return ("undistilled", {"pkd": 0, "kd": 1, "undistilled": 2}.get(m, 3 + rank if mp else 20))
    if row == "kd":
        return ("student", {"pkd": 0, "kd": 1}[m]) if m in ("pkd", "kd") else None
    if not mp:
        return None
    loss, reward = run.method_value("meta_loss"), run.method_value("reward")
    if row in ("meta_col", "meta_com"):
        return ("meta_teacher", 0 if reward == "binary" else 1) if loss == row[-3:] else None
    if row.startswith("mpdistil_"):
        want = row[len("mpdistil_"):]
        return ("mpdistil", 0) if curriculum and run.variant == want else None
    if row in ("no_curriculum_col", "no_curriculum_com"):
        if loss != row[-3:]:
            return None
        return ("student", 2 if not curriculum else (0 if reward == "binary" else 1))
    raise ValueError(f"unknown row {row!r}")


class Picker:
    """For each (row, task, seed), the run that fills it, chosen by :func:`row_source` priority."""

    def __init__(self, runs: Sequence[Run]) -> None:
        self.runs = list(runs)
        self.notes: list[str] = []

    def pick(self, row: str, task: str, seed: int) -> tuple[Run, str] | None:
        best: list[tuple[int, Run, str]] = []
        for run in self.runs:
            if run.task != task or run.seed != seed:
                continue
            src = row_source(row, run)
            if src is None or src[0] not in run.results.get("agents", {}):
                continue
            best.append((src[1], run, src[0]))
        if not best:
            return None
        top = min(p for p, _, _ in best)
        tied = sorted((r for p, r, _ in best if p == top), key=lambda r: r.mtime)
        if len(tied) > 1:
            others = ", ".join(str(r.path) for r in tied[:-1])
            self.notes.append(f"{ROW_TITLES.get(row, row)} / {task} / seed {seed}: {len(tied)} equivalent runs, "
                              f"using the newest ({tied[-1].path}); others: {others}")
        agent = next(a for p, r, a in best if r is tied[-1] and p == top)
        return tied[-1], agent


# ------------------------------------------------------------------------------ earlier renderings' CSVs


@dataclass
class Inputs:
    """What a table is rendered from: run folders, plus the files an earlier rendering wrote.

    ``<table>_seeds.csv`` holds one value per row, task, part and seed, so seeds run later (or on
    another machine) add to a table whose run folders are gone. ``<table>_long.csv`` holds only
    per-cell summaries: its cells fill a column that nothing else has a value for, whole.
    ``<table>_predictions.json`` holds the per-example dev predictions behind the cells, from which
    the paired comparisons are recomputed.
    """

    folders: list[Path] = field(default_factory=list)
    seeds_csvs: dict[Path, list[dict[str, str]]] = field(default_factory=dict)  # path -> its rows
    long_csvs: dict[Path, list[dict[str, str]]] = field(default_factory=dict)
    prediction_files: dict[Path, TablePredictions] = field(default_factory=dict)


def read_csv_rows(path: Path, table: str) -> tuple[str, list[dict[str, str]]]:
    """('seeds' | 'long', rows) of a CSV written by ``render``; SystemExit with a one-line reason otherwise."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        rows = list(reader)
    kind = "seeds" if header == SEEDS_HEADER else "long" if header in (LONG_HEADER, LEGACY_LONG_HEADER) else None
    if header == ABLATION_LONG_HEADER:
        raise SystemExit(f"error: {path} is the ablation's long CSV, one summary per cell; the ablation re-renders "
                         f"from ablation_seeds.csv and ablation_predictions.json")
    if kind is None:
        raise SystemExit(f"error: {path} is neither a <table>_seeds.csv nor a <table>_long.csv written by render")
    other = sorted({r["table"] for r in rows} - {table})
    if other:
        raise SystemExit(f"error: {path} holds table {other[0]!r}, not {table!r}; pass the CSVs of {table!r}")
    return kind, rows


def classify_inputs(table: str, paths: Sequence[str]) -> Inputs:
    """Sort render's inputs into run folders and the kinds of file an earlier rendering wrote."""
    inputs = Inputs()
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if path.is_dir():
            inputs.folders.append(path)
        elif path.is_file() and path.suffix == ".csv":
            kind, rows = read_csv_rows(path, table)
            (inputs.seeds_csvs if kind == "seeds" else inputs.long_csvs)[path] = rows
        elif path.is_file() and path.name.endswith((".json", ".json.gz")):
            inputs.prediction_files[path] = read_table_predictions(path, table)
        else:
            long = "" if table == "ablation" else "/_long"
            raise SystemExit(f"error: {path} is not a runs folder, a {table}_seeds{long}.csv or a "
                             f"{table}_predictions.json")
    return inputs
