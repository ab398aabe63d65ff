"""Tables as markdown and CSV: a paper table (ours against the paper) and the ablation (each setting against full)."""
from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paper_tables import GLUE_COLUMNS, PAPER, ROW_TITLES, ROWS, SUPERGLUE_COLUMNS, Cell, Column

from .scan import LONG_HEADER, SEEDS_HEADER, Inputs, Run, classify_inputs, scan_notes, scan_runs
from .specs import ABLATIONS, STUDENT_ROWS, TABLES, TableSpec
from .stats import MISSING, Stat, fmt_delta, fmt_num, fmt_stat, kept_cells, paired_delta, seed_values

# ---------------------------------------------------------------------------------------------- paper tables


@dataclass
class CellResult:
    row: str
    column: Column
    stats: list[Stat]
    paper: Cell | None
    beats: list[bool]

    def text(self) -> str:
        ours = " / ".join(fmt_stat(s, b) for s, b in zip(self.stats, self.beats, strict=True))
        paper = "/".join(fmt_num(v) for v in self.paper) if self.paper else None
        if all(s.n == 0 for s in self.stats):
            return f"{MISSING} ({paper})" if paper else MISSING
        n = max(s.n for s in self.stats)
        if not paper:
            return f"{ours} [n={n}]"
        deltas = "/".join(fmt_delta(s.mean - p) if s.n else MISSING
                          for s, p in zip(self.stats, self.paper, strict=True))
        return f"{ours} [n={n}] ({paper}; Δ {deltas})"


def column_title(col: Column) -> str:
    labels = [p.label for p in col.parts if p.label]
    return f"{col.title} ({'/'.join(labels)})" if labels else col.title


def build_table(spec: TableSpec, runs: Sequence[Run], inputs: Inputs | None = None
                ) -> tuple[list[CellResult], list[int], list[str], list[list[Any]]]:
    """Cells, seeds, notes and per-seed rows.

    From runs and per-seed CSVs; long CSVs fill only the columns nothing else fills.
    """
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


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue())


def render_table(spec: TableSpec, inputs: Inputs, out_dir: Path, experiment_name: str | None) -> str:
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
        for i, (part, stat) in enumerate(zip(c.column.parts, c.stats, strict=True)):
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


def render_ablation(runs_dir: Path, out_dir: Path, agent: str | None) -> str:
    """Each setting against the full method: main metric on the first dev split, per task."""
    scan = scan_runs(runs_dir)
    runs = [r for r in scan.runs if (r.experiment_name or "").startswith("ablation/")]
    skipped = [r for r in scan.runs if r not in runs]
    by_setting: dict[str, list[Run]] = {}
    for r in runs:
        by_setting.setdefault(str(r.experiment_name).split("/", 1)[1], []).append(r)
    tasks = task_order(r.task for r in runs)
    settings = [s for s in ABLATIONS if s in by_setting] + sorted(s for s in by_setting if s not in ABLATIONS)

    def stat(setting: str, task: str, who: str | None) -> Stat:
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


# ---------------------------------------------------------------------------------------------------- CLI


def cmd_render(args: argparse.Namespace) -> int:
    """``tables.py render``: a table (or the ablation) from runs folders and earlier CSVs, printed and written."""
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
