"""Tables as markdown and CSV: a paper table (ours against the paper) and the ablation (each setting against full).

A paper table is a grid of cells, mean ± sample std over seeds with the paper's value beside it,
ending in a majority-class row, and under it a second grid of paired comparisons between rows
(each student against the teacher, each MPDistil variant against KD). A comparison is the paired
bootstrap of ``bootstrap.py`` over the per-example dev predictions behind the cells: A − B averaged
over seeds, its 95% percentile interval, and how many seeds agree in sign. It claims a winner only
when the interval excludes zero: a student cell gets ``*`` (above the teacher) and a comparison
reads ``beats KD`` only then; an interval that contains zero reads ``tie``. A student above its
teacher by mean whose difference cannot be tested (the runs behind it kept no per-example
predictions) gets ``^`` instead, so the older tables keep their information without overstating
it. A cell at or below the majority-class baseline over the same seeds gets ``°``.

Beside ``<table>.md`` and its wide ``.csv``, ``render`` writes, for a paper table and the ablation
alike, ``_long.csv`` (one line per cell), ``_seeds.csv`` (one value per seed), ``_comparisons.csv``
(one line per comparison and number) and ``_predictions.json`` (the predictions behind every cell;
format in ``predictions.py``). The seeds CSV and the predictions file, given back as inputs, rebuild
the table and every interval.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paper_tables import GLUE_COLUMNS, PAPER, ROW_TITLES, ROWS, SUPERGLUE_COLUMNS, Cell, Column

from .bootstrap import LEVEL, RESAMPLES
from .predictions import RunReader, TablePredictions
from .scan import ABLATION_LONG_HEADER, LONG_HEADER, SEEDS_HEADER, Inputs, Run, classify_inputs, scan_notes, scan_runs
from .specs import ABLATIONS, STUDENT_ROWS, TABLES, TableSpec
from .stats import (
    AT_MAJORITY,
    COMPARISONS_HEADER,
    MISSING,
    NO_PREDICTIONS,
    Comparison,
    Stat,
    at_or_below,
    collect_predictions,
    common_seeds,
    compare,
    fmt_delta,
    fmt_num,
    fmt_stat,
    kept_cells,
    majority_stat,
    paired_delta,
    seed_values,
)

BEATS_TEACHER = "*"  # above the teacher: the paired bootstrap's interval excludes zero
ABOVE_BY_MEAN = "^"  # above the teacher by mean over the same seeds, without predictions to test it
MAJORITY_TITLE = "majority class (train)"
UNTESTED = "predictions for some seeds only"


def cell_mark(mean_above: bool, vs_teacher: str, at_majority: bool | None) -> str:
    """The marks of one number of a cell, from its mean comparison, its bootstrap verdict and the baseline."""
    tested = vs_teacher in ("tie", "beats teacher", "below teacher")
    mark = BEATS_TEACHER if vs_teacher == "beats teacher" else ABOVE_BY_MEAN if mean_above and not tested else ""
    return mark + (AT_MAJORITY if at_majority else "")


def teacher_verdict(c: Comparison | None) -> str:
    """What the long CSV records of a student cell against the teacher."""
    if c is None:
        return ""
    return c.verdict if c.covers_cells else NO_PREDICTIONS if c.paired is None else UNTESTED


# ---------------------------------------------------------------------------------------------- paper tables


@dataclass
class CellResult:
    row: str
    column: Column
    stats: list[Stat]
    paper: Cell | None
    marks: list[str]
    beats: list[bool]  # above the teacher by mean over the same seeds
    vs_teacher: list[str]
    at_majority: list[bool | None]

    def text(self) -> str:
        ours = " / ".join(fmt_stat(s, m) for s, m in zip(self.stats, self.marks, strict=True))
        paper = "/".join(fmt_num(v) for v in self.paper) if self.paper else None
        if all(s.n == 0 for s in self.stats):
            return f"{MISSING} ({paper})" if paper else MISSING
        n = max(s.n for s in self.stats)
        if not paper:
            return f"{ours} [n={n}]"
        deltas = "/".join(fmt_delta(s.mean - p) if s.n else MISSING
                          for s, p in zip(self.stats, self.paper, strict=True))
        return f"{ours} [n={n}] ({paper}; Δ {deltas})"


def majority_text(stats: list[Stat | None]) -> str:
    """The majority-class cell: ``n/a`` for a regression number, which has no class to predict."""
    if all(s is None for s in stats):
        return "n/a"
    if all(s is None or s.n == 0 for s in stats):
        return MISSING
    n = max(s.n for s in stats if s is not None)
    return " / ".join("n/a" if s is None else fmt_stat(s) for s in stats) + f" [n={n}]"


def column_title(col: Column) -> str:
    labels = [p.label for p in col.parts if p.label]
    return f"{col.title} ({'/'.join(labels)})" if labels else col.title


def table_comparisons() -> list[tuple[str, str, str, str]]:
    """(title, row, versus, how a verdict names versus): every student and meta-teacher against the teacher,
    MPDistil against KD, and MPDistil against its own student before the curriculum (same run, phase 4 alone)."""
    out = [(f"{ROW_TITLES[r]} vs teacher", r, "teacher", "teacher") for r in ROWS
           if r in STUDENT_ROWS or r.startswith("meta_")]
    out += [(f"{ROW_TITLES[r]} vs KD", r, "kd", "KD") for r in ROWS if r.startswith("mpdistil_")]
    return out + [(f"{ROW_TITLES[r]} vs {ROW_TITLES['no_curriculum_' + r[9:12]]}", r, f"no_curriculum_{r[9:12]}",
                   "no curriculum") for r in ROWS if r.startswith("mpdistil_")]


@dataclass
class TableData:
    cells: list[CellResult]
    seeds: list[int]
    notes: list[str]
    seed_rows: list[list[Any]]
    majority: dict[str, list[Stat | None]]  # task -> per part of its column; None for a regression number
    comparisons: list[Comparison]
    predictions: TablePredictions


def build_table(spec: TableSpec, runs: Sequence[Run], inputs: Inputs | None = None,
                portable_path: Callable[[str], str] = str) -> TableData:
    """Cells, seeds, notes, per-seed rows, the majority-class baseline and the paired comparisons.

    From runs, per-seed CSVs and predictions files; long CSVs fill only the columns nothing else fills.
    """
    inputs = inputs or Inputs()
    columns = list(spec.columns)
    tasks = [c.task for c in columns]
    values, picks, notes = seed_values(spec, runs, inputs.seeds_csvs)
    kept, kept_tasks, kept_notes = kept_cells(spec, inputs.long_csvs, {slot[1] for slot in values})
    store, prediction_notes = collect_predictions(spec, picks, inputs.prediction_files, portable_path)
    notes += kept_notes + prediction_notes

    def stat(row: str, task: str, i: int) -> Stat:
        if task in kept_tasks:
            r = kept.get((row, task, i))
            if r is None:
                return Stat([], [])
            std = float(r["ours_std"]) if r["ours_std"] else None
            return Stat([], [int(x) for x in r["seeds"].split()], (float(r["ours_mean"]), std))
        seeds = sorted(sd for (rw, t, j, sd) in values if (rw, t, j) == (row, task, i))
        return Stat([values[(row, task, i, sd)][0] for sd in seeds], seeds)

    stats = {(row, col.task): [stat(row, col.task, i) for i in range(len(col.parts))]
             for row in ROWS for col in columns}
    majority = {col.task: [majority_stat(store, col.task, p.split, p.metric) for p in col.parts] for col in columns}
    comparisons, by_pair = [], {}
    for title, a, b, against in table_comparisons():
        for col in columns:
            for i, part in enumerate(col.parts):
                shared = common_seeds(stats[(a, col.task)][i], stats[(b, col.task)][i])
                if shared:
                    c = compare(store, title, a, b, against, col.task, i, part.split, part.metric, shared)
                    comparisons.append(c)
                    by_pair[(a, b, col.task, i)] = c

    paper = PAPER[spec.paper]
    cells = []
    for row in ROWS:
        for col in columns:
            cs = stats[(row, col.task)]
            if col.task in kept_tasks:
                rs = [kept.get((row, col.task, i), {}) for i in range(len(col.parts))]
                beats = [r.get("beats_teacher") == "1" for r in rs]
                verdicts = [r.get("vs_teacher") or "" for r in rs]
                majors = [{"1": True, "0": False}.get(r.get("at_or_below_majority") or "") for r in rs]
            else:
                beats = [row in STUDENT_ROWS and (paired_delta(s, stats[("teacher", col.task)][i]) or 0) > 0
                         for i, s in enumerate(cs)]
                verdicts = [teacher_verdict(by_pair.get((row, "teacher", col.task, i))) if row in STUDENT_ROWS else ""
                            for i in range(len(cs))]  # a cell's mark is for students; T' has its comparison line
                majors = [at_or_below(s, m) for s, m in zip(cs, majority[col.task], strict=True)]
            marks = [cell_mark(b, v, m) for b, v, m in zip(beats, verdicts, majors, strict=True)]
            cells.append(CellResult(row, col, cs, paper[row].get(col.task), marks, beats, verdicts, majors))
    seeds = sorted({sd for c in cells for s in c.stats for sd in s.seeds})
    seed_rows = []
    for (row, task, i, sd) in sorted(values, key=lambda k: (ROWS.index(k[0]), tasks.index(k[1]), k[2], k[3])):
        part = columns[tasks.index(task)].parts[i]
        v, run = values[(row, task, i, sd)]
        seed_rows.append([spec.name, row, task, i, part.split, part.metric, sd, repr(v), run])
    return TableData(cells, seeds, notes, seed_rows, majority, comparisons, store)


def portable(text: str, folders: Sequence[Path]) -> str:
    """Paths relative to the runs folders, so a committed table names no machine's folders."""
    for d in folders:
        text = text.replace(f"{d}/", "").replace(str(d), d.name)
    return text


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue())


def comparison_grid(titles: list[str], columns: list[tuple[str, list[str]]], found: dict[tuple[str, str, int],
                    Comparison]) -> list[list[str]]:
    """One line per comparison title, one cell per (task, its part labels); parts joined by `` / ``."""
    grid = []
    for title in titles:
        line = [title]
        for task, labels in columns:
            texts = [found[(title, task, i)].text() if (title, task, i) in found else MISSING
                     for i in range(len(labels))]
            if all(t == MISSING for t in texts):
                line.append(MISSING)
            else:
                line.append(" / ".join(f"{lab} {t}" if lab else t for lab, t in zip(labels, texts, strict=True)))
        grid.append(line)
    return grid


def comparisons_section(name: str, header: list[str], grid: list[list[str]], comparisons: list[Comparison],
                        sign_note: str) -> list[str]:
    """The markdown under a table: the comparison grid and its legend, or one line saying why there is none."""
    md = ["", "## Paired comparisons", ""]
    if not comparisons:
        return md + ["No two rows have values on the same seeds: nothing to compare."]
    if all(c.paired is None for c in comparisons):
        return md + [f"None: {NO_PREDICTIONS} among the inputs (run folders with `predictions.json`, or "
                     f"`{name}_predictions.json`), so no interval, no `{BEATS_TEACHER}` and no `beats` claim; "
                     f"`{ABOVE_BY_MEAN}` marks what is above the teacher by mean. Every comparison is listed, "
                     f"untested, in `{name}_comparisons.csv`."]
    return md + [markdown_table(header, grid), "",
                 f"Cell, on a line `A vs B`: A − B in points on the column's number, the mean over seeds of each "
                 f"seed's difference{sign_note}; [its {100 * LEVEL:.0f}% percentile interval from a paired bootstrap: "
                 f"{RESAMPLES} replicates, each resampling every seed's dev examples with replacement, the same "
                 f"resample for both rows, and averaging the per-seed differences]; k/n: the seeds whose own "
                 f"difference has the sign of the mean, of the n seeds where both rows have per-example "
                 f"predictions; then `beats B` when the whole interval is above zero, `below B` when it is below "
                 f"zero, else `tie`. The interval is over dev examples with the trained models fixed; the seeds add "
                 f"training variation only through the mean. `{NO_PREDICTIONS}`: values exist but the runs behind "
                 f"them kept no predictions. Per comparison: `{name}_comparisons.csv`."]


def render_table(spec: TableSpec, inputs: Inputs, out_dir: Path, experiment_names: Sequence[str] | None) -> str:
    """Write the table's markdown, its wide, long, per-seed and comparison CSVs and its predictions to out_dir.

    Runs are those of ``experiment_names`` (default: the table's name) or unnamed; several names let one table
    take, say, its MPDistil rows from the ``full`` setting of an ablation run beside it."""
    names = list(experiment_names or [spec.name])
    accept = " or ".join(f"`{n}`" for n in names)
    runs: list[Run] = []
    notes: list[str] = []
    for folder in inputs.folders:
        scan = scan_runs(folder)
        mine = [r for r in scan.runs if r.experiment_name is None or r.experiment_name in names]
        runs += mine
        notes += scan_notes(scan, [r for r in scan.runs if r not in mine], f"experiment_name is not {accept}")
    data = build_table(spec, runs, inputs, lambda p: portable(p, inputs.folders))
    by = {(c.row, c.column.task): c for c in data.cells}
    header = ["row"] + [column_title(c) for c in spec.columns]
    grid = [[ROW_TITLES[row]] + [by[(row, c.task)].text() for c in spec.columns] for row in ROWS]
    grid.append([MAJORITY_TITLE] + [majority_text(data.majority[c.task]) for c in spec.columns])
    files = [*inputs.seeds_csvs, *inputs.long_csvs, *inputs.prediction_files]
    sources = [f"`{f}`" for f in inputs.folders] + [f"`{f.name}`" for f in files]
    regression = [c.title for c in spec.columns if any(m is None for m in data.majority[c.task])]
    md = [f"# {spec.title}", "",
          f"From {', '.join(sources)}: {len(runs)} run(s) of experiment {accept} or unnamed; "
          f"seeds: {', '.join(map(str, data.seeds)) or 'none'}.", "",
          markdown_table(header, grid), "",
          "Cell: ours, mean ± sample std over seeds, in % [n = seeds with a result] (paper; Δ = ours − paper). "
          f"`{BEATS_TEACHER}`: a student row above our own teacher on that number, its paired comparison below "
          f"excluding zero. `{ABOVE_BY_MEAN}`: above the teacher by mean over the same seeds, untested "
          f"({NO_PREDICTIONS}). `{AT_MAJORITY}`: at or below the majority-class row over the same seeds. "
          f"`{MISSING}`: no run.",
          "Rows from runs: teacher, student undistilled and KD from the `method=pkd` run; meta-teacher and "
          "no-curriculum rows from the `method=mpdistil` run with that meta loss and reward=binary "
          "(reward=real when the binary run is missing); MPDistil rows from the matching run. "
          "The majority-class row: always predicting the most frequent class of each run's training labels, "
          "scored on the same dev examples"
          + (f"; `n/a` for regression ({', '.join(regression)}), whose training mean the label counts do not give"
             if regression else "")
          + f". Per-seed values: `{spec.name}_seeds.csv`; per-example predictions: `{spec.name}_predictions.json`."]
    found = {(c.title, c.task, c.part): c for c in data.comparisons}
    titles = [t for t, *_ in table_comparisons()]
    cgrid = comparison_grid(titles, [(c.task, [p.label for p in c.parts]) for c in spec.columns], found)
    md += comparisons_section(spec.name, ["comparison"] + [column_title(c) for c in spec.columns], cgrid,
                              data.comparisons, "")
    notes += data.notes
    if notes:
        md += ["", "Notes:"] + [f"- {n}" for n in notes]
    text = portable("\n".join(md) + "\n", inputs.folders)
    long_rows = []
    for c in data.cells:
        for i, (part, stat) in enumerate(zip(c.column.parts, c.stats, strict=True)):
            paper = c.paper[i] if c.paper else None
            major = "" if c.at_majority[i] is None else int(c.at_majority[i])
            long_rows.append([spec.name, c.row, ROW_TITLES[c.row], c.column.task, c.column.title, part.label,
                              part.split, part.metric, _num(stat.mean), _num(stat.std), stat.n,
                              " ".join(map(str, stat.seeds)), _num(paper),
                              _num(stat.mean - paper if stat.n and paper is not None else None), int(c.beats[i]),
                              c.vs_teacher[i] if stat.n else "", major])
    for col in spec.columns:
        for part, stat in zip(col.parts, data.majority[col.task], strict=True):
            st = stat or Stat([], [])
            long_rows.append([spec.name, "majority", MAJORITY_TITLE, col.task, col.title, part.label, part.split,
                              part.metric, _num(st.mean), _num(st.std), st.n, " ".join(map(str, st.seeds)), "", "",
                              0, "", ""])
    seed_rows = [r[:-1] + [portable(r[-1], inputs.folders)] for r in data.seed_rows]
    labels = {(c.task, i): p.label for c in spec.columns for i, p in enumerate(c.parts)}
    comparison_rows = [c.csv_row(spec.name, labels[(c.task, c.part)]) for c in data.comparisons]
    out_dir.mkdir(parents=True, exist_ok=True)  # every input is read above, so an output may overwrite one
    (out_dir / f"{spec.name}.md").write_text(text)
    write_csv(out_dir / f"{spec.name}.csv", header, grid)
    write_csv(out_dir / f"{spec.name}_long.csv", LONG_HEADER, long_rows)
    write_csv(out_dir / f"{spec.name}_seeds.csv", SEEDS_HEADER, seed_rows)
    write_csv(out_dir / f"{spec.name}_comparisons.csv", COMPARISONS_HEADER, comparison_rows)
    data.predictions.write(out_dir / f"{spec.name}_predictions.json")
    return text


# ------------------------------------------------------------------------------------------------ ablation


def task_order(tasks: Iterable[str]) -> list[str]:
    known = [c.task for c in SUPERGLUE_COLUMNS + GLUE_COLUMNS]
    return sorted(set(tasks), key=lambda t: (known.index(t) if t in known else len(known), t))


@dataclass(frozen=True)
class AblationRow:
    label: str
    description: str
    setting: str
    agent: str | None  # None: the final student of each run
    versus_full: bool


@dataclass(frozen=True)
class SeedValue:
    """One seed's number in an ablation cell and where it came from."""

    value: float
    split: str
    metric: str
    run: str  # run folder, relative to its runs folder


def ablation_key(setting: str, who: str | None) -> str:
    """The ablation's row in its seeds CSV and predictions file: ``<setting>:<agent>`` (``final``: final student)."""
    return f"{setting}:{who or 'final'}"


class AblationSource:
    """Per setting, agent and task: one value per seed and the predictions behind it.

    From the runs, and from an earlier rendering's ``ablation_seeds.csv`` and ``ablation_predictions.json`` for the
    seeds no run gives, so the ablation re-renders after its run folders are gone; a run wins a disagreement.
    """

    def __init__(self, by_setting: dict[str, list[Run]], inputs: Inputs, portable_path: Callable[[str], str]) -> None:
        self.by_setting = by_setting
        self.portable = portable_path
        self.files = inputs.prediction_files
        self.given: dict[tuple[str, str], dict[int, SeedValue]] = {}  # (key, task) -> seed -> value, from CSVs
        for path, rows in inputs.seeds_csvs.items():
            for r in rows:
                if ":" not in r["row"] or r["part"] != "0":
                    raise SystemExit(f"error: {path} has row {r['row']!r}, part {r['part']!r}, not an ablation row "
                                     f"'<setting>:<agent>' of part 0; pass the ablation's own ablation_seeds.csv")
                self.given.setdefault((r["row"], r["task"]), {})[int(r["seed"])] = SeedValue(
                    float(r["value"]), r["split"], r["metric"], r["run"])
        self.used: dict[tuple[str, str], dict[int, SeedValue]] = {}  # in order of first use: the seeds CSV's lines
        self.store = TablePredictions("ablation")
        self.reader = RunReader()
        self.without: list[str] = []
        self.notes: list[str] = []

    def settings(self) -> list[str]:
        found = set(self.by_setting) | {key.split(":", 1)[0] for key, _ in self.given}
        return [s for s in ABLATIONS if s in found] + sorted(s for s in found if s not in ABLATIONS)

    def tasks(self) -> list[str]:
        return task_order([r.task for runs in self.by_setting.values() for r in runs] + [t for _, t in self.given])

    def run_picks(self, setting: str, task: str, who: str | None) -> dict[int, tuple[Run, str, SeedValue]]:
        """seed -> (run, agent, its value); the newest run with a value wins on a rerun."""
        out: dict[int, tuple[Run, str, SeedValue]] = {}
        for r in sorted(self.by_setting.get(setting, []), key=lambda r: r.mtime):
            if r.task != task:
                continue
            name = who or ("mpdistil" if "mpdistil" in r.results.get("agents", {}) else "student")
            split = r.dev_split()
            metric = r.results["task"]["main_metric"]
            v = r.value(name, split, metric) if split else None
            if v is not None:
                out[r.seed] = (r, name, SeedValue(v, split, metric, self.portable(str(r.path))))
        return out

    def values(self, setting: str, task: str, who: str | None) -> dict[int, SeedValue]:
        """seed -> value of one cell; its predictions join the store on first use."""
        key = ablation_key(setting, who)
        if (key, task) in self.used:
            return self.used[(key, task)]
        out = dict(self.given.get((key, task), {}))
        picks = self.run_picks(setting, task, who)
        for seed, (run, name, v) in sorted(picks.items()):
            old = out.get(seed)
            if old is not None and abs(old.value - v.value) > 5e-5:
                self.notes.append(f"{key} / {task} / seed {seed}: run {v.run} gives {v.value:.4f}, a seeds CSV "
                                  f"{old.value:.4f} (run {old.run}); using the run")
            out[seed] = v
            given = self.reader.row(run.path, name, [v.split], v.run)
            if given is None:
                self.without.append(v.run)
                continue
            note = self.store.add(task, seed, key, given)
            if note:
                self.notes.append(note)
        for seed in sorted(set(out) - set(picks)):
            stored = next((f for f in self.files.values() if f.has(task, seed, key)), None)
            note = self.store.add(task, seed, key, stored.row(task, seed, key)) if stored is not None else None
            if note:
                self.notes.append(note)
        self.used[(key, task)] = out = dict(sorted(out.items()))
        return out

    def stat(self, setting: str, task: str, who: str | None) -> Stat:
        vals = self.values(setting, task, who)
        return Stat([v.value for v in vals.values()], list(vals))

    def uniform_policy(self, setting: str) -> bool:
        """Whether the setting drew curriculum actions uniformly instead of from the learned policy.

        From its runs' configs; without runs, from the setting's overrides."""
        runs = self.by_setting.get(setting, [])
        if runs:
            return all(r.method_value("policy") == "uniform" for r in runs)
        return setting in ABLATIONS and "method.policy=uniform" in ABLATIONS[setting].overrides

    def compare(self, title: str, a: tuple[str, str | None], b: tuple[str, str | None], against: str, task: str,
                sa: Stat, sb: Stat) -> Comparison | None:
        shared = common_seeds(sa, sb)
        if not shared:
            return None
        first = self.values(a[0], task, a[1])[shared[0]]
        return compare(self.store, title, ablation_key(*a), ablation_key(*b), against, task, 0, first.split,
                       first.metric, shared)

    def seed_rows(self) -> list[list[Any]]:
        return [["ablation", key, task, 0, v.split, v.metric, seed, repr(v.value), v.run]
                for (key, task), vals in self.used.items() for seed, v in vals.items()]


def render_ablation(inputs: Inputs, out_dir: Path, agent: str | None) -> str:
    """Each setting against the full method: main metric on the first dev split, per task, with paired comparisons.

    From runs folders and an earlier rendering's ``ablation_seeds.csv`` and ``ablation_predictions.json``."""
    runs: list[Run] = []
    notes: list[str] = []
    for folder in inputs.folders:
        scan = scan_runs(folder)
        mine = [r for r in scan.runs if (r.experiment_name or "").startswith("ablation/")]
        runs += mine
        notes += scan_notes(scan, [r for r in scan.runs if r not in mine],
                            "not an ablation run: experiment_name does not start with 'ablation/'")
    by_setting: dict[str, list[Run]] = {}
    for r in runs:
        by_setting.setdefault(str(r.experiment_name).split("/", 1)[1], []).append(r)
    ab = AblationSource(by_setting, inputs, lambda p: portable(p, inputs.folders))
    tasks, settings = ab.tasks(), ab.settings()

    rows = [AblationRow("teacher", "the full runs' teacher", "full", "teacher", False),
            AblationRow("student, undistilled", "the full runs' undistilled student", "full", "undistilled", False),
            AblationRow("no curriculum", "the full runs' student before phase 4", "full", "student", True)]
    rows += [AblationRow(s, ABLATIONS[s].description if s in ABLATIONS else "", s, agent, s != "full")
             for s in settings]
    full = {t: ab.stat("full", t, agent) for t in tasks}
    grid, long_rows, comparisons, found, titles = [], [], [], {}, []
    for row in rows:
        line = [row.label, row.description]
        versus = None
        if row.versus_full:
            versus = (f"learned vs uniform policy (full vs {row.label})" if ab.uniform_policy(row.setting)
                      else f"full vs {row.label}")
            titles.append(versus)
        for t in tasks:
            st, te = ab.stat(row.setting, t, row.agent), ab.stat(row.setting, t, "teacher")
            mean_above = row.agent != "teacher" and (paired_delta(st, te) or 0) > 0
            c = None if row.agent == "teacher" else ab.compare(
                f"{row.label} vs teacher", (row.setting, row.agent), (row.setting, "teacher"), "teacher", t, st, te)
            verdict = teacher_verdict(c)
            mark = cell_mark(mean_above, verdict, None)
            comparisons += [c] if c is not None else []
            text = fmt_stat(st, mark)
            delta = paired_delta(st, full[t]) if row.versus_full else None
            if st.n:
                text += f" [n={st.n}]" + (f" (Δ full {fmt_delta(delta)})" if delta is not None else "")
            line.append(text)
            if versus is not None:
                vc = ab.compare(versus, ("full", agent), (row.setting, row.agent), row.label, t, full[t], st)
                if vc is not None:
                    comparisons.append(vc)
                    found[(versus, t, 0)] = vc
            long_rows.append([row.label, row.setting, row.agent or "final student", t, _num(st.mean), _num(st.std),
                              st.n, " ".join(map(str, st.seeds)), _num(delta), int(mean_above),
                              verdict if st.n else ""])
        grid.append(line)
    header = ["setting", "what changes"] + tasks
    who = (f"the `{agent}` agent" if agent
           else "the final student (MPDistil; the distilled student if the curriculum is off)")
    files = [*inputs.seeds_csvs, *inputs.prediction_files]
    sources = [f"`{f}`" for f in inputs.folders] + [f"`{f.name}`" for f in files]
    seeds = sorted({sd for vals in ab.used.values() for sd in vals})
    md = ["# Ablations against the full method", "",
          f"From {', '.join(sources)}: {len(runs)} ablation run(s); seeds: {', '.join(map(str, seeds)) or 'none'}. "
          f"Value: the task's main metric on the first dev split, "
          f"in %, of {who}; mean ± sample std over seeds [n = seeds]; Δ full = value − full method, "
          f"on the seeds both have. `{BEATS_TEACHER}`: above the same runs' teacher, the paired bootstrap's "
          f"interval excluding zero; `{ABOVE_BY_MEAN}`: above it by mean, untested ({NO_PREDICTIONS}). "
          f"`{MISSING}`: no run. Per-seed values: `ablation_seeds.csv` (row `<setting>:<agent>`); per-example "
          f"predictions: `ablation_predictions.json`.", "",
          markdown_table(header, grid)]
    cgrid = comparison_grid(titles, [(t, [""]) for t in tasks], found)
    md += comparisons_section("ablation", ["comparison"] + tasks, cgrid,
                              [c for c in comparisons if c.title in titles],
                              " (full − setting: the opposite sign of Δ full above)")
    notes += ab.notes
    if ab.without:
        without = list(dict.fromkeys(ab.without))
        notes.append(f"{len(without)} run(s) without per-example predictions: their values have no paired "
                     f"comparison: " + ", ".join(without))
    if notes:
        md += ["", "Notes:"] + [f"- {n}" for n in notes]
    text = portable("\n".join(md) + "\n", inputs.folders)
    ab.store.row_order = list(dict.fromkeys(key for key, _ in ab.used))
    ab.store.task_order = tasks
    out_dir.mkdir(parents=True, exist_ok=True)  # every input is read above, so an output may overwrite one
    (out_dir / "ablation.md").write_text(text)
    write_csv(out_dir / "ablation.csv", header, grid)
    write_csv(out_dir / "ablation_long.csv", ABLATION_LONG_HEADER, long_rows)
    write_csv(out_dir / "ablation_seeds.csv", SEEDS_HEADER, ab.seed_rows())
    write_csv(out_dir / "ablation_comparisons.csv", COMPARISONS_HEADER,
              [c.csv_row("ablation", "") for c in comparisons])
    ab.store.write(out_dir / "ablation_predictions.json")
    return text


# ---------------------------------------------------------------------------------------------------- CLI


def cmd_render(args: argparse.Namespace) -> int:
    """``tables.py render``: a table (or the ablation) from runs folders and earlier files, printed and written."""
    inputs = classify_inputs(args.table, args.inputs)
    if args.out:
        out_dir = Path(args.out).expanduser().resolve()
    elif inputs.folders:
        out_dir = inputs.folders[0]
    else:
        raise SystemExit("error: no runs folder among the inputs to write into; give --out DIR")
    if args.table == "ablation":
        text = render_ablation(inputs, out_dir, args.agent)
    else:
        text = render_table(TABLES[args.table], inputs, out_dir, args.experiment_name)
    print(text, end="")
    print(f"\n[tables] wrote {out_dir}/{args.table}.md, .csv, _long.csv, _seeds.csv, _comparisons.csv and "
          f"_predictions.json", file=sys.stderr)
    return 0
