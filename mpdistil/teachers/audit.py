"""The teacher audit, in three steps: plan (every check, before any training), measure each candidate, rank.

A candidate is a model preset (``conf/model/<name>.yaml``) or a ``model.teacher`` source; its run config is the
audit's own (same command-line overrides, same validation) with ``method.phases=[teacher, kd]``: phase 1 fine-tunes
the teacher, or loads it from the teachers' cache when a run of the same identity made it, and the ``kd`` phase
distils a fresh student from it for ``audit.kd_epochs`` epochs (the fixed budget that measures approximation ease:
KD only, ``method.beta=0``, with the run's ``method.alpha``, ``method.temperature`` and ``method.soft_loss``).
"""

from __future__ import annotations

import gc
import itertools
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from mpdistil.config import ConfigError, cache_root, validate
from mpdistil.context import RunContext, TaskInfo
from mpdistil.data.encode import EncodedSplit, iterate, model_inputs
from mpdistil.data.types import DataError
from mpdistil.metrics.fidelity import TEMPERATURE_BOUNDS, brier, ece, fit_temperature, nll

CONF = Path(__file__).resolve().parents[2] / "conf"
AUDIT_PHASES = ("teacher", "kd")  # phase 1, then a fresh student distilled from the frozen teacher


@dataclass
class Candidate:
    """One teacher under audit: as named, the name of its files, and its run config."""

    name: str
    slug: str
    cfg: DictConfig


@dataclass
class Plan:
    """Everything checked before training: the candidates, the task, which partner tasks measure OOD accuracy."""

    base: DictConfig
    candidates: list[Candidate]
    task: TaskInfo
    ood: list[str]
    ood_skipped: dict[str, str]
    weights: dict[str, float]


def model_presets() -> list[str]:
    return sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def slug(name: str, taken: set[str]) -> str:
    """A file-name-safe, unique name for a candidate: a preset's name, a folder's last part, a source's name."""
    path = Path(name).expanduser()
    stem = path.name if path.is_dir() else name.split(":", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_.") or "teacher"
    out, n = base, 2
    while out in taken:
        out, n = f"{base}-{n}", n + 1
    taken.add(out)
    return out


def candidate_config(overrides: Sequence[str], name: str, preset: bool, budget: int, ood: list[str]) -> DictConfig:
    """The run config of one candidate: the audit's overrides with the candidate as the teacher.

    A preset replaces the ``model=`` group; a source becomes ``model.teacher`` of the configured model group and is
    loaded with its weights (``model.random_init`` and ``model.config_overrides`` shape the presets' random models).
    The logger is the audit's own, so candidates log nothing themselves.
    """
    from hydra import compose

    kept = [o for o in overrides if _key(o) != "logger" and not (preset and _key(o) == "model")]
    cfg = compose("config", overrides=[*kept, "logger=none", *([f"model={name}"] if preset else [])])
    if not preset:
        cfg.model.teacher = name
        cfg.model.random_init = False
        cfg.model.config_overrides = {}
    cfg.method.phases = list(AUDIT_PHASES)
    cfg.method.student_epochs = budget
    cfg.method.beta = 0.0
    cfg.eval.ood_tasks = list(ood)
    cfg.eval.attribution = "none"
    cfg.eval.write_test_predictions = False
    cfg.trainer.save_student = False
    cfg.trainer.save_teacher = False
    cfg.resume = False
    return cfg


def ood_plan(cfg: DictConfig, info: TaskInfo, cache_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The partner tasks (``eval.ood_tasks``, else ``task.partners``) whose labels are the main task's; the others
    with the reason they are left out."""
    from mpdistil.data.prepare import label_scheme_mismatch
    from mpdistil.data.registry import load_task, task_config_for

    keep: list[str] = []
    skipped: dict[str, str] = {}
    for name in dict.fromkeys(list(cfg.eval.ood_tasks) or list(cfg.task.partners)):
        if name == info.name:
            continue
        try:
            tcfg = task_config_for(name, max_length=cfg.task.max_length, max_eval_examples=cfg.task.max_eval_examples)
            why = label_scheme_mismatch(load_task(tcfg, cfg.data_dir, cache_dir), info)
        except DataError as exc:
            why = f"not loaded: {str(exc).splitlines()[0]}"
        if why:
            skipped[name] = why
        else:
            keep.append(name)
    return keep, skipped


def check_teacher(name: str, cfg: DictConfig, task: TaskInfo, presets: list[str]) -> None:
    """A candidate that cannot be loaded for this task, refused before any training: an unknown name, a head with
    another number of outputs, fewer layers than the student takes. Reads the model's config only (a split-wheel
    model not fetched yet is checked when it loads)."""
    from mpdistil.models import pypi_split
    from mpdistil.models.loading import load_config, resolve_model_source

    m = cfg.model
    source = resolve_model_source(m.teacher, cfg.cache_dir)[0]
    if pypi_split.pending_split_model(source) is not None:
        return
    try:
        config = load_config(source, **(dict(m.config_overrides) if m.random_init else {}))
    except ConfigError as exc:
        if name in presets:
            raise
        why = str(exc).partition("(")[2].partition(")")[0] or str(exc)
        raise ConfigError(
            f"unknown teacher {name!r}: not a model preset ({', '.join(presets)}), not an existing "
            f"folder, package: or pypi-split: source, and not on the HF hub ({why}); fix the name in "
            "teachers=[...]"
        ) from None
    head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    if head and not m.random_init and config.num_labels != task.num_outputs:
        raise ConfigError(
            f"teacher {name!r} has a classification head with {config.num_labels} outputs but task "
            f"{task.name} needs {task.num_outputs} ({', '.join(task.label_names)}); give its encoder "
            "without the head (save_pretrained of its base model) or a teacher made for these labels"
        )
    if not m.student and m.student_layers and m.student_layers > config.num_hidden_layers:
        raise ConfigError(
            f"teacher {name!r} has {config.num_hidden_layers} layers, fewer than "
            f"model.student_layers={m.student_layers}; set model.student_layers<="
            f"{config.num_hidden_layers} or name one student for all with model.student=<source>"
        )


def plan_audit(overrides: Sequence[str]) -> Plan:
    """Compose the audit's config and each candidate's, and run every check that needs no training."""
    from hydra import compose

    from mpdistil.data.prepare import task_info
    from mpdistil.data.registry import load_task
    from mpdistil.run import preflight
    from mpdistil.teachers.ranking import given_weights, resolve_weights

    base = compose("config", overrides=list(overrides))
    validate(base)
    teachers = list(base.audit.teachers)
    if not teachers:
        raise ConfigError(
            "no teachers to audit; name them, e.g. teachers=[minilm,mpnet_base] (model presets, "
            "save_pretrained folders, package:, pypi-split: or hub names)"
        )
    twice = next((t for i, t in enumerate(teachers) if t in teachers[:i]), None)
    if twice is not None:
        raise ConfigError(f"teacher {twice!r} is named twice in teachers=[...]; name each candidate once")
    if base.trainer.selection_split not in ("heldout", "quiz"):
        raise ConfigError(
            f"trainer.selection_split={base.trainer.selection_split}: the audit fits temperatures "
            "and ranks on a split that no model trains on and that is not reported; use "
            "trainer.selection_split=heldout (or quiz)"
        )
    if base.method.alpha <= 0:
        raise ConfigError(
            f"method.alpha={base.method.alpha} leaves the audit's distillation without its soft term, "
            "so it cannot measure how well a student follows a teacher; set e.g. method.alpha=0.5"
        )
    cache = cache_root(base.cache_dir)
    task = task_info(load_task(base.task, base.data_dir, cache), base.task)
    if task.kind == "regression":
        raise ConfigError(
            f"task {task.name} is a regression task; the audit compares class probabilities "
            "(calibration, KL), so it needs a classification or multiple-choice task"
        )
    ood, skipped = ood_plan(base, task, cache)
    weights = resolve_weights(base.audit.profile, given_weights(base.audit))
    if not ood and not any(w > 0 for c, w in weights.items() if c != "ood"):
        raise ConfigError(
            f"the weighting weighs only ood, but no partner task has {task.name}'s labels "
            f"({skipped}); weigh other criteria, e.g. audit.weights.task=1"
        )
    presets = model_presets()
    taken: set[str] = set()
    candidates = []
    for name in teachers:
        cfg = candidate_config(overrides, name, name in presets, base.audit.kd_epochs, ood)
        preflight(cfg)
        check_teacher(name, cfg, task, presets)
        candidates.append(Candidate(name, slug(name, taken), cfg))
    return Plan(base, candidates, task, ood, skipped, weights)


@torch.inference_mode()
def measure_latency(ctx: RunContext, split: EncodedSplit, batch_size: int, warmup: int, timed: int) -> dict[str, Any]:
    """Inference time per example of the teacher on the run's device: ``warmup`` untimed batches, then the median
    over ``timed`` batches of (batch time / examples), on fixed batches of the split's first examples in order
    (the same examples for every candidate, each in its own encoding)."""
    rt, teacher = ctx.rt, ctx.teacher
    was = teacher.training
    teacher.eval()
    pad = rt.pad_id if split.pad_id is None else split.pad_id
    first = list(itertools.islice(iterate(split, batch_size, pad, device=rt.device), warmup + timed))
    batches = list(itertools.islice(itertools.cycle(first), warmup + timed))
    per_example = []
    try:
        for i, batch in enumerate(batches):
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with rt.autocast():
                teacher(**model_inputs(batch))
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                per_example.append((time.perf_counter() - start) / batch["input_ids"].shape[0])
    finally:
        teacher.train(was)
    return {
        "ms_per_example": 1000 * statistics.median(per_example),
        "batch_size": batch_size,
        "warmup_batches": warmup,
        "timed_batches": timed,
        "split": split.name,
        "device": str(rt.device),
        "precision": rt.precision,
        "threads": torch.get_num_threads(),
    }


def calibration(
    logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], selection: str, dev: list[str]
) -> dict[str, Any]:
    """ECE, Brier and NLL on the selection split and each dev split, before and after dividing the logits by the
    temperature fitted on the selection split (never on dev: dev shows whether the fitted temperature carries over)."""
    temperature = fit_temperature(logits[selection], labels[selection])

    def scores(split: str) -> dict[str, float]:
        z, y = logits[split], labels[split]
        raw, scaled = torch.softmax(z, -1), torch.softmax(z / temperature, -1)
        return {
            "ece": ece(raw, y),
            "brier": brier(raw, y),
            "nll": nll(z, y),
            "ece_scaled": ece(scaled, y),
            "brier_scaled": brier(scaled, y),
            "nll_scaled": nll(z, y, temperature),
        }

    return {
        "temperature": temperature,
        # the search stopped at a bound (e.g. a split the teacher gets all right): T says only "at least/most this"
        "temperature_at_bound": bool(any(np.isclose(temperature, b, rtol=1e-3) for b in TEMPERATURE_BOUNDS)),
        "fitted_on": selection,
        "selection": scores(selection),
        "dev": {s: scores(s) for s in dev},
    }


def measure(candidate: Candidate, out_dir: Path) -> dict[str, Any]:
    """Fine-tune (or load) one teacher, distil the budget student from it, and measure both."""
    from mpdistil.context import build_context
    from mpdistil.data.prepare import prepare_data
    from mpdistil.evaluation import evaluate_ood, evaluate_row, reliability_plot
    from mpdistil.groups import phase_groups, run_group, settle_teacher
    from mpdistil.models.agent import count_parameters
    from mpdistil.seeding import seed_everything

    cfg, folder = candidate.cfg, out_dir / candidate.slug
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    cache_dir = cache_root(cfg.cache_dir)
    data = prepare_data(cfg, folder, cache_dir, [])
    ctx = build_context(cfg, data, folder, cache_dir)
    selection, dev = ctx.selection_split, [s for s in ctx.dev_names if ctx.splits[s].labels is not None]
    splits = [selection, *dev]
    groups = phase_groups(cfg)
    for index, group in enumerate(groups):
        settle_teacher(ctx, groups, index)
        with ctx.timed("+".join(group)):
            produced = run_group(ctx, group, index)
        with ctx.timed("evaluation"):
            for phase in produced:
                ctx.rows[phase.row.name] = evaluate_row(ctx, phase, splits)
    with ctx.timed("measures"):
        logits = {s: ctx.teacher_cache(s)["logits"] for s in splits}
        labels = {s: ctx.splits[s].labels for s in splits}
        calib = calibration(logits, labels, selection, dev)
        t = calib["temperature"]
        plot = reliability_plot(
            out_dir / f"reliability_{candidate.slug}.png",
            {
                f"{candidate.slug} ({dev[0]})": (torch.softmax(logits[dev[0]], -1).numpy(), labels[dev[0]].numpy()),
                f"{candidate.slug}, T={t:.2f}": (torch.softmax(logits[dev[0]] / t, -1).numpy(), labels[dev[0]].numpy()),
            },
        )
        calib["plot"] = plot.name if plot else None
        ood = evaluate_ood(ctx, {"teacher": ctx.teacher}, data.ood, ctx.rows, data.teacher_ood) if data.ood else {}
        a = cfg.audit
        latency = measure_latency(
            ctx, ctx.teacher_splits[dev[0]], a.latency_batch_size, a.latency_warmup, a.latency_batches
        )
    fidelity = ctx.records.get("fidelity", {}).get("kd_vs_teacher", {})
    keys = ("agreement", "kl_teacher_student", "js")
    student = ctx.agents["kd"]

    baseline = majority_baseline(ctx, selection)

    def both(values: dict[str, Any]) -> dict[str, Any]:
        return {"selection": values[selection], "dev": {s: values[s] for s in dev}}

    record = {
        "name": candidate.name,
        "source": ctx.sources["teacher"],
        "student": ctx.sources["student"],
        "task": {"main_metric": ctx.task.main_metric, **both(ctx.rows["teacher"])},
        "baseline": {
            **baseline,
            "beaten": ctx.rows["teacher"][selection][ctx.task.main_metric]
            > baseline["selection"][ctx.task.main_metric],
        },
        "calibration": calib,
        "ood": {task: per["teacher"] for task, per in ood.items()},
        "capacity": {
            "parameters": count_parameters(ctx.teacher.hf),
            "layers": ctx.teacher.num_layers,
            "hidden": ctx.teacher.layer_width,
            "student_parameters": count_parameters(student.hf),
            "student_layers": student.num_layers,
            "latency": latency,
        },
        "ease": {
            "budget_epochs": cfg.method.student_epochs,
            "steps": _steps(ctx),
            "alpha": cfg.method.alpha,
            "temperature": cfg.method.temperature,
            "soft_loss": cfg.method.soft_loss,
            **both({s: {k: fidelity[s][k] for k in keys} for s in splits}),
            "student_task": both(ctx.rows["kd"]),
        },
        "cache": {
            phase: {
                "cached": bool(ctx.records.get(phase, {}).get("cached")),
                "entry": ctx.records.get(phase, {}).get("cache"),
            }
            for phase in AUDIT_PHASES
        },
        "folder": candidate.slug,
        "time": {**ctx.timings, "total": time.perf_counter() - start},
    }
    ctx.logger.finish()
    del ctx, data
    gc.collect()
    return record


def majority_baseline(ctx: RunContext, split: str) -> dict[str, Any]:
    """Always predicting train′'s most frequent class (the lowest index among equals), scored on ``split``: a teacher
    must beat it to have anything to teach."""
    from mpdistil.metrics.task_metrics import compute_metrics

    majority = int(torch.bincount(ctx.splits["train"].labels.long()).argmax())
    gold = ctx.splits[split].labels.numpy()
    return {
        "majority_class": majority,
        "selection": compute_metrics(ctx.task.metrics, np.full_like(gold, majority), gold),
    }


def _steps(ctx: RunContext) -> int:
    """Optimizer steps of the budget on train′ (a transfer split, if any, adds its own batches)."""
    size = ctx.cfg.trainer.batch_size
    return int(np.ceil(len(ctx.splits["train"]) / size)) * int(ctx.cfg.method.student_epochs)


def criteria(record: dict[str, Any]) -> dict[str, Optional[float]]:
    """The ranking's inputs of one measured teacher (:data:`mpdistil.teachers.ranking.CRITERIA`)."""
    main = record["task"]["main_metric"]
    ood = [m[main] for m in record["ood"].values()]
    return {
        "task": record["task"]["selection"][main],
        "calibration": record["calibration"]["selection"]["ece"],
        "agreement": record["ease"]["selection"]["agreement"],
        "kl": record["ease"]["selection"]["kl_teacher_student"],
        "ood": float(np.mean(ood)) if ood else None,
        "latency": record["capacity"]["latency"]["ms_per_example"],
        "size": float(record["capacity"]["parameters"]),
    }


def run_audit(overrides: Sequence[str], out_dir: Path) -> dict[str, Any]:
    """The whole audit: every check first, then each candidate in turn, then the ranking and its files."""
    from mpdistil.teachers.report import plain, table, weighting_line, write_report

    start = time.perf_counter()
    plan = plan_audit(overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = {}
    for i, candidate in enumerate(plan.candidates, start=1):
        print(f"[audit] teacher {i}/{len(plan.candidates)}: {candidate.name}", flush=True)
        record = records[candidate.slug] = measure(candidate, out_dir)
        cached = [phase for phase, entry in record["cache"].items() if entry["cached"]]
        print(
            f"[audit] {candidate.name}: {record['time']['total']:.1f}s"
            + (f" ({', '.join(cached)} from the cache)" if cached else ""),
            flush=True,
        )
    report = write_report(plan, records, out_dir, list(overrides), time.perf_counter() - start)
    print("\n" + plain(*table(report)), flush=True)
    print(f"\nranked by {weighting_line(report['ranking'])}", flush=True)
    print(f"[audit] {out_dir / 'audit.json'}, {out_dir / 'audit.md'}", flush=True)
    return report
