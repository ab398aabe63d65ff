"""The pilot update shared by MetaDistil and MPDistil's pilot/mixed meta objectives.

A differentiable copy of the student takes ``method.unroll_steps`` SGD or Adam steps
(``method.pilot_optimizer``) on the distillation loss α·soft + (1 − α)·CE (+ β·PKD where the phase's real
student loss has it) with soft targets from a meta-parameterised teacher; the quiz loss of the stepped
student is differentiated back into those meta-parameters (see :mod:`mpdistil.meta`).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from mpdistil.config import ConfigError
from mpdistil.data.encode import model_inputs
from mpdistil.losses import distillation_loss, hard_loss, layer_map
from mpdistil.meta import AdamMoments, MetaStepConfig, meta_gradient

# The config fields a pilot step reads: its inner loss (α, τ, soft loss), how it is unrolled, and its optimizer
# (the Adam pilot's step size defaults to the real student's learning rate).
PILOT_FIELDS = ("method.alpha", "method.temperature", "method.soft_loss", "method.pilot_lr", "method.unroll_steps",
                "method.first_order", "method.meta_backend", "method.quiz_batches_per_step",
                "method.pilot_optimizer", "method.pilot_adam_lr", "method.student_lr")


def check_pilot(cfg: Any, used: bool = True) -> None:
    """Value checks of the pilot's fields; ``used``: whether this run takes pilot steps."""
    m = cfg.method
    if used and cfg.trainer.gradient_checkpointing and m.meta_backend == "func":
        raise ConfigError("trainer.gradient_checkpointing=true recomputes activations from the module's own weights, "
                          "not the pilot's functional ones (method.meta_backend=func): the meta-gradient would be "
                          "wrong; set method.meta_backend=higher or trainer.gradient_checkpointing=false")
    for key in ("unroll_steps", "quiz_batches_per_step"):
        if m[key] <= 0:
            raise ConfigError(f"method.{key}={m[key]} must be a positive integer")
    if m.pilot_lr < 0:
        raise ConfigError(f"method.pilot_lr={m.pilot_lr} must be >= 0")
    if m.pilot_adam_lr is not None and m.pilot_adam_lr <= 0:
        raise ConfigError(f"method.pilot_adam_lr={m.pilot_adam_lr} must be > 0, or null for method.student_lr")
    if m.first_order and m.pilot_optimizer != "sgd":
        raise ConfigError(f"method.first_order=true supports only the SGD pilot; set method.pilot_optimizer=sgd "
                          f"or method.first_order=false (pilot_optimizer={m.pilot_optimizer})")


def step_config(method: Any, optimizer: Optional[torch.optim.Optimizer] = None) -> MetaStepConfig:
    """The unroll the config asks for; an Adam pilot takes its betas and ε from the real ``optimizer`` if any."""
    if method.pilot_optimizer != "adam":
        return MetaStepConfig(lr=method.pilot_lr, steps=method.unroll_steps, first_order=method.first_order,
                              backend=method.meta_backend)
    lr = method.student_lr if method.pilot_adam_lr is None else method.pilot_adam_lr
    group = optimizer.param_groups[0] if optimizer is not None else {}
    return MetaStepConfig(lr=lr, steps=method.unroll_steps, first_order=method.first_order,
                          backend=method.meta_backend, optimizer="adam",
                          betas=tuple(group.get("betas", (0.9, 0.999))), eps=group.get("eps", 1e-8))


def student_moments(student: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> dict[str, AdamMoments]:
    """The real optimizer's Adam moments of the student's parameters, by name (none before its first step)."""
    if optimizer is None:
        return {}
    out = {}
    for name, p in student.named_parameters():
        state = optimizer.state.get(p, {})
        if "exp_avg" in state and "exp_avg_sq" in state:
            out[name] = AdamMoments(int(state["step"]), state["exp_avg"], state["exp_avg_sq"])
    return out


def cached_teacher_cls(ctx: Any, split: str) -> Callable[[dict[str, Any]], list[torch.Tensor]]:
    """The frozen teacher's [CLS] states of the layers PKD pairs with the student, for a batch of ``split``,
    read from the run's teacher cache by index (as phase 2 reads them)."""
    cls = ctx.teacher_cache(split)["cls"]

    def states(batch: dict[str, Any]) -> list[torch.Tensor]:
        t = cls[batch["index"].cpu()].to(ctx.rt.device)
        t = t.view(-1, t.shape[-2], t.shape[-1])
        return [t[:, j] for j in range(t.shape[1])]

    return states


def pilot_gradient(ctx: Any, meta_params: list[torch.Tensor],
                   soft_targets: Callable[[dict[str, Any]], torch.Tensor],
                   inner_batches: list[dict[str, Any]], quiz_batches: list[dict[str, Any]],
                   teacher_cls: Optional[Callable[[dict[str, Any]], list[torch.Tensor]]] = None,
                   agent: str = "student") -> tuple[list[torch.Tensor], dict[str, float]]:
    """d L_quiz(θ') / d meta_params, where θ' = θ − η ∇θ L_S(θ; soft_targets) unrolled k times (or Adam steps).

    ``teacher_cls`` (:func:`cached_teacher_cls`) is given by a phase whose real student loss has the PKD term:
    the pilot's inner loss then has β·PKD too, the student's forward returning its layers' [CLS] states. An
    Adam pilot continues the moments of the optimizer now training the student (``ctx.optimizers[agent]``).
    ``agent``: the student whose step is piloted (a baseline phase's own copy, e.g. ``kd``).
    """
    m, kind = ctx.cfg.method, ctx.task.kind
    student = ctx.agent(agent)
    beta = m.beta if teacher_cls is not None else 0.0
    pairs = layer_map(student.num_layers, ctx.teacher.num_layers, m.layer_map) if beta > 0 else []

    def inner(forward: Callable[..., Any], batch: dict[str, Any]) -> torch.Tensor:
        out = forward(**model_inputs(batch), output_hidden=bool(pairs))
        student_cls = teacher_states = None
        if pairs:
            student_cls = [out.pkd_states[s - 1] for s, _ in pairs]
            teacher_states = teacher_cls(batch)
        loss, _ = distillation_loss(out.logits, soft_targets(batch), batch["labels"], kind, m.alpha,
                                    m.temperature, m.soft_loss, beta, student_cls, teacher_states)
        return loss

    def outer(forward: Callable[..., Any], batch: dict[str, Any]) -> torch.Tensor:
        return hard_loss(forward(**model_inputs(batch)).logits, batch["labels"], kind)

    adam = m.pilot_optimizer == "adam"
    optimizer = ctx.optimizers.get(agent) if adam else None
    return meta_gradient(student, meta_params, inner, outer, inner_batches, quiz_batches,
                         step_config(m, optimizer), student_moments(student, optimizer) if adam else None)


def apply_gradient(params: list[torch.Tensor], grads: list[torch.Tensor], optimizer: torch.optim.Optimizer,
                   rt: Any, what: str, batch: Optional[dict[str, Any]] = None) -> None:
    """Set .grad from a computed (meta-)gradient and take one optimizer step. With several processes the ranks'
    gradients are summed first, each weighted by its share of ``batch`` (the quiz batch it was scored on)."""
    from mpdistil.training import NonFiniteLossError

    if not rt.world.all_true(all(bool(torch.isfinite(g).all()) for g in grads)):
        raise NonFiniteLossError(f"non-finite meta-gradient for the {what}; lower method.pilot_lr "
                                 f"(method.pilot_adam_lr for the Adam pilot) or use fp32")
    grads = [g.detach() for g in grads]
    if rt.world.active:
        grads = [g * rt.share(batch) for g in grads]
        rt.world.sum_(grads)
    for p, g in zip(params, grads):
        p.grad = g.to(p.dtype)
    if rt.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, rt.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
