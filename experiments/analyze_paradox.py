"""Test the generalisation-vs-fidelity paradox hypotheses on a folder of finished runs.

Ramesh et al. (2025) report that the gain of a distilled student over the same student
trained without distillation is not predicted by how well it agrees with or follows its
teacher, that teacher accuracy barely predicts it, and that small students gain most.
This script gathers every ``results.json`` under RUNS_DIR (e.g. a Hydra multirun), takes
gain = student - undistilled on the task's main dev metric, and reports the Spearman
correlation of gain with each factor (each run is one point; seeds are not averaged).

    python experiments/analyze_paradox.py RUNS_DIR --out OUT_DIR

Writes OUT_DIR/paradox.md (tables) and OUT_DIR/paradox.png (scatter plots), and prints
the hypothesis table. Standalone on purpose: it needs only numpy, scipy and matplotlib.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

ALPHA = 0.05
MIN_POINTS = 3

FACTORS: list[tuple[str, str]] = [
    ("agreement", "agreement with teacher"),
    ("kl_teacher_student", "KL(teacher‖student)"),
    ("attr_spearman", "attribution similarity (Spearman)"),
    ("teacher_score", "teacher score"),
    ("student_params", "student size (parameters)"),
    ("student_layers", "student size (layers)"),
]


def _num(x: Any) -> float:
    """A finite-or-NaN float from whatever the JSON holds (missing -> NaN)."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def read_run(path: Path) -> tuple[dict[str, Any] | None, str]:
    """Extract one run's point from its results.json: (record, "") or (None, reason).

    The only place that knows the results.json layout, so that a layout change is a
    one-function edit.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return None, f"unreadable ({err})"
    task = data.get("task", {}) or {}
    model = data.get("model", {}) or {}
    agents = data.get("agents", {}) or {}
    main = task.get("main_metric")
    if not main:
        return None, "no task.main_metric"

    def dev_score(agent: str) -> float:
        return _num(((agents.get(agent) or {}).get("dev") or {}).get(main))

    undistilled = dev_score("undistilled")
    student = dev_score("student")
    if math.isnan(undistilled):
        return None, f"no undistilled dev {main}"
    if math.isnan(student):
        return None, f"no student dev {main}"
    fid = (((data.get("fidelity") or {}).get("student_vs_teacher") or {}).get("dev")) or {}
    return {
        "task": str(task.get("name", "?")),
        "main_metric": str(main),
        "gain": student - undistilled,
        "student_score": student,
        "undistilled_score": undistilled,
        "teacher_score": dev_score("teacher"),
        "agreement": _num(fid.get("agreement")),
        "kl_teacher_student": _num(fid.get("kl_teacher_student")),
        "attr_spearman": _num(fid.get("attr_spearman")),
        "student_params": _num(model.get("student_params")),
        "student_layers": _num(model.get("student_layers")),
        "teacher_layers": _num(model.get("teacher_layers")),
    }, ""


def collect_runs(runs_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """All usable runs under runs_dir (recursive), plus a note for each skipped one."""
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    for path in sorted(runs_dir.rglob("results.json")):
        rel = str(path.parent.relative_to(runs_dir)) or "."
        record, reason = read_run(path)
        if record is None:
            notes.append(f"skipped {rel}: {reason}")
            continue
        record["run"] = rel
        records.append(record)
    return records, notes


@dataclass
class Test:
    """One hypothesis row: Spearman of gain against a factor within a scope."""

    scope: str
    factor: str
    label: str
    n: int
    rho: float
    p: float
    verdict: str


def spearman_test(gain: np.ndarray, factor: np.ndarray) -> tuple[int, float, float, str]:
    """(n, rho, p, reason): rho and p are NaN with a reason when undefined."""
    keep = np.isfinite(gain) & np.isfinite(factor)
    g, f = gain[keep], factor[keep]
    n = int(keep.sum())
    if n < MIN_POINTS:
        return n, float("nan"), float("nan"), f"cannot compute: {n} run(s) with this factor, need ≥ {MIN_POINTS}"
    if np.ptp(g) == 0:
        return n, float("nan"), float("nan"), "cannot compute: gain does not vary"
    if np.ptp(f) == 0:
        return n, float("nan"), float("nan"), "cannot compute: factor does not vary"
    res = spearmanr(g, f)
    return n, float(res.statistic), float(res.pvalue), ""


def verdict(rho: float, p: float, reason: str) -> str:
    """Plain-words reading of one correlation."""
    if reason:
        return reason
    if p < ALPHA:
        direction = "rises" if rho > 0 else "falls"
        return f"gain {direction} with the factor (p < {ALPHA})"
    return f"no evidence (p ≥ {ALPHA})"


def run_tests(records: list[dict[str, Any]]) -> list[Test]:
    """All hypotheses over all runs, and per task when there are several tasks."""
    tasks = sorted({r["task"] for r in records})
    scopes = [("all", records)]
    if len(tasks) > 1:
        scopes += [(t, [r for r in records if r["task"] == t]) for t in tasks]
    tests: list[Test] = []
    for scope, rows in scopes:
        gain = np.array([r["gain"] for r in rows], dtype=float)
        for key, label in FACTORS:
            factor = np.array([r[key] for r in rows], dtype=float)
            n, rho, p, reason = spearman_test(gain, factor)
            tests.append(Test(scope, key, label, n, rho, p, verdict(rho, p, reason)))
    return tests


def _fmt(x: float, digits: int = 3) -> str:
    """Fixed-point for ordinary values, scientific for tiny ones (p-values), NaN spelled out."""
    if not math.isfinite(x):
        return "NaN"
    if x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def hypothesis_table(tests: list[Test]) -> str:
    """Markdown table of the hypothesis tests."""
    lines = [
        "| scope | hypothesis | n | Spearman ρ | p-value | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for t in tests:
        lines.append(
            f"| {t.scope} | gain vs {t.label} | {t.n} | {_fmt(t.rho)} | {_fmt(t.p)} | {t.verdict} |"
        )
    return "\n".join(lines)


def runs_table(records: list[dict[str, Any]]) -> str:
    """Markdown table of the points the tests were computed on."""
    cols = ["run", "task", "gain", "teacher_score", "agreement", "kl_teacher_student",
            "attr_spearman", "student_layers", "student_params"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        cells = [r[c] if isinstance(r[c], str) else f"{r[c]:.4g}" for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], tests: list[Test], out_png: Path) -> None:
    """Scatter of gain against each factor, coloured by task, titled with pooled ρ and p."""
    pooled = {t.factor: t for t in tests if t.scope == "all"}
    tasks = sorted({r["task"] for r in records})
    cmap = plt.get_cmap("tab10")
    ncols = 3
    nrows = math.ceil(len(FACTORS) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, FACTORS):
        any_point = False
        for i, task in enumerate(tasks):
            pts = [(r[key], r["gain"]) for r in records
                   if r["task"] == task and math.isfinite(r[key]) and math.isfinite(r["gain"])]
            if pts:
                any_point = True
                xs, ys = zip(*pts)
                ax.scatter(xs, ys, s=22, color=cmap(i % 10), label=task)
        if not any_point:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        t = pooled.get(key)
        title = label if t is None else f"{label}\nρ={_fmt(t.rho, 2)}, p={_fmt(t.p, 2)}, n={t.n}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("gain over undistilled", fontsize=8)
        ax.axhline(0.0, color="grey", lw=0.6, ls="--")
        if any_point and len(tasks) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(FACTORS):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", type=Path, help="folder searched recursively for results.json")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUNS_DIR)")
    args = parser.parse_args(argv)
    if not args.runs_dir.is_dir():
        print(f"error: {args.runs_dir} is not a directory", file=sys.stderr)
        return 2
    out_dir = args.out if args.out is not None else args.runs_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    records, notes = collect_runs(args.runs_dir)
    for note in notes:
        print(f"note: {note}")
    tests = run_tests(records)
    table = hypothesis_table(tests)

    md = [
        "# Generalisation vs fidelity: does the student's gain follow its teacher?",
        "",
        f"Runs read from `{args.runs_dir}`: {len(records)} used, {len(notes)} skipped.",
        "gain = student − undistilled student on the task's main dev metric; "
        f"Spearman ρ with two-sided p; verdicts at α = {ALPHA}. "
        "The paper expects ρ ≤ 0 for agreement/fidelity, little for teacher score, "
        "and a negative ρ for student size (small students gain most).",
        "",
        table,
        "",
        "## Runs",
        "",
        runs_table(records) if records else "(none)",
    ]
    if notes:
        md += ["", "## Skipped", ""] + [f"- {n}" for n in notes]
    (out_dir / "paradox.md").write_text("\n".join(md) + "\n")
    plot(records, tests, out_dir / "paradox.png")

    print(table)
    print(f"wrote {out_dir / 'paradox.md'} and {out_dir / 'paradox.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
