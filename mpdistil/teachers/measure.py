"""Measuring one candidate teacher: fine-tuned (or cached) by phase 1, followed by the budget student of the ``kd``
phase, then its calibration, out-of-domain metrics, capacity and latency, beside the majority-class baseline."""

from __future__ import annotations

import gc
import itertools
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from mpdistil.config import cache_root
from mpdistil.context import RunContext
from mpdistil.data.encode import EncodedSplit, iterate, model_inputs
from mpdistil.metrics.fidelity import TEMPERATURE_BOUNDS, brier, ece, fit_temperature, nll
from mpdistil.teachers.plan import AUDIT_PHASES, Candidate


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
    full = [b for b in first if b["input_ids"].shape[0] == batch_size] or first  # a split's short tail only if alone
    batches = list(itertools.islice(itertools.cycle(full), warmup + timed))
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
        t, shown, gold = calib["temperature"], logits[dev[0]], labels[dev[0]].numpy()
        curves = {
            f"{candidate.slug} on {dev[0]}": (torch.softmax(shown, -1).numpy(), gold),
            f"{candidate.slug} on {dev[0]}, logits / {t:.2f} (T from {selection})": (
                torch.softmax(shown / t, -1).numpy(),
                gold,
            ),
        }
        plot = reliability_plot(out_dir / f"reliability_{candidate.slug}.png", curves)
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
