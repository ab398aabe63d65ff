"""Numbers of a table: per-seed values per cell, mean ± std over seeds, paired differences, and their text.

Two kinds of comparison between rows. On cell values (``paired_delta``): the difference of the means
over the seeds both rows have, which is all a seeds CSV or a long CSV allows. On per-example
predictions (``compare``): the paired bootstrap of ``bootstrap.py``, whose 95% interval decides
whether a row is printed as beating another (``beats``), below it, or level with it (``tie``).
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from paper_tables import ROW_TITLES, ROWS

from mpdistil.metrics.task_metrics import compute_metrics

from .bootstrap import SCORE_METRICS, Paired, SeedSample, paired_bootstrap
from .predictions import RunReader, TablePredictions, majority_class
from .scan import Picker, Run
from .specs import TableSpec

MISSING = "—"
NO_PREDICTIONS = "no per-example predictions"
AT_MAJORITY = "°"  # at or below the majority-class baseline over the same seeds
AT_MAJORITY_TOL = 1e-6  # points: a cell equal to the majority-class baseline up to float noise is "at" it

Slot = tuple[str, str, int, int]  # (row, task, index of the column's part, seed)
Pick = tuple[str, str, int]  # (row, task, seed)


@dataclass
class Stat:
    """Mean and sample std over seeds of one number, in percent.

    ``summary`` holds (mean, std) of a cell kept from an earlier rendering's long CSV, whose per-seed
    values are not known; ``values`` is then empty and ``seeds`` says which seeds the summary covers.
    """

    values: list[float]
    seeds: list[int]
    summary: tuple[float, float | None] | None = None

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def mean(self) -> float | None:
        if self.summary:
            return self.summary[0]
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        if self.summary:
            return self.summary[1]
        return statistics.stdev(self.values) if len(self.values) >= 2 else None


def paired_delta(a: Stat, b: Stat) -> float | None:
    """a − b over the seeds both have (None if none), so a row run on fewer seeds is not compared with other seeds."""
    if a.summary or b.summary:  # kept summaries: comparable only over the very same seeds
        return a.mean - b.mean if a.n and a.seeds == b.seeds else None
    common = set(a.seeds) & set(b.seeds)
    if not common:
        return None
    on_common = [statistics.fmean(v for v, seed in zip(st.values, st.seeds, strict=True) if seed in common)
                 for st in (a, b)]
    return on_common[0] - on_common[1]


# ------------------------------------------------------------------------------------------------ formatting


def fmt_num(x: float) -> str:
    s = f"{x:.1f}"
    return "0.0" if s == "-0.0" else s


def fmt_delta(x: float) -> str:
    s = f"{x:+.1f}"
    return "+0.0" if s == "-0.0" else s


def fmt_stat(stat: Stat, mark: str = "") -> str:
    if stat.n == 0:
        return MISSING
    text = fmt_num(stat.mean) if stat.std is None else f"{fmt_num(stat.mean)} ± {fmt_num(stat.std)}"
    return text + mark


# ------------------------------------------------------------------------------------------ paired comparisons


@dataclass(frozen=True)
class Comparison:
    """Row ``row`` against row ``versus`` on one number of one task, from per-example predictions if any."""

    title: str
    row: str
    versus: str
    against: str  # how a verdict names ``versus``: "teacher", "KD", ...
    task: str
    part: int
    split: str
    metric: str
    cell_seeds: tuple[int, ...]  # seeds both rows have a cell value for
    paired: Paired | None  # None: no seed with both rows' predictions

    @property
    def covers_cells(self) -> bool:
        """The bootstrap ran on every seed the two cells share, so it speaks for the cells as shown."""
        return self.paired is not None and set(self.cell_seeds) <= set(self.paired.seeds)

    @property
    def verdict(self) -> str:
        if self.paired is None:
            return NO_PREDICTIONS
        return f"beats {self.against}" if self.paired.above else f"below {self.against}" if self.paired.below \
            else "tie"

    def text(self) -> str:
        p = self.paired
        if p is None:
            return NO_PREDICTIONS
        return f"{fmt_delta(p.diff)} [{fmt_delta(p.lo)}, {fmt_delta(p.hi)}] {p.same_sign}/{len(p.seeds)} {self.verdict}"

    def csv_row(self, table: str, part_label: str) -> list[str]:
        p = self.paired
        nums = ["", "", "", "", "", "", "", ""] if p is None else [
            " ".join(map(str, p.seeds)), " ".join(f"{d:.4f}" for d in p.per_seed), f"{p.diff:.4f}", f"{p.lo:.4f}",
            f"{p.hi:.4f}", str(p.same_sign), str(len(p.seeds)), str(p.resamples)]
        return [table, self.title, self.row, self.versus, self.task, part_label, self.split, self.metric,
                " ".join(map(str, self.cell_seeds)), *nums, self.verdict]


COMPARISONS_HEADER = ["table", "comparison", "row", "versus", "task", "part", "split", "metric", "cell_seeds",
                      "seeds", "per_seed", "diff", "lo", "hi", "same_sign", "n_seeds", "resamples", "verdict"]


def compare(store: TablePredictions, title: str, row: str, versus: str, against: str, task: str, part: int,
            split: str, metric: str, cell_seeds: Sequence[int]) -> Comparison:
    """``row`` − ``versus`` by the paired bootstrap, over the seeds where both have predictions on ``split``."""
    samples = [SeedSample(seed, gold, a, b) for seed, gold, a, b in store.paired(task, split, row, versus)]
    paired = paired_bootstrap(metric, samples, task, split) if samples else None
    return Comparison(title, row, versus, against, task, part, split, metric, tuple(cell_seeds), paired)


def common_seeds(a: Stat, b: Stat) -> tuple[int, ...]:
    return tuple(sorted(set(a.seeds) & set(b.seeds)))


def majority_stat(store: TablePredictions, task: str, split: str, metric: str) -> Stat | None:
    """Always predicting the most frequent training class, scored on each seed's dev labels; None for regression."""
    t = store.tasks.get(task)
    if metric in SCORE_METRICS or (t is not None and t.regression):
        return None
    values, seeds = [], []
    for seed, entry in sorted(t.seeds.items()) if t else []:
        cls, labels = majority_class(entry.train_label_counts), store.labelled(task, seed, split)
        if cls is None or not labels:
            continue
        gold = np.asarray(labels, dtype=np.int64)
        values.append(100.0 * compute_metrics([metric], np.full_like(gold, cls), gold)[metric])
        seeds.append(seed)
    return Stat(values, seeds)


def at_or_below(a: Stat, baseline: Stat | None) -> bool | None:
    """Whether ``a`` is at or below ``baseline`` over the seeds both have; None when they share none."""
    delta = paired_delta(a, baseline) if baseline is not None and a.n else None
    return None if delta is None else delta <= AT_MAJORITY_TOL


# --------------------------------------------------------------------------------------- values per cell


def seed_values(spec: TableSpec, runs: Sequence[Run], seeds_csvs: dict[Path, list[dict[str, str]]]
                ) -> tuple[dict[Slot, tuple[float, str]], dict[Pick, tuple[Run, str]], list[str]]:
    """Every (value, run) per slot, and the (run, agent) behind each row, task and seed of the runs.

    From the seeds CSVs, then from the runs, which win a disagreement.
    """
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
    picks: dict[Pick, tuple[Run, str]] = {}
    for row in ROWS:
        for col in spec.columns:
            for seed in seeds:
                hit = picker.pick(row, col.task, seed)
                if hit is None:
                    continue
                picks[(row, col.task, seed)] = hit
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
    return values, picks, notes


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


def collect_predictions(spec: TableSpec, picks: dict[Pick, tuple[Run, str]], files: dict[Path, TablePredictions],
                        portable: Callable[[str], str]) -> tuple[TablePredictions, list[str]]:
    """The predictions behind the table's cells: each picked run's, then the files' for slots no run fills."""
    tasks = [c.task for c in spec.columns]
    store = TablePredictions(spec.name, ROWS, tasks)
    notes: list[str] = []
    reader = RunReader()
    without: list[str] = []
    for row, task, seed in sorted(picks, key=lambda k: (tasks.index(k[1]), k[2], ROWS.index(k[0]))):
        run, agent = picks[(row, task, seed)]
        splits = dict.fromkeys(p.split for p in spec.columns[tasks.index(task)].parts)
        given = reader.row(run.path, agent, splits, portable(str(run.path)))
        if given is None:
            without.append(portable(str(run.path)))
            continue
        note = store.add(task, seed, row, given)
        if note:
            notes.append(note)
    for path, stored in files.items():
        for task, seed, row in stored.slots():
            if row not in ROWS or task not in tasks:
                raise SystemExit(f"error: {path} has row {row!r} / task {task!r}, which {spec.name!r} does not "
                                 f"have; pass the predictions of {spec.name!r}")
            theirs = stored.row(task, seed, row)
            if (row, task, seed) in picks or store.has(task, seed, row):
                if store.has(task, seed, row) and store.row(task, seed, row).splits != theirs.splits:
                    notes.append(f"{ROW_TITLES[row]} / {task} / seed {seed}: predictions from "
                                 f"{store.row(task, seed, row).run or 'an earlier input'} differ from "
                                 f"`{path.name}` (run {theirs.run}); using the former")
                continue
            note = store.add(task, seed, row, theirs)
            if note:
                notes.append(note)
    if without:
        runs = list(dict.fromkeys(without))
        notes.append(f"{len(runs)} run(s) without per-example predictions (no predictions.json, or not for the "
                     f"row used): their cells have no paired comparison: " + ", ".join(runs))
    return store, notes
