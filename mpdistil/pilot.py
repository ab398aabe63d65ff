"""The pilot update shared by MetaDistil and MPDistil's pilot/mixed meta objectives.

A differentiable copy of the student takes ``method.unroll_steps`` SGD steps on the distillation
loss α·soft + (1 − α)·CE with soft targets from a meta-parameterised teacher; the quiz loss of the
stepped student is differentiated back into those meta-parameters (see :mod:`mpdistil.meta`).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from mpdistil.config import ConfigError
from mpdistil.data.encode import model_inputs
from mpdistil.losses import distillation_loss, hard_loss
from mpdistil.meta import MetaStepConfig, meta_gradient

# The config fields a pilot step reads: its inner loss (α, τ, soft loss) and how it is unrolled.
PILOT_FIELDS = ("method.alpha", "method.temperature", "method.soft_loss", "method.pilot_lr", "method.unroll_steps",
                "method.first_order", "method.meta_backend", "method.quiz_batches_per_step")


def check_pilot(cfg: Any) -> None:
    m = cfg.method
    for key in ("unroll_steps", "quiz_batches_per_step"):
        if m[key] <= 0:
            raise ConfigError(f"method.{key}={m[key]} must be a positive integer")
    if m.pilot_lr < 0:
        raise ConfigError(f"method.pilot_lr={m.pilot_lr} must be >= 0")


def step_config(method: Any) -> MetaStepConfig:
    return MetaStepConfig(lr=method.pilot_lr, steps=method.unroll_steps, first_order=method.first_order,
                          backend=method.meta_backend)


def pilot_gradient(ctx: Any, meta_params: list[torch.Tensor],
                   soft_targets: Callable[[dict[str, Any]], torch.Tensor],
                   inner_batches: list[dict[str, Any]], quiz_batches: list[dict[str, Any]]
                   ) -> tuple[list[torch.Tensor], dict[str, float]]:
    """d L_quiz(θ') / d meta_params, where θ' = θ − η ∇θ L_S(θ; soft_targets) unrolled k times."""
    m, kind = ctx.cfg.method, ctx.task.kind

    def inner(forward: Callable[..., Any], batch: dict[str, Any]) -> torch.Tensor:
        out = forward(**model_inputs(batch))
        loss, _ = distillation_loss(out.logits, soft_targets(batch), batch["labels"], kind, m.alpha,
                                    m.temperature, m.soft_loss)
        return loss

    def outer(forward: Callable[..., Any], batch: dict[str, Any]) -> torch.Tensor:
        return hard_loss(forward(**model_inputs(batch)).logits, batch["labels"], kind)

    return meta_gradient(ctx.student, meta_params, inner, outer, inner_batches, quiz_batches, step_config(m))


def apply_gradient(params: list[torch.Tensor], grads: list[torch.Tensor], optimizer: torch.optim.Optimizer,
                   clip: float, what: str) -> None:
    """Set .grad from a computed (meta-)gradient and take one optimizer step."""
    from mpdistil.training import NonFiniteLossError

    if not all(torch.isfinite(g).all() for g in grads):
        raise NonFiniteLossError(f"non-finite meta-gradient for the {what}; lower method.pilot_lr or use fp32")
    for p, g in zip(params, grads):
        p.grad = g.detach().to(p.dtype)
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
