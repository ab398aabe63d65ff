"""Beyond the paper: student-frontier filtering of the soft term, and noisy teachers (docs/method.md).

Both ask when a student can beat its teacher. Filtering tests whether the student gains from leaving out
the teacher targets that lie furthest beyond what it can currently fit; the flip table of what was
filtered shows whether those are the teacher's mistakes. Noise makes the teacher wrong on purpose, by
corrupting the labels it is fine-tuned on or the soft targets it gives, so that a student that learns past
its teacher's errors can be told from one that copies them. Everything here is a pure function of tensors
(and a seeded generator); the phases apply it.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from mpdistil.config import ConfigError
from mpdistil.losses import kl_soft_loss_per_example

# The settings of phase 2's soft term (a distilled student depends on them) and of the teacher's labels (phase 1).
SOFT_TERM_FIELDS = ("method.frontier_filter", "method.frontier_keep", "method.frontier_warmup",
                    "method.frontier_mode", "method.teacher_noise", "method.teacher_noise_scale")
LABEL_NOISE_FIELDS = ("method.teacher_noise", "method.teacher_noise_rate")


def _task_kind(cfg: Any) -> str:
    from mpdistil.data.registry import get_task_spec

    return get_task_spec(cfg.task.name, cfg.task).kind


def check_frontier(cfg: Any) -> None:
    """Values of the frontier and logit-noise switches (the ones phase 2 reads)."""
    m = cfg.method
    if not 0.0 < m.frontier_keep <= 1.0:
        raise ConfigError(f"method.frontier_keep={m.frontier_keep} must lie in (0, 1]; e.g. method.frontier_keep=0.9")
    if m.frontier_warmup < 0:
        raise ConfigError(f"method.frontier_warmup={m.frontier_warmup} must be >= 0 (0: filter from the first epoch)")
    if m.teacher_noise_scale < 0:
        raise ConfigError(f"method.teacher_noise_scale={m.teacher_noise_scale} must be >= 0")
    if m.frontier_filter != "none" and _task_kind(cfg) == "regression":
        raise ConfigError(f"method.frontier_filter={m.frontier_filter} ranks class probabilities, and task "
                          f"{cfg.task.name} is a regression task; set method.frontier_filter=none")


def check_label_noise(cfg: Any) -> None:
    """Values of the label-flip switches (the ones phase 1 reads)."""
    m = cfg.method
    if not 0.0 <= m.teacher_noise_rate <= 1.0:
        raise ConfigError(f"method.teacher_noise_rate={m.teacher_noise_rate} must lie in [0, 1]; "
                          "e.g. method.teacher_noise_rate=0.1")
    if m.teacher_noise == "label_flip" and _task_kind(cfg) == "regression":
        raise ConfigError(f"method.teacher_noise=label_flip flips class labels, and task {cfg.task.name} is a "
                          "regression task; use method.teacher_noise=logit_gauss or none")


def count_of(fraction: float, n: int) -> int:
    """round(fraction · n), halves rounded up (robust to 1 − 0.9 not being 0.1 in floating point)."""
    return min(n, int(math.floor(fraction * n + 0.5 + 1e-9)))


# Noisy teachers -----------------------------------------------------------------------------------------

def flip_labels(labels: torch.Tensor, rate: float, num_classes: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``round(rate · n)`` labels, chosen uniformly without replacement, each moved to one of the other
    ``num_classes − 1`` classes uniformly; returns the new labels and the flipped positions (ascending)."""
    if num_classes < 2:
        raise ValueError(f"cannot flip labels among {num_classes} class")
    n = labels.numel()
    chosen = torch.randperm(n, generator=generator)[:count_of(rate, n)].sort().values
    shift = torch.randint(1, num_classes, (chosen.numel(),), generator=generator)
    flipped = labels.clone()
    flipped[chosen] = (labels[chosen] + shift) % num_classes
    return flipped, chosen


def logit_noise(shape: tuple[int, ...], scale: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise of std ``scale`` for every soft-target logit of a split, drawn once: row i is example i's,
    so each example keeps the same noisy target in every epoch."""
    return torch.randn(shape, generator=generator) * scale


# Student-frontier filtering -----------------------------------------------------------------------------

def student_prob_of_target(student_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """p_S(ŷ_T | x): the student's probability (temperature 1) of the label the targets predict, [N]."""
    predicted = target_logits.argmax(-1, keepdim=True)
    return F.softmax(student_logits.float(), dim=-1).gather(1, predicted).squeeze(1)


def frontier_scores(student_logits: torch.Tensor, target_logits: torch.Tensor, criterion: str,
                    temperature: float) -> torch.Tensor:
    """How far each example's target lies beyond the student, [N]; the highest are filtered first.

    ``student_prob``: −p_S(ŷ_T | x); ``kl_quantile``: KL(softmax(z_T/τ) ‖ softmax(z_S/τ)).
    """
    if criterion == "student_prob":
        return -student_prob_of_target(student_logits, target_logits)
    if criterion == "kl_quantile":
        return kl_soft_loss_per_example(student_logits, target_logits, temperature) / temperature ** 2
    raise ValueError(f"unknown frontier criterion {criterion!r}")


def frontier_select(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """The positions of the ``round((1 − keep) · N)`` highest scores (ties: the lower position first), ascending."""
    n = scores.numel()
    drop = count_of(1.0 - keep, n)
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:drop].sort().values


def flip_table(teacher_right: torch.Tensor, student_right: torch.Tensor) -> dict[str, int]:
    """Counts of a set of examples: teacher wrong / right, and the four cells of who gets the gold label."""
    t, s = teacher_right.bool(), student_right.bool()
    return {"n": int(t.numel()), "teacher_wrong": int((~t).sum()), "teacher_right": int(t.sum()),
            "both": int((t & s).sum()), "teacher_only": int((t & ~s).sum()),
            "student_only": int((~t & s).sum()), "neither": int((~t & ~s).sum())}


def filter_epoch(student_logits: torch.Tensor, target_logits: torch.Tensor, labels: torch.Tensor, criterion: str,
                 keep: float, mode: str, temperature: float) -> tuple[Optional[torch.Tensor], dict[str, Any]]:
    """One epoch's soft-term weights over train′ ([N]; None when nothing is filtered) and its record.

    ``drop`` gives the filtered examples weight 0; ``weight`` gives them p_S(ŷ_T | x) from the same
    predictions. The record's flip tables compare the targets' predicted label (the teacher's, or T′'s when it
    gives the targets) and the student's with the gold label, among the filtered and the kept examples.
    """
    student_logits, target_logits = student_logits.float().cpu(), target_logits.float().cpu()
    n = student_logits.shape[0]
    filtered = frontier_select(frontier_scores(student_logits, target_logits, criterion, temperature), keep)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[filtered] = True
    teacher_right = target_logits.argmax(-1) == labels.cpu()
    student_right = student_logits.argmax(-1) == labels.cpu()
    record = {"filtered": filtered.tolist(), "count": int(filtered.numel()), "n": n,
              "flip": {"filtered": flip_table(teacher_right[mask], student_right[mask]),
                       "kept": flip_table(teacher_right[~mask], student_right[~mask])}}
    if not filtered.numel():
        return None, record
    weights = torch.ones(n)
    if mode == "drop":
        weights[filtered] = 0.0
    else:
        weights[filtered] = student_prob_of_target(student_logits, target_logits)[filtered]
        record["weights"] = weights[filtered].tolist()
    return weights, record


class FrontierLog:
    """What filtering did over a phase: each filtered epoch's record and how often each train′ example was
    filtered. Plain containers only, so it rides in checkpoints and cache records."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []
        self.times_filtered: dict[str, int] = {}

    def add(self, epoch: int, record: dict[str, Any]) -> None:
        self.epochs.append({"epoch": epoch, **record})
        for i in record["filtered"]:
            self.times_filtered[str(i)] = self.times_filtered.get(str(i), 0) + 1

    def summary(self) -> dict[str, Any]:
        """The flip tables summed over the filtered epochs, and the teacher's error rate on each side."""
        out: dict[str, Any] = {}
        for side in ("filtered", "kept"):
            tables = [e["flip"][side] for e in self.epochs]
            total = {k: sum(t[k] for t in tables) for k in (tables[0] if tables else {})}
            out[side] = total
            out[f"teacher_error_rate_{side}"] = total["teacher_wrong"] / total["n"] if total.get("n") else None
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "times_filtered": self.times_filtered}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs, self.times_filtered = list(state["epochs"]), dict(state["times_filtered"])
