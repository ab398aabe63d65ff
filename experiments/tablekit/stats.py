"""Numbers of a table: per-seed values per cell, mean ± std over seeds, paired differences, and their text."""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from paper_tables import ROW_TITLES, ROWS

from .scan import Picker, Run
from .specs import TableSpec

MISSING = "—"

Slot = tuple[str, str, int, int]  # (row, task, index of the column's part, seed)


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


def fmt_stat(stat: Stat, mark: bool = False) -> str:
    if stat.n == 0:
        return MISSING
    text = fmt_num(stat.mean) if stat.std is None else f"{fmt_num(stat.mean)} ± {fmt_num(stat.std)}"
    return text + ("*" if mark else "")


# --------------------------------------------------------------------------------------- values per cell


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
