"""Run and render the paper's tables (1a, 1b, 4), the CPU reproduction and the ablations.

    python experiments/tables.py run <table> [--tasks ...] [--seeds 1 2 3] [--data-dir DIR]
        [--runs-root runs] [--launcher joblib] [--base cpu_repro] [--settings ...] [--dry-run] [-- overrides]
    python experiments/tables.py render <table> <runs_dir | earlier CSV> ... [--out DIR] [--experiment-name NAME]
        [--agent ROW]

One run of ``method=mpdistil`` fills several rows (teacher, meta-teacher, no-curriculum student,
MPDistil student), so ``run`` launches only the distinct runs: per task and seed one ``method=pkd``
run and four ``method=mpdistil`` runs (meta loss col|com x reward binary|real), as two Hydra
multiruns per task (over seeds). Per task, so that a task that cannot run (e.g. its files are
missing) stops only its own sweeps; the kd sweep goes first, so every teacher is fine-tuned once and
read from the cache by the mpdistil sweep. A failed sweep does not stop the next one. ``render``
rebuilds the table from whatever results.json files exist: a cell without a run stays ``—``;
nothing is filled in from the paper. It also writes every value it used per seed
(``<table>_seeds.csv``); given back as an input, that file lets seeds run later add to a table whose
run folders are gone.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from paper_tables import (  # noqa: E402  (a script: its own folder is put on the path first)
    CPU_GLUE_COLUMNS, GLUE_COLUMNS, PAPER, ROW_TITLES, ROWS, SUPERGLUE_COLUMNS, Cell, Column,
)

MISSING = "—"


@dataclass(frozen=True)
class TableSpec:
    """A table kind: which experiment preset produces it and which paper table it is compared with."""

    name: str
    experiment: str
    paper: str
    columns: tuple[Column, ...]
    title: str


TABLES: dict[str, TableSpec] = {
    "table1a": TableSpec("table1a", "table1a", "1a", SUPERGLUE_COLUMNS,
                         "Table 1a: SuperGLUE dev, BERT-base teacher -> 6-layer student"),
    "table1b": TableSpec("table1b", "table1b", "1b", SUPERGLUE_COLUMNS,
                         "Table 1b: SuperGLUE dev, DeBERTa-v2-xxlarge teacher -> 12-layer student"),
    "table4": TableSpec("table4", "table4", "4", GLUE_COLUMNS,
                        "Table 4: GLUE dev, BERT-base teacher -> 6-layer student"),
    "cpu_repro": TableSpec("cpu_repro", "cpu_repro", "1a", SUPERGLUE_COLUMNS,
                           "CPU reproduction: SuperGLUE dev, MiniLM-L6 teacher -> 3-layer student "
                           "(paper values: Table 1a, BERT-base -> 6 layers, for reference only)"),
    "cpu_repro_glue": TableSpec("cpu_repro_glue", "cpu_repro", "4", CPU_GLUE_COLUMNS,
                                "CPU reproduction: GLUE dev, MiniLM-L6 teacher -> 3-layer student "
                                "(paper values: Table 4, BERT-base -> 6 layers, for reference only; CoLA: MCC)"),
}


@dataclass(frozen=True)
class Ablation:
    """One ablation setting: the overrides that turn the full method into it."""

    overrides: tuple[str, ...]
    description: str
    method: str = "mpdistil"


AUTHORS_CODE = ("method.soft_loss=mse", "method.layer_map=first", "method.authors_episode_update=true",
                "method.authors_no_dropout=true", "method.curriculum_tasks=[]")

ABLATIONS: dict[str, Ablation] = {
    "full": Ablation((), "full method: col + binary, curriculum on"),
    "meta_com": Ablation(("method.meta_loss=com",), "competitive meta-teacher loss"),
    "meta_none": Ablation(("method.meta_loss=none",), "no meta-teacher learning (phase 3 off)"),
    "reward_real": Ablation(("method.reward=real",), "real-valued reward"),
    "policy_quiz_stats": Ablation(("method.policy_state=quiz_stats",), "policy state: per-task quiz statistics"),
    "meta_mlp": Ablation(("method.meta_teacher=mlp",), "meta-teacher: MLP instead of the teacher's head"),
    "meta_pilot": Ablation(("method.meta_objective=pilot",), "meta-teacher trained by the pilot update"),
    "meta_mixed": Ablation(("method.meta_objective=mixed",), "meta-teacher: (1-λ)·L_col + λ·L_quiz, λ = 0.5"),
    "select_quiz": Ablation(("trainer.selection_split=quiz",), "every agent selected on quiz, not on dev"),
    "soft_mse": Ablation(("method.soft_loss=mse",), "authors' code: MSE soft loss"),
    "layers_first": Ablation(("method.layer_map=first",), "authors' code: layers mapped first-to-first"),
    "episode_update": Ablation(("method.authors_episode_update=true",),
                               "authors' code: one student update per episode"),
    "no_dropout": Ablation(("method.authors_no_dropout=true",), "authors' code: dropout never active"),
    "single_action": Ablation(("method.curriculum_tasks=[]",), "authors' code: the main task as the only action"),
    "authors_code": Ablation(AUTHORS_CODE, "every authors'-code deviation at once "
                                           "(= experiment=ablation_authors_code on cpu_repro)"),
    "tau2": Ablation(("method.temperature=2",), "temperature 2 instead of 5"),
    "metadistil": Ablation((), "baseline: MetaDistil (teacher updated through a pilot student step), no curriculum",
                           method="metadistil"),
}

STUDENT_ROWS = frozenset(ROWS) - {"teacher", "meta_col", "meta_com"}
MPD_ORDER = ("col_binary", "com_binary", "col_real", "com_real")  # binary first: its rows do not need the reward


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
    def experiment_name(self) -> Optional[str]:
        return self.config.get("experiment_name")

    def method_value(self, key: str, default: Any = None) -> Any:
        return self.config.get("method", {}).get(key, default)

    @property
    def variant(self) -> str:
        """``<meta_loss>_<reward>`` of an mpdistil run."""
        return f"{self.method_value('meta_loss')}_{self.method_value('reward')}"

    def value(self, agent: str, split: str, metric: str) -> Optional[float]:
        """A metric of one agent in percent, or None when the run did not produce it."""
        v = self.results.get("agents", {}).get(agent, {}).get(split, {}).get(metric)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else 100.0 * float(v)

    def dev_split(self) -> Optional[str]:
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


# ------------------------------------------------------------------------------------------ rows from runs


def row_source(row: str, run: Run) -> Optional[tuple[str, int]]:
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


@dataclass
class Stat:
    """Mean and sample std over seeds of one number, in percent.

    ``summary`` holds (mean, std) of a cell kept from an earlier rendering's long CSV, whose per-seed
    values are not known; ``values`` is then empty and ``seeds`` says which seeds the summary covers.
    """

    values: list[float]
    seeds: list[int]
    summary: Optional[tuple[float, Optional[float]]] = None

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def mean(self) -> Optional[float]:
        if self.summary:
            return self.summary[0]
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> Optional[float]:
        if self.summary:
            return self.summary[1]
        return statistics.stdev(self.values) if len(self.values) >= 2 else None


def fmt_num(x: float) -> str:
    s = f"{x:.1f}"
    return "0.0" if s == "-0.0" else s


def fmt_delta(x: float) -> str:
    s = f"{x:+.1f}"
    return "+0.0" if s == "-0.0" else s


def fmt_stat(stat: Stat, mark: bool = False) -> str:
    if stat.n == 0:
        return MISSING
    text = fmt_num(stat.mean) if stat.std is None else f"{fmt_num(stat.mean)} ± {fmt_num(stat.std)}"
    return text + ("*" if mark else "")


class Picker:
    """For each (row, task, seed), the run that fills it, chosen by :func:`row_source` priority."""

    def __init__(self, runs: Sequence[Run]) -> None:
        self.runs = list(runs)
        self.notes: list[str] = []

    def pick(self, row: str, task: str, seed: int) -> Optional[tuple[Run, str]]:
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


# ---------------------------------------------------------------------------------------- rendering tables


@dataclass
class CellResult:
    row: str
    column: Column
    stats: list[Stat]
    paper: Optional[Cell]
    beats: list[bool]

    def text(self) -> str:
        ours = " / ".join(fmt_stat(s, b) for s, b in zip(self.stats, self.beats))
        paper = "/".join(fmt_num(v) for v in self.paper) if self.paper else None
        if all(s.n == 0 for s in self.stats):
            return f"{MISSING} ({paper})" if paper else MISSING
        n = max(s.n for s in self.stats)
        if not paper:
            return f"{ours} [n={n}]"
        deltas = "/".join(fmt_delta(s.mean - p) if s.n else MISSING for s, p in zip(self.stats, self.paper))
        return f"{ours} [n={n}] ({paper}; Δ {deltas})"


def column_title(col: Column) -> str:
    labels = [p.label for p in col.parts if p.label]
    return f"{col.title} ({'/'.join(labels)})" if labels else col.title


def paired_delta(a: Stat, b: Stat) -> Optional[float]:
    """a − b over the seeds both have (None if none), so a row run on fewer seeds is not compared with other seeds."""
    if a.summary or b.summary:  # kept summaries: comparable only over the very same seeds
        return a.mean - b.mean if a.n and a.seeds == b.seeds else None
    common = set(a.seeds) & set(b.seeds)
    if not common:
        return None
    on_common = [statistics.fmean(v for v, seed in zip(st.values, st.seeds) if seed in common) for st in (a, b)]
    return on_common[0] - on_common[1]


Slot = tuple[str, str, int, int]  # (row, task, index of the column's part, seed)
SEEDS_HEADER = ["table", "row", "task", "part", "split", "metric", "seed", "value", "run"]
LONG_HEADER = ["table", "row", "row_title", "task", "column", "part", "split", "metric", "ours_mean", "ours_std",
               "n", "seeds", "paper", "delta", "beats_teacher"]


@dataclass
class Inputs:
    """What a table is rendered from: run folders, plus the CSVs an earlier rendering wrote.

    ``<table>_seeds.csv`` holds one value per row, task, part and seed, so seeds run later (or on
    another machine) add to a table whose run folders are gone. ``<table>_long.csv`` holds only
    per-cell summaries: its cells fill a column that nothing else has a value for, whole.
    """

    folders: list[Path] = field(default_factory=list)
    seeds_csvs: dict[Path, list[dict[str, str]]] = field(default_factory=dict)  # path -> its rows
    long_csvs: dict[Path, list[dict[str, str]]] = field(default_factory=dict)


def read_csv_rows(path: Path, table: str) -> tuple[str, list[dict[str, str]]]:
    """('seeds' | 'long', rows) of a CSV written by ``render``; SystemExit with a one-line reason otherwise."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        rows = list(reader)
    kind = "seeds" if header == SEEDS_HEADER else "long" if header == LONG_HEADER else None
    if kind is None:
        raise SystemExit(f"error: {path} is neither a <table>_seeds.csv nor a <table>_long.csv written by render")
    other = sorted({r["table"] for r in rows} - {table})
    if other:
        raise SystemExit(f"error: {path} holds table {other[0]!r}, not {table!r}; pass the CSVs of {table!r}")
    return kind, rows


def seed_values(spec: TableSpec, runs: Sequence[Run], seeds_csvs: dict[Path, list[dict[str, str]]]
                ) -> tuple[dict[Slot, tuple[float, str]], list[str]]:
    """Every (value, run) per slot: from the seeds CSVs, then from the runs, which win a disagreement."""
    tasks = [c.task for c in spec.columns]
    values: dict[Slot, tuple[float, str]] = {}
    for path, rows in seeds_csvs.items():
        for r in rows:
            if r["row"] not in ROWS or r["task"] not in tasks:
                raise SystemExit(f"error: {path} has row {r['row']!r} / task {r['task']!r}, which {spec.name!r} "
                                 f"does not have; pass the CSVs of {spec.name!r}")
            values[(r["row"], r["task"], int(r["part"]), int(r["seed"]))] = (float(r["value"]), r["run"])
    picker = Picker(runs)
    notes = picker.notes
    seeds = sorted({r.seed for r in runs})
    for row in ROWS:
        for col in spec.columns:
            for seed in seeds:
                hit = picker.pick(row, col.task, seed)
                if hit is None:
                    continue
                for i, part in enumerate(col.parts):
                    v = hit[0].value(hit[1], part.split, part.metric)
                    if v is None:
                        continue
                    slot = (row, col.task, i, seed)
                    if slot in values and abs(values[slot][0] - v) > 5e-5:
                        notes.append(f"{ROW_TITLES[row]} / {col.task} / seed {seed}: run {hit[0].path} gives "
                                     f"{v:.4f}, a seeds CSV {values[slot][0]:.4f} (run {values[slot][1]}); "
                                     f"using the run")
                    values[slot] = (v, str(hit[0].path))
    return values, notes


def kept_cells(spec: TableSpec, long_csvs: dict[Path, list[dict[str, str]]], filled: set[str]
               ) -> tuple[dict[tuple[str, str, int], dict[str, str]], list[str], list[str]]:
    """Long-CSV rows per (row, task, part) for the columns not in ``filled``; those columns; notes."""
    kept: dict[tuple[str, str, int], dict[str, str]] = {}
    kept_from: dict[str, str] = {}
    for path, rows in long_csvs.items():
        for r in rows:
            col = next((c for c in spec.columns if c.task == r["task"]), None)
            labels = [p.label for p in col.parts] if col else []
            if col is not None and col.task not in filled and r["row"] in ROWS and r["part"] in labels and int(r["n"]):
                kept[(r["row"], r["task"], labels.index(r["part"]))] = r
                kept_from[r["task"]] = path.name
    tasks = [c.task for c in spec.columns if c.task in kept_from]
    notes = [f"{', '.join(t for t in tasks if kept_from[t] == name)}: cells kept from `{name}`, an earlier "
             f"rendering (no run or per-seed value for these columns among the inputs), with its teacher marks"
             for name in dict.fromkeys(kept_from[t] for t in tasks)]
    return kept, tasks, notes


def build_table(spec: TableSpec, runs: Sequence[Run], inputs: Optional[Inputs] = None
                ) -> tuple[list[CellResult], list[int], list[str], list[list[Any]]]:
    """Cells, seeds, notes and per-seed rows, from runs, per-seed CSVs and (for columns nothing else fills) long CSVs."""
    inputs = inputs or Inputs()
    columns = list(spec.columns)
    tasks = [c.task for c in columns]
    values, notes = seed_values(spec, runs, inputs.seeds_csvs)
    kept, kept_tasks, kept_notes = kept_cells(spec, inputs.long_csvs, {slot[1] for slot in values})
    notes += kept_notes

    def stat(row: str, task: str, i: int) -> Stat:
        if task in kept_tasks:
            r = kept.get((row, task, i))
            if r is None:
                return Stat([], [])
            std = float(r["ours_std"]) if r["ours_std"] else None
            return Stat([], [int(x) for x in r["seeds"].split()], (float(r["ours_mean"]), std))
        seeds = sorted(sd for (rw, t, j, sd) in values if (rw, t, j) == (row, task, i))
        return Stat([values[(row, task, i, sd)][0] for sd in seeds], seeds)

    paper = PAPER[spec.paper]
    cells = []
    for row in ROWS:
        for col in columns:
            stats = [stat(row, col.task, i) for i in range(len(col.parts))]
            if col.task in kept_tasks:
                beats = [kept.get((row, col.task, i), {}).get("beats_teacher") == "1" for i in range(len(col.parts))]
            else:
                beats = [row in STUDENT_ROWS and (paired_delta(s, stat("teacher", col.task, i)) or 0) > 0
                         for i, s in enumerate(stats)]
            cells.append(CellResult(row, col, stats, paper[row].get(col.task), beats))
    seeds = sorted({sd for c in cells for s in c.stats for sd in s.seeds})
    seed_rows = []
    for (row, task, i, sd) in sorted(values, key=lambda k: (ROWS.index(k[0]), tasks.index(k[1]), k[2], k[3])):
        part = columns[tasks.index(task)].parts[i]
        v, run = values[(row, task, i, sd)]
        seed_rows.append([spec.name, row, task, i, part.split, part.metric, sd, repr(v), run])
    return cells, seeds, notes, seed_rows


def portable(text: str, folders: Sequence[Path]) -> str:
    """Paths relative to the runs folders, so a committed table names no machine's folders."""
    for d in folders:
        text = text.replace(f"{d}/", "").replace(str(d), d.name)
    return text


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def scan_notes(scan: Scan, skipped: list[Run], why: str) -> list[str]:
    notes = []
    if skipped:
        notes.append(f"{len(skipped)} run(s) skipped ({why}): " + ", ".join(str(r.path) for r in skipped))
    if scan.unfinished:
        notes.append(f"{len(scan.unfinished)} run folder(s) without results.json (failed or unfinished): "
                     + ", ".join(str(p) for p in scan.unfinished))
    notes += [f"unreadable: {u}" for u in scan.unreadable]
    return notes


def render_table(spec: TableSpec, inputs: Inputs, out_dir: Path, experiment_name: Optional[str]) -> str:
    """Write ``<table>.md``, ``.csv`` (wide), ``_long.csv`` (per cell) and ``_seeds.csv`` (per seed) to out_dir."""
    accept = experiment_name or spec.name
    runs: list[Run] = []
    notes: list[str] = []
    for folder in inputs.folders:
        scan = scan_runs(folder)
        mine = [r for r in scan.runs if r.experiment_name in (None, accept)]
        runs += mine
        notes += scan_notes(scan, [r for r in scan.runs if r not in mine], f"experiment_name is not {accept!r}")
    cells, seeds, table_notes, seed_rows = build_table(spec, runs, inputs)
    by = {(c.row, c.column.task): c for c in cells}
    header = ["row"] + [column_title(c) for c in spec.columns]
    grid = [[ROW_TITLES[row]] + [by[(row, c.task)].text() for c in spec.columns] for row in ROWS]
    sources = [f"`{f}`" for f in inputs.folders] + [f"`{f.name}`" for f in [*inputs.seeds_csvs, *inputs.long_csvs]]
    md = [f"# {spec.title}", "",
          f"From {', '.join(sources)}: {len(runs)} run(s) of experiment `{accept}` or unnamed; "
          f"seeds: {', '.join(map(str, seeds)) or 'none'}.", "",
          markdown_table(header, grid), "",
          "Cell: ours, mean ± sample std over seeds, in % [n = seeds with a result] "
          "(paper; Δ = ours − paper). `*`: a student row above our own teacher on that number, over the same seeds. "
          f"`{MISSING}`: no run.",
          "Rows from runs: teacher, student undistilled and KD from the `method=pkd` run; meta-teacher and "
          "no-curriculum rows from the `method=mpdistil` run with that meta loss and reward=binary "
          "(reward=real when the binary run is missing); MPDistil rows from the matching run. "
          f"Per-seed values: `{spec.name}_seeds.csv`."]
    notes += table_notes
    if notes:
        md += ["", "Notes:"] + [f"- {n}" for n in notes]
    text = portable("\n".join(md) + "\n", inputs.folders)
    long_rows = []
    for c in cells:
        for i, (part, stat) in enumerate(zip(c.column.parts, c.stats)):
            paper = c.paper[i] if c.paper else None
            long_rows.append([spec.name, c.row, ROW_TITLES[c.row], c.column.task, c.column.title, part.label,
                              part.split, part.metric, _num(stat.mean), _num(stat.std), stat.n,
                              " ".join(map(str, stat.seeds)), _num(paper),
                              _num(stat.mean - paper if stat.n and paper is not None else None), int(c.beats[i])])
    seed_rows = [r[:-1] + [portable(r[-1], inputs.folders)] for r in seed_rows]
    out_dir.mkdir(parents=True, exist_ok=True)  # every input is read above, so an output may overwrite one
    (out_dir / f"{spec.name}.md").write_text(text)
    write_csv(out_dir / f"{spec.name}.csv", header, grid)
    write_csv(out_dir / f"{spec.name}_long.csv", LONG_HEADER, long_rows)
    write_csv(out_dir / f"{spec.name}_seeds.csv", SEEDS_HEADER, seed_rows)
    return text


def _num(x: Optional[float]) -> str:
    return "" if x is None else f"{x:.4f}"


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue())


# ------------------------------------------------------------------------------------------------ ablation


def task_order(tasks: Iterable[str]) -> list[str]:
    known = [c.task for c in SUPERGLUE_COLUMNS + GLUE_COLUMNS]
    return sorted(set(tasks), key=lambda t: (known.index(t) if t in known else len(known), t))


@dataclass(frozen=True)
class AblationRow:
    label: str
    description: str
    setting: str
    agent: Optional[str]  # None: the final student of each run
    versus_full: bool


def render_ablation(runs_dir: Path, out_dir: Path, agent: Optional[str]) -> str:
    """Each setting against the full method: main metric on the first dev split, per task."""
    scan = scan_runs(runs_dir)
    runs = [r for r in scan.runs if (r.experiment_name or "").startswith("ablation/")]
    skipped = [r for r in scan.runs if r not in runs]
    by_setting: dict[str, list[Run]] = {}
    for r in runs:
        by_setting.setdefault(str(r.experiment_name).split("/", 1)[1], []).append(r)
    tasks = task_order(r.task for r in runs)
    settings = [s for s in ABLATIONS if s in by_setting] + sorted(s for s in by_setting if s not in ABLATIONS)

    def stat(setting: str, task: str, who: Optional[str]) -> Stat:
        values: dict[int, float] = {}
        for r in sorted(by_setting.get(setting, []), key=lambda r: r.mtime):  # newest wins on a rerun
            if r.task != task:
                continue
            name = who or ("mpdistil" if "mpdistil" in r.results.get("agents", {}) else "student")
            split = r.dev_split()
            v = r.value(name, split, r.results["task"]["main_metric"]) if split else None
            if v is not None:
                values[r.seed] = v
        seeds = sorted(values)
        return Stat([values[s] for s in seeds], seeds)

    rows = [AblationRow("teacher", "the full runs' teacher", "full", "teacher", False),
            AblationRow("student, undistilled", "the full runs' undistilled student", "full", "undistilled", False),
            AblationRow("no curriculum", "the full runs' student before phase 4", "full", "student", True)]
    rows += [AblationRow(s, ABLATIONS[s].description if s in ABLATIONS else "", s, agent, s != "full")
             for s in settings]
    full = {t: stat("full", t, agent) for t in tasks}
    grid, long_rows = [], []
    for row in rows:
        line = [row.label, row.description]
        for t in tasks:
            st, te = stat(row.setting, t, row.agent), stat(row.setting, t, "teacher")
            mark = row.agent != "teacher" and (paired_delta(st, te) or 0) > 0
            text = fmt_stat(st, mark)
            delta = paired_delta(st, full[t]) if row.versus_full else None
            if st.n:
                text += f" [n={st.n}]" + (f" (Δ full {fmt_delta(delta)})" if delta is not None else "")
            line.append(text)
            long_rows.append([row.label, row.setting, row.agent or "final student", t, _num(st.mean), _num(st.std),
                              st.n, " ".join(map(str, st.seeds)), _num(delta), int(mark)])
        grid.append(line)
    header = ["setting", "what changes"] + tasks
    who = (f"the `{agent}` agent" if agent
           else "the final student (MPDistil; the distilled student if the curriculum is off)")
    md = ["# Ablations against the full method", "",
          f"Runs: `{runs_dir}` ({len(runs)} ablation run(s)). Value: the task's main metric on the first dev split, "
          f"in %, of {who}; mean ± sample std over seeds [n = seeds]; Δ full = value − full method, "
          f"on the seeds both have. `*`: above the same runs' teacher. `{MISSING}`: no run.", "",
          markdown_table(header, grid)]
    notes = scan_notes(scan, skipped, "not an ablation run: experiment_name does not start with 'ablation/'")
    if notes:
        md += ["", "Notes:"] + [f"- {n}" for n in notes]
    text = portable("\n".join(md) + "\n", [runs_dir])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablation.md").write_text(text)
    write_csv(out_dir / "ablation.csv", header, grid)
    write_csv(out_dir / "ablation_long.csv", ["row", "setting", "agent", "task", "mean", "std", "n", "seeds",
                                              "delta_full", "beats_teacher"], long_rows)
    return text


# ----------------------------------------------------------------------------------------------- launching


@dataclass
class Sweep:
    """One Hydra multirun: ``python main.py -m <overrides>``."""

    name: str
    overrides: list[str]

    def command(self) -> list[str]:
        return [sys.executable, str(REPO / "main.py"), "-m", *self.overrides]


_PLAIN = re.compile(r"^[\w./:+\-@]*$")


def hydra_value(value: str) -> str:
    """Quote a value for a Hydra override when it has characters the override grammar would parse."""
    if _PLAIN.match(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def is_sweep(override: str) -> bool:
    """Whether an extra override expands to several jobs (a,b | choice(...) | range(...) | glob(...))."""
    _, sep, value = override.partition("=")
    value = value.strip()
    if not sep or value.startswith(("[", "{", "'", '"')):
        return False
    return "," in value or value.startswith(("choice(", "range(", "glob(", "interval("))


def _suffix(extra: Sequence[str]) -> str:
    """Extra overrides that sweep need their own folder level, or their jobs would share one folder."""
    return "/${hydra.job.override_dirname}" if any(is_sweep(e) for e in extra) else ""


def table_sweeps(table: str, tasks: Sequence[str], seeds: Sequence[int], common: list[str], root: Path,
                 extra: list[str]) -> list[Sweep]:
    """Per task: the pkd sweep, then the four mpdistil variants (the teacher is trained once, by the first)."""
    spec = TABLES[table]
    out = []
    for task in tasks:
        base = [f"experiment={spec.experiment}", f"task={task}", f"seed={','.join(map(str, seeds))}",
                f"experiment_name={table}", *common]
        out.append(Sweep(f"{task}/kd", ["method=pkd", *base,
                                        f"hydra.sweep.dir={hydra_value(str(root / table / task / 'kd'))}",
                                        "hydra.sweep.subdir=seed${seed}" + _suffix(extra), *extra]))
        out.append(Sweep(f"{task}/mpdistil", [
            "method=mpdistil", "method.meta_loss=col,com", "method.reward=binary,real", *base,
            f"hydra.sweep.dir={hydra_value(str(root / table / task / 'mpdistil'))}",
            "hydra.sweep.subdir=seed${seed}/${method.meta_loss}_${method.reward}" + _suffix(extra), *extra]))
    return out


def ablation_sweeps(base: str, settings: Sequence[str], tasks: Sequence[str], seeds: Sequence[int],
                    common: list[str], root: Path, extra: list[str]) -> list[Sweep]:
    """Per task and setting one sweep over seeds; the full method always first."""
    out = []
    for task in tasks:
        for name in (["full"] + [s for s in settings if s != "full"]):
            ab = ABLATIONS[name]
            out.append(Sweep(f"{task}/{name}", [
                f"experiment={base}", f"method={ab.method}", f"task={task}", f"seed={','.join(map(str, seeds))}",
                f"experiment_name=ablation/{name}", *common, *ab.overrides,
                f"hydra.sweep.dir={hydra_value(str(root / 'ablation' / task / name))}",
                "hydra.sweep.subdir=seed${seed}" + _suffix(extra), *extra]))
    return out


def default_tasks(table: str) -> list[str]:
    return [c.task for c in (TABLES[table].columns if table in TABLES else SUPERGLUE_COLUMNS)]


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    root = Path(args.runs_root).expanduser().resolve()
    tasks = args.tasks or default_tasks(args.table)
    common = []
    if args.data_dir:
        common.append(f"data_dir={hydra_value(str(Path(args.data_dir).expanduser().resolve()))}")
    if args.launcher:
        common.append(f"hydra/launcher={args.launcher}")
    if args.table == "ablation" and args.only:
        print("error: --only picks a table's kd or mpdistil sweep; for the ablation pick with --settings",
              file=sys.stderr)
        return 2
    if args.table == "ablation":
        unknown = [s for s in args.settings or [] if s not in ABLATIONS]
        if unknown:
            print(f"error: unknown ablation setting(s) {unknown}; known: {', '.join(ABLATIONS)}", file=sys.stderr)
            return 2
        sweeps = ablation_sweeps(args.base, args.settings or list(ABLATIONS), tasks, args.seeds, common, root, extra)
        out_dir = root / "ablation"
    else:
        sweeps = table_sweeps(args.table, tasks, args.seeds, common, root, extra)
        if args.only:
            sweeps = [s for s in sweeps if s.name.endswith("/" + args.only)]
        out_dir = root / args.table
    render = f"python experiments/tables.py render {args.table} {shlex.quote(str(out_dir))}"
    if args.dry_run:
        for s in sweeps:
            print(shlex.join(s.command()))
        print(f"# then: {render}")
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    log = []
    for s in sweeps:
        print(f"\n[tables] {args.table}/{s.name}: {shlex.join(s.command())}", flush=True)
        start = time.perf_counter()
        rc = subprocess.run(s.command(), cwd=REPO).returncode
        row = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "sweep": s.name, "command": s.command(),
               "returncode": rc, "seconds": round(time.perf_counter() - start, 1)}
        log.append(row)
        with open(out_dir / "sweeps.jsonl", "a") as f:  # one line per sweep, kept when the script is killed
            f.write(json.dumps(row) + "\n")
        if rc != 0:
            print(f"[tables] {args.table}/{s.name} failed (exit {rc}); its finished runs are kept", flush=True)
    failed = [r["sweep"] for r in log if r["returncode"] != 0]
    print(f"\n[tables] {len(log) - len(failed)}/{len(log)} sweeps succeeded"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"\n[tables] render: {render}", flush=True)
    return 1 if failed else 0


def classify_inputs(table: str, paths: Sequence[str]) -> Inputs:
    """Sort render's inputs into run folders and the CSV kinds an earlier rendering wrote."""
    inputs = Inputs()
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if path.is_dir():
            inputs.folders.append(path)
        elif path.is_file() and path.suffix == ".csv" and table != "ablation":
            kind, rows = read_csv_rows(path, table)
            (inputs.seeds_csvs if kind == "seeds" else inputs.long_csvs)[path] = rows
        else:
            what = "a runs folder" if table == "ablation" else f"a runs folder or a {table}_seeds/_long.csv"
            raise SystemExit(f"error: {path} is not {what}")
    return inputs


def cmd_render(args: argparse.Namespace) -> int:
    inputs = classify_inputs(args.table, args.inputs)
    if args.out:
        out_dir = Path(args.out).expanduser().resolve()
    elif inputs.folders:
        out_dir = inputs.folders[0]
    else:
        raise SystemExit("error: no runs folder among the inputs to write into; give --out DIR")
    if args.table == "ablation":
        if len(inputs.folders) != 1:
            raise SystemExit("error: the ablation renders from exactly one runs folder")
        text = render_ablation(inputs.folders[0], out_dir, args.agent)
    else:
        text = render_table(TABLES[args.table], inputs, out_dir, args.experiment_name)
    print(text, end="")
    written = ".csv and _long.csv" if args.table == "ablation" else ".csv, _long.csv and _seeds.csv"
    print(f"\n[tables] wrote {out_dir}/{args.table}.md, {written}", file=sys.stderr)
    return 0


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    kinds = [*TABLES, "ablation"]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="launch the Hydra multiruns of a table (overrides after --)")
    r.add_argument("table", choices=kinds)
    r.add_argument("--tasks", nargs="+", help="default: every column of the table")
    r.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    r.add_argument("--data-dir", help="folder with the official benchmark files (default: the HF hub)")
    r.add_argument("--runs-root", default="runs", help="sweeps go to <runs-root>/<table>/<sweep>/ (default: runs)")
    r.add_argument("--launcher", help="a hydra/launcher preset: joblib | submitit_slurm | ray")
    r.add_argument("--base", default="cpu_repro", help="ablation only: the experiment preset the settings modify")
    r.add_argument("--settings", nargs="+", help=f"ablation only (default: all): {', '.join(ABLATIONS)}")
    r.add_argument("--only", choices=["kd", "mpdistil"],
                   help="tables only: run just this sweep per task, e.g. to finish a table whose other sweep exists")
    r.add_argument("--dry-run", action="store_true", help="print the commands only")
    d = sub.add_parser("render", help="rebuild a table from the results.json files under runs folders")
    d.add_argument("table", choices=kinds)
    d.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a runs folder, or a <table>_seeds.csv / <table>_long.csv an earlier render wrote "
                        "(values from runs win over a seeds CSV; a long CSV fills only columns nothing else has)")
    d.add_argument("--out", help="output folder (default: the first runs folder)")
    d.add_argument("--experiment-name", help="tables: accept runs of this experiment_name instead of the table's")
    d.add_argument("--agent", help="ablation: agent row to show (default: the final student)")
    args = p.parse_args(argv)
    if extra and args.verb != "run":
        p.error("overrides after -- are only for `run`")
    return args, extra


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, extra = parse(sys.argv[1:] if argv is None else argv)
    return cmd_run(args, extra) if args.verb == "run" else cmd_render(args)


if __name__ == "__main__":
    sys.exit(main())
