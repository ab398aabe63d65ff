"""The generalisation-vs-fidelity study from finished runs: does a distilled student's gain follow its fidelity?

Each run is one point: its grid levels (read from config.json) and, on the first dev split, the teacher's,
the undistilled student's and the studied student's main metric, the gain (student − undistilled) and the
student's fidelity to the teacher (agreement, KL, ECE, attribution similarity). Over the runs:

- Spearman ρ of the gain with each fidelity measure (and teacher score, student size), with a 95%
  percentile interval from resampling runs with replacement (resamples in which either side is constant
  have no ρ and are left out);
- per grid factor, the mean gain at each level, with each other factor held at the level over two thirds of
  the runs share (a one-factor-at-a-time centre) or averaged over when no level does (a factorial);
- every run whose student is above its teacher, with the paired bootstrap over dev examples of
  student − teacher from its predictions.json (``bootstrap.py``): ``beats`` only when the interval excludes 0.

Every point also goes to ``paradox.csv``, which a later render takes back as input beside new run folders.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bootstrap import BOOTSTRAP_SEED, LEVEL, RESAMPLES, Paired, SeedSample, paired_bootstrap, score_metric
from .predictions import decode_classes, encode_classes, from_run, read_run_predictions
from .scan import Run, scan_notes, scan_runs

MIN_POINTS = 3
CENTRE_SHARE = 2 / 3
FACTORS = ("student_layers", "temperature", "teacher_noise", "coverage", "frontier", "student_init")
MEASURES: tuple[tuple[str, str], ...] = (
    ("agreement", "agreement with the teacher"),
    ("kl_teacher_student", "KL(teacher‖student)"),
    ("ece_student", "student ECE"),
    ("attr_spearman", "attribution similarity (Spearman)"),
    ("teacher", "teacher score"),
    ("student_params", "student size (parameters)"),
)
FIDELITY_FIELDS = (
    "agreement",
    "kl_teacher_student",
    "js",
    "ece_student",
    "ece_teacher",
    "attr_spearman",
    "attr_topk_overlap",
    "confidence_student",
)
TEXT_COLUMNS = ("run", "task", "seed", "method", "row", "split", "metric", *FACTORS)
NUMBER_COLUMNS = (
    "teacher",
    "undistilled",
    "student",
    "gain",
    "vs_teacher",
    "vs_teacher_lo",
    "vs_teacher_hi",
    *FIDELITY_FIELDS,
    "transfer_examples",
    "student_params",
    "teacher_layers",
    "ood_student",
    "ood_gap",
)
CSV_HEADER = [*TEXT_COLUMNS, *NUMBER_COLUMNS]
SAMPLES = "_paired"  # a record's paired dev examples, read from its run folder (absent for a CSV's points)

Record = dict[str, Any]


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


# ----------------------------------------------------------------------------------------------- reading


def levels(config: dict[str, Any], results: dict[str, Any]) -> dict[str, str]:
    """A run's level of each grid factor, as the grid names them, from its resolved config."""
    m, d, model = config.get("method", {}), config.get("data", {}), config.get("model", {})
    noise = m.get("teacher_noise", "none")
    noise = {
        "label_flip": f"label_flip:{m.get('teacher_noise_rate')}",
        "logit_gauss": f"logit_gauss:{m.get('teacher_noise_scale')}",
    }.get(noise, noise)
    coverage = "none" if not d.get("transfer") else str(d.get("transfer_size") or "all")
    return {
        "student_layers": str(results.get("model", {}).get("student_layers", model.get("student_layers"))),
        "temperature": str(m.get("temperature")),
        "teacher_noise": noise,
        "coverage": coverage,
        "frontier": str(m.get("frontier_filter", "none")),
        "student_init": str(model.get("student_init", "pretrained")),
    }


def paired_samples(run: Run, row: str, split: str) -> dict[str, SeedSample]:
    """The run's dev examples paired for ``row`` − teacher and ``row`` − undistilled (keys "teacher",
    "undistilled"); empty without its predictions."""
    doc = read_run_predictions(run.path)
    if doc is None:
        return {}
    ours = from_run(doc, row, [split], "")
    if ours is None:
        return {}
    _, gold, a = ours.splits[split]
    dtype = np.float64 if ours.kind == "regression" else np.int64
    out = {}
    for other in ("teacher", "undistilled"):
        theirs = from_run(doc, other, [split], "")
        if theirs is not None:
            out[other] = SeedSample(run.seed, np.asarray(gold, dtype), np.asarray(a, dtype),
                                    np.asarray(theirs.splits[split][2], dtype))
    return out


def record(run: Run, run_id: str, row: str | None) -> tuple[Record | None, str]:
    """One run's point, or (None, why it has none)."""
    res = run.results
    row = row or res.get("final_row")
    split, metric = run.dev_split(), res["task"].get("main_metric")
    if not row or not split or not metric:
        return None, "no studied row, dev split or main metric"
    scores = {
        name: run.value(agent, split, metric)
        for name, agent in (("teacher", "teacher"), ("undistilled", "undistilled"), ("student", row))
    }
    missing = [name for name, v in scores.items() if v is None]
    if missing:
        return None, f"no {', '.join(missing)} score on {split} (a method with teacher, undistilled and student rows)"
    fidelity = res.get("fidelity", {}).get(f"{row}_vs_teacher", {}).get(split, {})
    samples = paired_samples(run, row, split)
    paired = paired_bootstrap(metric, [samples["teacher"]], run.task, split) if "teacher" in samples else None
    model = res.get("model", {})
    rec: Record = {
        "run": run_id,
        "task": run.task,
        "seed": str(run.seed),
        "method": run.method,
        "row": row,
        "split": split,
        "metric": metric,
        **levels(run.config, res),
        **scores,
        # rounded so that equal scores give an exact 0 (a tie in every rank), as paradox.csv gives it back
        "gain": round(scores["student"] - scores["undistilled"], 9),
        "vs_teacher": round(scores["student"] - scores["teacher"], 9),
        "vs_teacher_lo": paired.lo if paired else float("nan"),
        "vs_teacher_hi": paired.hi if paired else float("nan"),
        **{k: _num(fidelity.get(k)) for k in FIDELITY_FIELDS},
        "transfer_examples": float((res["task"].get("transfer") or {}).get("size", 0)),
        **out_of_domain(res, row, metric),
        "student_params": _num(model.get("student_params")),
        "teacher_layers": _num(model.get("teacher_layers")),
        SAMPLES: samples,  # not written to paradox.csv: the pooled intervals need the run folders
    }
    return rec, ""


def out_of_domain(results: dict[str, Any], row: str, metric: str) -> dict[str, float]:
    """The studied student's main metric out of domain (``eval.ood_tasks``), averaged over the tasks, and its
    in-domain minus out-of-domain gap; NaN without OOD tasks."""
    per_task = [agents[row] for agents in (results.get("ood") or {}).values() if row in agents]
    scores = [_num(a.get(metric)) for a in per_task]
    gaps = [_num(a.get("gap")) for a in per_task]
    return {"ood_student": _nanmean(scores) if scores else float("nan"),
            "ood_gap": _nanmean(gaps) if gaps else float("nan")}


def read_csv(path: Path) -> list[Record]:
    """The points of an earlier render's paradox.csv; SystemExit with one line when it is not one."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != CSV_HEADER:
            raise SystemExit(
                f"error: {path} is not a paradox.csv written by `paradox.py render`; pass a runs folder or such a file"
            )
        return [{k: (_num(v) if k in NUMBER_COLUMNS else v) for k, v in row.items()} for row in reader]


PREDICTIONS = "paradox_predictions.json"
PREDICTIONS_FORMAT = "mpdistil paradox predictions 1"


def write_predictions(records: Sequence[Record], path: Path) -> None:
    """Each run's paired dev predictions (student, undistilled, teacher, gold; classes one character each, as in
    the tables' files), so a later render from paradox.csv keeps the pooled intervals without the run folders."""
    runs = {}
    for r in records:
        samples = r.get(SAMPLES) or {}
        if not samples:
            continue
        first = next(iter(samples.values()))
        enc = (lambda a: [float(x) for x in a]) if first.gold.dtype.kind == "f" else encode_classes
        runs[r["run"]] = {"seed": first.seed, "gold": enc(first.gold), "student": enc(first.a),
                          **{other: enc(s.b) for other, s in samples.items()}}
    path.write_text(json.dumps({"format": PREDICTIONS_FORMAT, "runs": runs}, separators=(",", ":")))


def read_predictions(path: Path) -> dict[str, dict[str, SeedSample]]:
    """The paired samples of a ``paradox_predictions.json``, by run; SystemExit with one line for another file."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != PREDICTIONS_FORMAT:
        raise SystemExit(f"error: {path} is not a {PREDICTIONS} written by `paradox.py render`")

    def dec(v: Any) -> np.ndarray:
        return np.asarray(decode_classes(v), np.int64) if isinstance(v, str) else np.asarray(v, np.float64)

    return {run: {other: SeedSample(int(e["seed"]), dec(e["gold"]), dec(e["student"]), dec(e[other]))
                  for other in ("teacher", "undistilled") if other in e} for run, e in doc["runs"].items()}


def gather(inputs: Sequence[Path], row: str | None) -> tuple[list[Record], list[str]]:
    """Every point under the inputs (runs folders, earlier paradox.csv files and their paradox_predictions.json);
    a run found in a folder wins over the same run in a CSV."""
    from_runs: dict[str, Record] = {}
    from_csv: dict[str, Record] = {}
    kept: dict[str, dict[str, SeedSample]] = {}
    notes: list[str] = []
    for path in inputs:
        if path.is_file() and path.suffix == ".json":
            kept.update(read_predictions(path))
            continue
        if path.is_file():
            from_csv.update({r["run"]: r for r in read_csv(path)})
            continue
        scan = scan_runs(path)
        skipped: list[str] = []
        for run in scan.runs:
            run_id = f"{path.name}/{run.path.relative_to(path)}"
            rec, why = record(run, run_id, row)
            if rec is None:
                skipped.append(f"{run_id}: {why}")
            else:
                from_runs[run_id] = rec
        notes += scan_notes(scan, [], "")
        notes += [f"skipped {s}" for s in skipped]
    for run, rec in from_csv.items():
        if run in kept:
            rec[SAMPLES] = kept[run]
    merged = {**from_csv, **from_runs}
    return [merged[k] for k in sorted(merged)], notes


def check_inputs(inputs: Sequence[Path]) -> None:
    """Refuse, in one line and before any work, an input that is neither a runs folder with results nor a CSV."""
    for path in inputs:
        if path.is_file():
            if path.suffix not in (".csv", ".json"):
                raise SystemExit(
                    f"error: {path} is neither a runs folder nor a paradox.csv or {PREDICTIONS}; pass the folder "
                    "the runs were written to"
                )
        elif not path.is_dir():
            raise SystemExit(
                f"error: {path} does not exist; pass the folder the runs were written to (e.g. runs/paradox/cpu)"
            )
        elif next(path.rglob("results.json"), None) is None:
            raise SystemExit(
                f"error: no results.json under {path}; run `python experiments/paradox.py run` first, "
                "or pass the folder its runs were written to"
            )


# ------------------------------------------------------------------------------------------------ numbers


@dataclass(frozen=True)
class Correlation:
    """Spearman ρ of gain with one measure within a scope, and its percentile interval over resampled runs."""

    scope: str
    measure: str
    label: str
    n: int
    rho: float
    lo: float
    hi: float
    reason: str = ""

    @property
    def verdict(self) -> str:
        if self.reason:
            return self.reason
        if self.lo > 0 or self.hi < 0:
            return f"gain {'rises' if self.rho > 0 else 'falls'} with it"
        return "no evidence either way"


def spearman_interval(
    x: Iterable[float], y: Iterable[float], stream: str, resamples: int = RESAMPLES
) -> tuple[int, float, float, float, str]:
    """(n, ρ, lo, hi, reason): ρ over the finite pairs, its interval from resampling pairs (seeded by ``stream``)."""
    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n, nan = int(keep.sum()), float("nan")
    if n < MIN_POINTS:
        return n, nan, nan, nan, f"{n} run(s) with both values, need ≥ {MIN_POINTS}"
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return n, nan, nan, nan, "gain or the measure is constant over the runs"
    rho = float(score_metric("spearman", x[None], y[None])[0])
    idx = np.random.default_rng([BOOTSTRAP_SEED, zlib.crc32(stream.encode())]).integers(0, n, size=(resamples, n))
    xs, ys = x[idx], y[idx]
    ok = (np.ptp(xs, axis=1) > 0) & (np.ptp(ys, axis=1) > 0)
    reps = score_metric("spearman", xs[ok], ys[ok])
    lo, hi = np.percentile(reps, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return n, rho, float(lo), float(hi), ""


def correlations(records: Sequence[Record]) -> list[Correlation]:
    """Gain against every measure, over all runs and, when there are several tasks, per task."""
    tasks = sorted({r["task"] for r in records})
    scopes = [("all", list(records))] + (
        [(t, [r for r in records if r["task"] == t]) for t in tasks] if len(tasks) > 1 else []
    )
    out = []
    for scope, rows in scopes:
        for key, label in MEASURES:
            n, rho, lo, hi, why = spearman_interval((r[key] for r in rows), (r["gain"] for r in rows), f"{scope}/{key}")
            out.append(Correlation(scope, key, label, n, rho, lo, hi, why))
    return out


def confidence_ood(records: Sequence[Record]) -> list[tuple[str, int, float, float, float, str]]:
    """Spearman ρ of the student's dev confidence with its out-of-domain score and with its in-domain minus
    out-of-domain gap, over the runs that were scored out of domain: (label, n, ρ, lo, hi, reason)."""
    out = []
    for key, label in (("ood_student", "out-of-domain score"), ("ood_gap", "in-domain − out-of-domain gap")):
        n, rho, lo, hi, why = spearman_interval((r["confidence_student"] for r in records), (r[key] for r in records),
                                                f"confidence/{key}")
        out.append((label, n, rho, lo, hi, why))
    return out


def confidence_table(rows: Sequence[tuple[str, int, float, float, float, str]]) -> str:
    lines = ["| student confidence against | runs | ρ | 95% interval | |", "|---|---|---|---|---|"]
    for label, n, rho, lo, hi, why in rows:
        verdict = why or ("rises with confidence" if lo > 0 else "falls with confidence" if hi < 0
                          else "no evidence either way")
        lines.append(f"| {label} | {n} | {fmt(rho)} | [{fmt(lo)}, {fmt(hi)}] | {verdict} |")
    return "\n".join(lines)


def _level_order(values: Iterable[str]) -> list[str]:
    """Levels in numeric order when they are numbers, "none" first, else alphabetical."""

    def key(v: str) -> tuple[int, float, str]:
        return (
            (0, -math.inf, v)
            if v == "none"
            else (1, _num(v.rstrip("x")), v)
            if math.isfinite(_num(v.rstrip("x")))
            else (2, 0.0, v)
        )

    return sorted(set(values), key=key)


def _centre(values: Sequence[str]) -> str | None:
    """The level of a one-factor-at-a-time centre: the one more than ``CENTRE_SHARE`` of the runs share, or at least
    twice as many as any other level (a centre with crossed sets around it); else None: in a factorial every level
    has its even share, also when a few runs failed."""
    counts = sorted((values.count(v), v) for v in set(values))
    top_count, top = counts[-1]
    second = counts[-2][0] if len(counts) > 1 else 0
    return top if top_count > CENTRE_SHARE * len(values) or top_count >= 2 * second else None


@dataclass(frozen=True)
class LevelMean:
    factor: str
    level: str
    n: int
    gain: float
    gain_std: float | None
    vs_teacher: float
    above_teacher: int
    agreement: float
    held: str  # how the other factors were treated (:func:`holding`)
    gain_ci: Paired | None = None  # student − undistilled, pooled over the runs' seeds and examples
    vs_teacher_ci: Paired | None = None
    student: float = float("nan")  # mean student score


def pooled(rows: Sequence[Record], other: str, stream: str) -> Paired | None:
    """The paired bootstrap of student − ``other`` over every run's dev examples (the mean over runs of each run's
    difference, resampled within each run); None when a run's predictions are not at hand."""
    samples = [r.get(SAMPLES, {}).get(other) for r in rows]
    if not rows or any(s is None for s in samples):
        return None
    return paired_bootstrap(rows[0]["metric"], samples, rows[0]["task"], stream)


def summarise(rows: Sequence[Record], factor: str, level: str, how: str, stream: str) -> LevelMean:
    gains = [r["gain"] for r in rows]
    return LevelMean(factor, level, len(rows), statistics.fmean(gains),
                     statistics.stdev(gains) if len(gains) > 1 else None,
                     statistics.fmean(r["vs_teacher"] for r in rows), sum(r["vs_teacher"] > 0 for r in rows),
                     _nanmean(r["agreement"] for r in rows), how, pooled(rows, "undistilled", f"gain/{stream}"),
                     pooled(rows, "teacher", f"teacher/{stream}"), _nanmean(_num(r.get("student")) for r in rows))


def holding(rows: Sequence[Record], centres: dict[str, str | None]) -> str:
    """How the other factors that vary among ``rows`` were treated: held at their centre, or averaged over."""
    varying = [f for f in centres if len({r[f] for r in rows}) > 1]
    at_centre = [f for f in varying if centres[f] is not None]
    averaged = [f for f in varying if centres[f] is None]
    if not varying:
        return "no other factor varies"
    if not averaged:
        return "others at centre"
    if not at_centre:
        return "averaged over the others"
    return f"{', '.join(at_centre)} at centre; averaged over {', '.join(averaged)}"


def level_means(records: Sequence[Record]) -> list[LevelMean]:
    """Per task and grid factor, each level's mean gain (and more) over the runs that isolate that factor."""
    out = []
    for task in sorted({r["task"] for r in records}):
        rows = [r for r in records if r["task"] == task]
        for factor in FACTORS:
            others = {f: _centre([r[f] for r in rows]) for f in FACTORS if f != factor}
            held = [r for r in rows if all(m is None or r[f] == m for f, m in others.items())]
            how = holding(rows, others)
            values = _level_order(r[factor] for r in held)
            if len(values) < 2:
                continue
            for level in values:
                at = [r for r in held if r[factor] == level]
                out.append(summarise(at, f"{task}: {factor}", level, how, f"{task}/{factor}/{level}"))
    return out


def crossed_cells(records: Sequence[Record]) -> list[LevelMean]:
    """Per task, every pair of factors crossed in the grid (at least two levels of each, two by two, with the other
    factors at their centre): each cell's means and pooled intervals. A one-factor-at-a-time grid with crossed
    cells (e.g. depth × temperature) shows there whether one factor's effect depends on the other."""
    out = []
    for task in sorted({r["task"] for r in records}):
        rows = [r for r in records if r["task"] == task]
        centres = {f: _centre([r[f] for r in rows]) for f in FACTORS}
        for i, f1 in enumerate(FACTORS):
            for f2 in FACTORS[i + 1:]:
                held = [r for r in rows if all(centres[f] is None or r[f] == centres[f]
                                               for f in FACTORS if f not in (f1, f2))]
                cells = {(r[f1], r[f2]) for r in held}
                firsts = _level_order(a for a, _ in cells)
                crossed = [a for a in firsts if len({b for x, b in cells if x == a}) >= 2]
                if len(crossed) < 2:
                    continue
                for a in crossed:
                    for b in _level_order(y for x, y in cells if x == a):
                        at = [r for r in held if (r[f1], r[f2]) == (a, b)]
                        out.append(summarise(at, f"{task}: {f1} × {f2}", f"{a} × {b}", "others at centre",
                                             f"{task}/{f1}/{a}/{f2}/{b}"))
    return out


def _nanmean(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else float("nan")


# ------------------------------------------------------------------------------------------------ writing


def fmt(x: float, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:.2e}" if x != 0 and abs(x) < 10**-digits else f"{x:.{digits}f}"


def correlation_table(corrs: Sequence[Correlation]) -> str:
    lines = ["| scope | gain vs | n | Spearman ρ | 95% interval | reading |", "|---|---|---|---|---|---|"]
    for c in corrs:
        interval = "—" if c.reason else f"[{fmt(c.lo, 2)}, {fmt(c.hi, 2)}]"
        lines.append(f"| {c.scope} | {c.label} | {c.n} | {fmt(c.rho, 2)} | {interval} | {c.verdict} |")
    return "\n".join(lines)


def _ci(p: Paired | None) -> str:
    return "—" if p is None else f"[{p.lo:+.1f}, {p.hi:+.1f}]"


def level_table(means: Sequence[LevelMean]) -> str:
    lines = [
        "| factor | level | runs | student | mean gain | std | gain 95% | mean student − teacher | 95% | "
        "above teacher | mean agreement | other factors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in means:
        std = "—" if m.gain_std is None else f"{m.gain_std:.2f}"
        lines.append(
            f"| {m.factor} | {m.level} | {m.n} | {fmt(m.student, 1)} | {m.gain:+.2f} | {std} | {_ci(m.gain_ci)} | "
            f"{m.vs_teacher:+.2f} | {_ci(m.vs_teacher_ci)} | {m.above_teacher}/{m.n} | {fmt(m.agreement, 3)} | "
            f"{m.held} |"
        )
    return "\n".join(lines)


def above_teacher_table(records: Sequence[Record]) -> tuple[str, int, int]:
    """The runs whose student scores above its teacher, with the paired interval; (table, above, beats)."""
    above = sorted((r for r in records if r["vs_teacher"] > 0), key=lambda r: -r["vs_teacher"])
    lines = [
        "| run | task | seed | " + " | ".join(FACTORS) + " | student − teacher | 95% paired interval | verdict |",
        "|" + "---|" * (len(FACTORS) + 6),
    ]
    beats = 0
    for r in above:
        has = math.isfinite(r["vs_teacher_lo"])
        verdict = "no predictions.json" if not has else "beats" if r["vs_teacher_lo"] > 0 else "tie"
        beats += verdict == "beats"
        interval = f"[{r['vs_teacher_lo']:+.1f}, {r['vs_teacher_hi']:+.1f}]" if has else "—"
        lines.append(
            f"| {r['run']} | {r['task']} | {r['seed']} | "
            + " | ".join(r[f] for f in FACTORS)
            + f" | {r['vs_teacher']:+.1f} | {interval} | {verdict} |"
        )
    return ("\n".join(lines) if above else "(none)"), len(above), beats


def write_csv(records: Sequence[Record], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        for r in records:
            w.writerow(
                [r[k] if k in TEXT_COLUMNS else ("" if not math.isfinite(r[k]) else f"{r[k]:.10g}") for k in CSV_HEADER]
            )


def markdown(
    records: Sequence[Record],
    corrs: Sequence[Correlation],
    means: Sequence[LevelMean],
    notes: Sequence[str],
    plots: Sequence[str],
) -> str:
    table, above, beats = above_teacher_table(records)
    cells = crossed_cells(records)
    md = [
        "# Generalisation vs fidelity",
        "",
        f"{len(records)} run(s). gain = studied student − undistilled student on each task's main dev metric, in "
        "points; fidelity is the studied student's to its teacher on the same dev split. ρ intervals: 95% "
        f"percentile intervals over {RESAMPLES} resamples of the runs.",
        "",
        "## Gain against fidelity",
        "",
        correlation_table(corrs),
        "",
        "## Mean gain per level of each grid factor",
        "",
        "student: mean dev score of the studied student. The 95% intervals are paired bootstraps over each run's dev "
        f"examples ({RESAMPLES} resamples), pooled over the level's runs (seeds); — where a point came from a CSV "
        "without its run folder.",
        "",
        level_table(means) if means else "(no factor has two levels among the runs)",
        "",
        "## Crossed cells",
        "",
        "Pairs of factors the grid crosses, the other factors at their centre: whether one factor's effect depends "
        "on the other.",
        "",
        level_table(cells) if cells else "(the grid crosses no two factors)",
        "",
        "## Confidence and out-of-domain",
        "",
        "The studied student's mean top-class probability on the dev split against its main metric on the "
        "`eval.ood_tasks` (mean over them) and its in-domain minus out-of-domain gap.",
        "",
        confidence_table(confidence_ood(records)),
        "",
        f"## Students above their teacher ({above} run(s); {beats} beyond the paired interval)",
        "",
        "student − teacher in points on the dev split, with the paired bootstrap over its examples "
        f"({RESAMPLES} resamples): `beats` when the interval excludes 0, else `tie`.",
        "",
        table,
        "",
    ]
    md += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(md)
