"""Everything measured about an agent after the phase that produced it.

Task metrics on every labelled split; for student rows also fidelity to the teacher and to the
meta-teacher (agreement, KL, JS, ECE, Brier, flip table), attribution similarity to the teacher
on a sample, and the same agents on out-of-domain tasks (``eval.ood_tasks``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from mpdistil.data.encode import EncodedSplit, collate, to_device, token_words
from mpdistil.metrics.attribution import mean_attribution_similarity, mean_word_attribution_similarity
from mpdistil.metrics.fidelity import classification_fidelity, regression_fidelity, reliability_bins
from mpdistil.metrics.task_metrics import compute_metrics
from mpdistil.phases import Phase
from mpdistil.training import predict, predictions_from_logits


def example_predictions(logits: torch.Tensor, kind: str) -> list:
    """Predicted class per example (a rounded score for regression): what a paired comparison resamples."""
    preds = predictions_from_logits(logits, kind)
    return [round(float(v), 5) for v in preds] if kind == "regression" else [int(v) for v in preds]


def compare(reference: torch.Tensor, other: torch.Tensor, labels: Optional[torch.Tensor], kind: str) -> dict:
    """Fidelity of ``other`` (a student) to ``reference`` (teacher or meta-teacher) from their logits."""
    y = None if labels is None else labels.numpy()
    if kind == "regression":
        return regression_fidelity(reference.numpy(), other.numpy(), y)
    return classification_fidelity(torch.softmax(reference, -1).numpy(), torch.softmax(other, -1).numpy(), y)


def flip_rows(split: EncodedSplit, teacher: torch.Tensor, student: torch.Tensor, label_names: list[str],
              kind: str, limit: int = 200) -> list[list[Any]]:
    """Examples where exactly one of teacher and student is right, with their text (for a W&B table)."""
    if kind == "regression" or split.labels is None:
        return []
    t, s, y = teacher.argmax(-1), student.argmax(-1), split.labels
    name = lambda i: label_names[i] if i < len(label_names) else str(i)  # noqa: E731
    rows = []
    for i in torch.nonzero((t == y) != (s == y)).flatten().tolist()[:limit]:
        texts = split.examples[i].texts if split.examples else ""
        rows.append(["student only" if s[i] == y[i] else "teacher only", str(split.examples[i].uid if split.examples
                                                                             else i),
                     " || ".join(map(str, texts))[:500], name(int(y[i])), name(int(t[i])), name(int(s[i]))])
    return rows


def paired_attributions(teacher: torch.nn.Module, student: torch.nn.Module, teacher_split: EncodedSplit,
                        student_split: EncodedSplit, idx: list[int], device: torch.device, method: str, steps: int,
                        top_k: int, tokenizers: tuple[Any, Any] = (None, None), max_length: int = 128,
                        pad_id: int = 0) -> dict[str, Any]:
    """Attribution similarity of ``student`` to ``teacher`` (HF classifiers) on the examples ``idx`` of a split.

    One encoding (``teacher_split is student_split``): token by token. Two encodings of the same examples (different
    tokenizers): each model's token attributions are summed over the whitespace-separated words of the text and
    compared word by word (``attr_unit: word``); ``tokenizers`` (teacher's, student's) find each token's word. A
    tokenizer that cannot give them (no character offsets), or no longer encodes the text as the split holds it,
    leaves the measure out with the reason (``attr_skipped``).
    """
    def batch_of(split: EncodedSplit) -> dict[str, Any]:
        return to_device(collate(split, idx, pad_id if split.pad_id is None else split.pad_id), device)

    if teacher_split is student_split:
        batch = batch_of(student_split)
        return mean_attribution_similarity(teacher, student, batch["input_ids"], batch["attention_mask"],
                                           batch.get("token_type_ids"), method=method, steps=steps, top_k=top_k)
    pair = any(len(ex.texts) > 1 for ex in student_split.examples)
    words: dict[str, torch.Tensor] = {}
    sides = (("teacher", teacher_split, tokenizers[0]), ("student", student_split, tokenizers[1]))
    for side, split, tokenizer in sides:
        rows = []
        for i in idx:
            found = token_words(tokenizer, split.examples[i].texts, max_length, pair) if tokenizer is not None else None
            if found is None:
                return {"attr_skipped": f"teacher and student read different tokenizers and the {side}'s "
                                        f"({type(tokenizer).__name__}) gives no character offsets, so its token "
                                        "attributions cannot be summed into the words they are compared on"}
            if found[0] != list(split.input_ids[i]):
                return {"attr_skipped": f"the {side}'s tokenizer does not encode {split.task}/{split.name} example "
                                        f"{i} as the run read it, so its tokens cannot be matched to words"}
            rows.append(found[1])
        width = max(len(r) for r in rows)
        words[side] = torch.tensor([r + [-1] * (width - len(r)) for r in rows])
    inputs = {side: {k: v for k, v in batch_of(split).items() if k in ("input_ids", "attention_mask", "token_type_ids")}
              for side, split in (("teacher", teacher_split), ("student", student_split))}
    report = mean_word_attribution_similarity(teacher, inputs["teacher"], words["teacher"], student, inputs["student"],
                                              words["student"], method=method, steps=steps, top_k=top_k)
    return {**report, "attr_unit": "word"}


def attribution_report(ctx: Any, student: torch.nn.Module, split_name: str) -> dict[str, Any]:
    """Attribution similarity of student and teacher on a seeded sample of one split (:func:`paired_attributions`)."""
    ev = ctx.cfg.eval
    split = ctx.splits[split_name]
    if ev.attribution == "none" or split.kind == "multiple_choice" or len(split) == 0:
        return {}
    g = torch.Generator().manual_seed(int(ctx.cfg.seed))
    idx = torch.randperm(len(split), generator=g)[: ev.attribution_examples].tolist()
    report = paired_attributions(ctx.teacher.hf, student.hf, ctx.teacher_splits[split_name], split, idx, ctx.rt.device,
                                 ev.attribution, ev.ig_steps, ev.top_k,
                                 (ctx.tokenizers.get("teacher"), ctx.tokenizers.get("student")),
                                 ctx.cfg.task.max_length, ctx.rt.pad_id)
    return {**report, "attr_method": ev.attribution, "attr_split": split_name}


def reliability_plot(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> Optional[Path]:
    """Reliability diagram (accuracy vs confidence per bin) for several agents on one split."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for name, (probs, labels) in curves.items():
        bins = reliability_bins(probs, labels)
        keep = bins["counts"] > 0
        ax.plot(bins["confidence"][keep], bins["accuracy"][keep], marker="o", label=name)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def histogram_plot(path: Path, values: list[float], title: str) -> Optional[Path]:
    finite = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    if not finite:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.hist(finite, bins=20, range=(-1, 1))
    ax.set_xlabel("Spearman ρ of token attributions")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate_row(ctx: Any, phase: Phase, splits: list[str]) -> dict[str, Any]:
    """Task metrics of the row a phase produced on every labelled split, plus fidelity if it is a student."""
    kind, row = ctx.task.kind, phase.row.name
    logits = {s: phase.row_logits(ctx, s) for s in splits}
    metrics = {s: ctx.metrics_from_logits(logits[s], s) for s in splits}
    ctx.predictions[row] = {s: example_predictions(logits[s], kind) for s in splits if s in ctx.dev_names}
    if not phase.row.student or "teacher" not in ctx.lineage:
        return metrics  # fidelity to an untrained teacher would mean nothing
    agent = phase.row_agent(ctx)
    fidelity = ctx.records.setdefault("fidelity", {})
    vs_teacher, vs_meta = {}, {}
    for s in splits:
        labels = ctx.splits[s].labels
        teacher_logits = ctx.teacher_cache(s)["logits"]
        vs_teacher[s] = compare(teacher_logits, logits[s], labels, kind)
        if "meta_teacher" in ctx.agents:
            vs_meta[s] = compare(ctx.meta_teacher_logits(s), logits[s], labels, kind)
        ctx.logger.log(f"fidelity_{row}", 0, {f"{s}/{k}": v for k, v in vs_teacher[s].items()})
    first = ctx.dev_names[0] if ctx.dev_names[0] in splits else splits[0]
    attr = attribution_report(ctx, agent, first)
    if attr:
        per_example = attr.pop("attr_spearman_per_example", None)
        vs_teacher[first].update(attr)
        plot = histogram_plot(ctx.out_dir / f"attribution_{row}.png", per_example, f"{row} vs teacher ({first})") \
            if per_example is not None else None
        if plot:
            ctx.logger.image(f"fidelity_{row}/attribution_hist", plot)
    fidelity[f"{row}_vs_teacher"] = vs_teacher
    if vs_meta:
        fidelity[f"{row}_vs_meta_teacher"] = vs_meta
    if ctx.further_teachers:  # against each further teacher, and against the mixture this row distilled from
        owner = phase.trains[0] if phase.trains else "student"
        for name in ctx.further_teachers:
            fidelity[f"{row}_vs_{name}"] = {s: compare(ctx.teacher_cache(s, name)["logits"], logits[s],
                                                       ctx.splits[s].labels, kind) for s in splits}
        fidelity[f"{row}_vs_teacher_mix"] = {s: compare(ctx.mixed_teacher_logits(s, owner=owner), logits[s],
                                                        ctx.splits[s].labels, kind) for s in splits}
    if kind != "regression":
        labels = ctx.splits[first].labels
        curves = {"teacher": (torch.softmax(ctx.teacher_cache(first)["logits"], -1).numpy(), labels.numpy()),
                  row: (torch.softmax(logits[first], -1).numpy(), labels.numpy())}
        plot = reliability_plot(ctx.out_dir / f"reliability_{row}.png", curves)
        if plot:
            ctx.logger.image(f"fidelity_{row}/reliability", plot)
        ctx.logger.table(f"fidelity_{row}/flips", ["who is right", "uid", "text", "label", "teacher", row],
                         flip_rows(ctx.splits[first], ctx.teacher_cache(first)["logits"], logits[first],
                                   ctx.task.label_names, kind))
    return metrics


def evaluate_ood(ctx: Any, agents: dict[str, torch.nn.Module], ood: dict[str, EncodedSplit],
                 in_domain: dict[str, dict[str, dict[str, float]]],
                 teacher_ood: Optional[dict[str, EncodedSplit]] = None) -> dict[str, Any]:
    """Each final agent on other tasks with the same label scheme, and its in-domain minus OOD gap. ``teacher_ood``:
    the teacher's encoding of the same tasks, read by the teacher when its tokenizer differs from the student's."""
    out: dict[str, Any] = {}
    main = ctx.task.main_metric
    home = ctx.dev_names[0]
    for task, split in ood.items():
        per_agent = {}
        for row, agent in agents.items():
            own = teacher_ood[task] if teacher_ood is not None and getattr(agent, "view", "") == "teacher" else split
            preds = predictions_from_logits(predict(agent, own, ctx.rt)["logits"], ctx.task.kind)
            m = compute_metrics(ctx.task.metrics, preds.numpy(), split.labels.numpy())
            gap = in_domain.get(row, {}).get(home, {}).get(main)
            per_agent[row] = {**m, "gap": (gap - m[main]) if gap is not None else None}
        out[task] = per_agent
    return out
