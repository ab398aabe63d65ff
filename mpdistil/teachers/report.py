"""What the audit leaves behind: ``audit.json``, ``audit.md``, the printed table, the plots and, with
``logger=wandb``, the same table and plots in a W&B run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from mpdistil.atomic import write_json, write_text
from mpdistil.loggers import build_logger
from mpdistil.teachers.measure import criteria
from mpdistil.teachers.ranking import CRITERIA, PROFILES, rank, resolve_weights


def rankings(
    values: dict[str, dict[str, Optional[float]]],
    profile: str,
    weights: dict[str, float],
    eligible: dict[str, bool],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ranking under the audit's weighting, and under each named profile as it is declared."""
    chosen = {"profile": profile, **rank(values, weights, eligible)}
    named = {name: rank(values, resolve_weights(name, {}), eligible) for name in PROFILES if PROFILES[name]}
    return chosen, named


def _pct(value: Optional[float]) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per teacher in ranked order: score, the measured criteria, and its rank under each named profile."""
    main, selection = report["task"]["main_metric"], report["selection_split"]
    dev = report["dev_splits"][0]
    named = report["profiles"]
    columns = [
        "rank",
        "teacher",
        "score",
        f"{selection}:{main}",
        f"{dev}:{main}",
        "ECE",
        "T",
        "agreement",
        "KL(T‖S)",
        "OOD",
        "params (M)",
        "layers",
        "ms/example",
        *[f"rank ({name})" for name in named],
    ]
    rows = []
    for position, slug in enumerate(report["ranking"]["order"], start=1):
        r = report["teachers"][slug]
        c = r["criteria"]
        rows.append(
            [
                str(position),
                slug,
                f"{report['ranking']['scores'][slug]:.3f}" if slug in report["ranking"]["scores"] else "—",
                _pct(c["task"]),
                _pct(r["task"]["dev"][dev][main]),
                _pct(c["calibration"]),
                f"{r['calibration']['temperature']:.2f}",
                _pct(c["agreement"]),
                f"{c['kl']:.3g}",
                _pct(c["ood"]),
                f"{r['capacity']['parameters'] / 1e6:.2f}",
                str(r["capacity"]["layers"]),
                f"{c['latency']:.2f}",
                *[str(named[name]["order"].index(slug) + 1) for name in named],
            ]
        )
    return columns, rows


def plain(columns: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [columns, *rows]) for i in range(len(columns))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, rows)])


def weighting_line(ranking: dict[str, Any]) -> str:
    parts = ", ".join(f"{c} {w:g}" for c, w in ranking["weights"].items())
    dropped = "".join(f"; {c} left out: {why}" for c, why in ranking["dropped"].items())
    return f"profile {ranking['profile']}: {parts}{dropped}"


def baseline_note(report: dict[str, Any]) -> str:
    """A warning when no candidate beats the majority-class baseline (all are then scored: the ranking says little)."""
    if any(t["baseline"]["beaten"] for t in report["teachers"].values()):
        return ""
    return (
        "No teacher beats always predicting the majority class of train′ on the selection split: all are "
        "scored, but none has shown that it has anything to teach (more data or teacher epochs?)."
    )


def markdown(report: dict[str, Any]) -> str:
    """audit.md: the ranked table, the weighting it used, what each column is, and what was left out and why."""
    columns, rows = table(report)
    budget, ood, main = report["budget"], report["ood_tasks"], report["task"]["main_metric"]
    lines = [
        f"# Teacher audit: {report['task']['name']}",
        "",
        f"Ranked by {weighting_line(report['ranking'])} (each criterion min-max normalised across the "
        "candidates, 1 = best; the score is the weighted mean).",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        f"Task metrics, ECE, agreement and KL are on the selection split `{report['selection_split']}` (dev is "
        "reported, never used); T is the temperature that minimises the teacher's NLL there. Agreement and KL "
        f"are those of a student distilled from the teacher for {budget['kd_epochs']} epoch(s) "
        f"({budget['student']}; KD with α = {budget['alpha']}, τ = {budget['temperature']}, no PKD term). "
        f"Latency: median over {budget['latency_batches']} timed batches of {budget['latency_batch_size']} "
        f"after {budget['latency_warmup']} warm-up batches, on {report['device']}.",
        "",
    ]
    for slug in report["ranking"]["unscored"]:
        base = report["teachers"][slug]["baseline"]
        lines.append(
            f"{slug} is not scored and comes last: its {report['task']['main_metric']} on the selection split is at "
            f"or below that of always predicting the majority class of train′ ({_pct(base['selection'][main])})."
        )
    note = baseline_note(report)
    if note:
        lines.append(note)
    if report["ranking"]["unscored"] or note:
        lines.append("")
    lines.append("OOD tasks: " + (", ".join(ood["measured"]) or "none"))
    lines += [f"- {name} left out: {why}" for name, why in ood["skipped"].items()]
    lines += ["", "## Per teacher", ""]
    for slug in report["ranking"]["order"]:
        r = report["teachers"][slug]
        cache = ", ".join(f"{p} {'from the cache' if c['cached'] else 'trained'}" for p, c in r["cache"].items())
        lines.append(
            f"- **{slug}** (`{r['name']}`, {r['source']} → {r['student']}): {cache}; {r['time']['total']:.1f} s."
        )
        if r["calibration"]["plot"]:
            lines.append(f"  ![reliability of {slug}]({r['calibration']['plot']})")
    if report["plots"].get("tradeoff"):
        lines += ["", f"![task metric vs agreement]({report['plots']['tradeoff']})"]
    return "\n".join(lines) + "\n"


def tradeoff_plot(path: Path, report: dict[str, Any]) -> Optional[Path]:
    """Each teacher's selection-split task metric against its budget student's agreement: the trade-off the two
    profiles weigh differently."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    for slug, r in report["teachers"].items():
        x, y = r["criteria"]["agreement"], r["criteria"]["task"]
        ax.scatter([x], [y])
        ax.annotate(slug, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"agreement of the budget student ({report['selection_split']})")
    ax.set_ylabel(f"teacher {report['task']['main_metric']} ({report['selection_split']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    plan: Any, records: dict[str, dict[str, Any]], out_dir: Path, overrides: list[str], seconds: float
) -> dict[str, Any]:
    """Rank, write audit.json and audit.md beside the plots, and log them (``logger=``)."""
    base, audit = plan.base, plan.base.audit
    first = plan.candidates[0].cfg
    for record in records.values():
        record["criteria"] = criteria(record)
    values = {slug: r["criteria"] for slug, r in records.items()}
    chosen, named = rankings(
        values, audit.profile, plan.weights, {s: r["baseline"]["beaten"] for s, r in records.items()}
    )
    any_record = next(iter(records.values()))
    dev = list(any_record["task"]["dev"])
    report: dict[str, Any] = {
        "task": {
            "name": plan.task.name,
            "kind": plan.task.kind,
            "label_names": plan.task.label_names,
            "main_metric": plan.task.main_metric,
        },
        "selection_split": any_record["calibration"]["fitted_on"],
        "dev_splits": dev,
        "budget": {
            "kd_epochs": audit.kd_epochs,
            "alpha": first.method.alpha,
            "temperature": first.method.temperature,
            "soft_loss": first.method.soft_loss,
            "student": first.model.student or "each teacher's first model.student_layers layers",
            "latency_batch_size": audit.latency_batch_size,
            "latency_warmup": audit.latency_warmup,
            "latency_batches": audit.latency_batches,
        },
        "ood_tasks": {"measured": plan.ood, "skipped": plan.ood_skipped},
        "criteria": {c.name: {"higher_is_better": c.higher_is_better, "meaning": c.meaning} for c in CRITERIA.values()},
        "weights": plan.weights,
        "ranking": chosen,
        "profiles": named,
        "teachers": records,
        "device": any_record["capacity"]["latency"]["device"],
        "overrides": list(overrides),
        "plots": {},
        "time": {"total": seconds},
    }
    plot = tradeoff_plot(out_dir / "audit_tradeoff.png", report)
    report["plots"] = {
        "tradeoff": plot.name if plot else None,
        **{f"reliability_{s}": r["calibration"]["plot"] for s, r in records.items()},
    }
    write_json(out_dir / "audit.json", report)
    write_text(out_dir / "audit.md", markdown(report))
    columns, rows = table(report)
    logger = build_logger(
        base.logger, OmegaConf.to_container(base, resolve=True), out_dir, f"audit-{plan.task.name}-s{base.seed}"
    )
    logger.table("audit/ranking", columns, rows)
    for name, file in report["plots"].items():
        if file:
            logger.image(f"audit/{name}", out_dir / file)
    logger.summary(
        {
            "audit/best": chosen["order"][0],
            **{
                f"audit/{slug}/{c}": v for slug, r in records.items() for c, v in r["criteria"].items() if v is not None
            },
            **{f"audit/{slug}/score": score for slug, score in chosen["scores"].items()},
        }
    )
    logger.finish()
    return report
