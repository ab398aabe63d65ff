"""Every loss and reward of the method as a pure function of tensors (docs/method.md gives the equations).

``kind`` is the task kind: "classification" and "multiple_choice" use class/choice logits
[B, C]; "regression" uses predictions [B]. For regression, p(y|x) is replaced by −|y − ŷ|.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

LOSSES: dict[str, Callable[..., torch.Tensor]] = {}
# The same losses, one value per example ([B]): a weighted soft term (method.frontier_mode) needs them.
PER_EXAMPLE_LOSSES: dict[str, Callable[..., torch.Tensor]] = {}


def register_loss(name: str) -> Callable:
    """Soft (teacher → student) losses are selectable by name: ``method.soft_loss=<name>``."""

    def wrap(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        LOSSES[name] = fn
        return fn

    return wrap


def register_per_example_loss(name: str) -> Callable:
    """The per-example form of soft loss ``name``, whose mean over the batch is the loss itself."""

    def wrap(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        PER_EXAMPLE_LOSSES[name] = fn
        return fn

    return wrap


@register_loss("kl")
def kl_soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: τ² · KL(softmax(t/τ) ‖ softmax(s/τ)), averaged over the batch."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature ** 2 * F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")


@register_per_example_loss("kl")
def kl_soft_loss_per_example(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                             temperature: float) -> torch.Tensor:
    """τ² · KL(softmax(t/τ) ‖ softmax(s/τ)) of each example, [B]: its batch mean is :func:`kl_soft_loss`."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature ** 2 * F.kl_div(log_p_s, log_p_t, log_target=True, reduction="none").sum(-1)


@register_loss("mse")
def prob_mse_soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """The authors' code (from MetaDistil): τ² · MSE between the two tempered probability vectors."""
    p_s = F.softmax(student_logits.float() / temperature, dim=-1)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature ** 2 * F.mse_loss(p_s, p_t)


@register_per_example_loss("mse")
def prob_mse_soft_loss_per_example(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                                   temperature: float) -> torch.Tensor:
    """τ² · mean over classes of the squared difference of tempered probabilities, [B]: its batch mean is
    :func:`prob_mse_soft_loss`."""
    p_s = F.softmax(student_logits.float() / temperature, dim=-1)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature ** 2 * ((p_s - p_t) ** 2).mean(-1)


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, kind: str,
              name: str = "kl") -> torch.Tensor:
    if kind == "regression":
        return F.mse_loss(student_logits.float(), teacher_logits.float())
    return LOSSES[name](student_logits, teacher_logits, temperature)


def soft_loss_per_example(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                          kind: str, name: str = "kl") -> torch.Tensor:
    """Each example's soft loss, [B]; its batch mean is :func:`soft_loss`. A loss registered without a per-example
    form is evaluated on each example alone, which is exact for a loss that averages over the batch."""
    if kind == "regression":
        return (student_logits.float() - teacher_logits.float()) ** 2
    if name in PER_EXAMPLE_LOSSES:
        return PER_EXAMPLE_LOSSES[name](student_logits, teacher_logits, temperature)
    return torch.stack([LOSSES[name](student_logits[i:i + 1], teacher_logits[i:i + 1], temperature)
                        for i in range(student_logits.shape[0])])


def hard_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "regression":
        return F.mse_loss(logits.float(), labels.float())
    return F.cross_entropy(logits.float(), labels)


def layer_map(n_student: int, n_teacher: int, how: str) -> list[tuple[int, int]]:
    """Pairs (student layer, teacher layer), 1-indexed over transformer layers.

    skip: PKD-skip, student l ↔ teacher l·(Lt // Ls); first: l ↔ l (the authors' code);
    last: l ↔ Lt − Ls + l (PKD-last).
    """
    if n_student > n_teacher:
        raise ValueError(f"student has {n_student} layers, more than the teacher's {n_teacher}")
    if how == "skip":
        step = n_teacher // n_student
        return [(s, s * step) for s in range(1, n_student + 1)]
    if how == "first":
        return [(s, s) for s in range(1, n_student + 1)]
    if how == "last":
        return [(s, n_teacher - n_student + s) for s in range(1, n_student + 1)]
    raise ValueError(f"unknown layer map {how!r}")


def pkd_loss(student_cls: Sequence[torch.Tensor], teacher_cls: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_l MSE between L2-normalised [CLS] vectors of paired layers (Sun et al., 2019)."""
    total = student_cls[0].new_zeros((), dtype=torch.float32)
    for h_s, h_t in zip(student_cls, teacher_cls):
        total = total + F.mse_loss(F.normalize(h_s.float(), dim=-1), F.normalize(h_t.float(), dim=-1))
    return total


def distillation_loss(student_logits: torch.Tensor, teacher_logits: Optional[torch.Tensor],
                      labels: Optional[torch.Tensor], kind: str, alpha: float, temperature: float, soft: str = "kl",
                      beta: float = 0.0, student_cls: Optional[Sequence[torch.Tensor]] = None,
                      teacher_cls: Optional[Sequence[torch.Tensor]] = None,
                      soft_weights: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, float]]:
    """L_S = α·soft + (1 − α)·CE + β·PKD; α = 0 and β = 0 give the undistilled student.

    ``soft_weights`` ([B]) weigh each example's soft term: soft = Σ_i w_i·D_i / B, so a weight of 0 removes an
    example's soft term without changing the others', and unit weights give the batch mean. Without ``labels``
    (inputs only the teacher labels) the hard-label term is left out: α·soft + β·PKD.
    """
    total = student_logits.new_zeros(())
    parts: dict[str, float] = {}
    if labels is not None:
        ce = hard_loss(student_logits, labels, kind)
        total = (1.0 - alpha) * ce
        parts["ce"] = float(ce.detach())
    if alpha > 0 and teacher_logits is not None:
        if soft_weights is None:
            kd = soft_loss(student_logits, teacher_logits, temperature, kind, soft)
        else:
            per_example = soft_loss_per_example(student_logits, teacher_logits, temperature, kind, soft)
            kd = (per_example * soft_weights.to(per_example)).sum() / per_example.shape[0]
        total = total + alpha * kd
        parts["kd"] = float(kd.detach())
    if beta > 0 and student_cls is not None and teacher_cls is not None:
        pkd = pkd_loss(student_cls, teacher_cls)
        total = total + beta * pkd
        parts["pkd"] = float(pkd.detach())
    return total, parts


def label_score(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-example p(y|x); for regression the negated absolute error −|y − ŷ|."""
    if kind == "regression":
        return -(labels.float() - logits.float()).abs()
    return F.softmax(logits.float(), dim=-1).gather(1, labels.view(-1, 1)).squeeze(1)


def collaborative_loss(meta_on_teacher: torch.Tensor, meta_on_student: torch.Tensor, labels: torch.Tensor,
                       kind: str) -> torch.Tensor:
    """L_col = ½·CE(T'(h_T), y) + ½·CE(T'(h_S), y): T' must serve both agents' representations."""
    return 0.5 * hard_loss(meta_on_teacher, labels, kind) + 0.5 * hard_loss(meta_on_student, labels, kind)


def competitive_loss(meta_on_teacher: torch.Tensor, meta_on_student: torch.Tensor, labels: torch.Tensor,
                     kind: str) -> torch.Tensor:
    """L_com = CE(T'(h_T), y) − mean p(y|h_T) + mean p(y|h_S): confident on the teacher, not the student."""
    return (hard_loss(meta_on_teacher, labels, kind) - label_score(meta_on_teacher, labels, kind).mean()
            + label_score(meta_on_student, labels, kind).mean())


META_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"col": collaborative_loss, "com": competitive_loss}


def curriculum_student_loss(student_logits: torch.Tensor, labels: torch.Tensor, kind: str,
                            meta_on_student: Optional[torch.Tensor] = None, form: str = "mpdistil",
                            meta_grad: bool = True) -> torch.Tensor:
    """Phase 4: CE(z_S, y) − mean p_S(y|x) + mean p_T'(y|h_S); the T' term only where T' knows the task.

    ``form="ce"`` is plain CE, the control that keeps the curriculum's steps but not its loss.
    ``meta_grad=False`` makes the T' term a constant, as the authors' code computes it: it shifts the
    loss value but adds nothing to the gradient.
    """
    if form == "ce":
        return hard_loss(student_logits, labels, kind)
    loss = hard_loss(student_logits, labels, kind) - label_score(student_logits, labels, kind).mean()
    if meta_on_student is not None:
        meta = meta_on_student if meta_grad else meta_on_student.detach()
        loss = loss + label_score(meta, labels, kind).mean()
    return loss


def reward(student_logits: torch.Tensor, meta_logits: torch.Tensor, labels: torch.Tensor, kind: str, mode: str,
           normaliser: int) -> float:
    """Student vs meta-teacher on one main-task quiz batch, summed and divided by the quiz-set size."""
    s, m = label_score(student_logits, labels, kind), label_score(meta_logits, labels, kind)
    per_example = (s > m).float() if mode == "binary" else s - m
    return float(per_example.sum()) / max(normaliser, 1)


def discounted_returns(rewards: Sequence[float], gamma: float) -> torch.Tensor:
    out, running = [], 0.0
    for r in reversed(list(rewards)):
        running = r + gamma * running
        out.append(running)
    return torch.tensor(out[::-1], dtype=torch.float32)


def reinforce_loss(log_probs: torch.Tensor, rewards: Sequence[float], gamma: float) -> torch.Tensor:
    """−mean_t(Â_t · log π(a_t|s_t)) with discounted returns and the mean return as baseline."""
    returns = discounted_returns(rewards, gamma).to(log_probs.device)
    advantages = returns - returns.mean()
    return -(advantages * log_probs).mean()


def episode_policy_loss(log_probs: torch.Tensor, rewards: Sequence[float], gamma: float,
                        credit_next: bool = False) -> torch.Tensor:
    """REINFORCE over one curriculum episode. ``credit_next`` is the authors' pairing: the reward measured
    after step t is credited to the action of step t+1 (log π of steps 1..T−1 with rewards 0..T−2)."""
    if credit_next and len(rewards) > 1:
        return reinforce_loss(log_probs[1:], rewards[:-1], gamma)
    return reinforce_loss(log_probs, rewards, gamma)
