"""Phase 3: one pass of meta-teacher learning over the main task's quiz split, after each
distillation epoch (run it as ``distill+meta_teacher``).

T' reads the frozen teacher's representation h_T (cached) and the current student's h_S
(recomputed once per pass, no gradient into either encoder) and is trained on the
collaborative or competitive loss (``method.meta_objective=direct``), by the quiz loss of a
student after a differentiable pilot step on phase 2's loss with T''s soft targets (``pilot``), or by
(1 − λ)·direct + λ·pilot (``mixed``, λ = ``method.meta_lambda``). The best T' on the selection
split is kept.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from mpdistil.config import ConfigError
from mpdistil.context import RunContext
from mpdistil.losses import META_LOSSES
from mpdistil.mixing import mix_logits
from mpdistil.phases import Row, TrainingPhase, accumulate, attach_pkd_projection, register_phase
from mpdistil.pilot import PILOT_FIELDS, apply_gradient, cached_teacher_cls, check_pilot, pilot_gradient
from mpdistil.training import predict


@register_phase("meta_teacher")
class MetaTeacherPhase(TrainingPhase):
    row = Row("meta_teacher", "meta-teacher T'")
    trains = ("meta_teacher",)
    reads = ("teacher", "student", "meta_teacher")
    cache = "students"
    # beyond the pilot's fields: β, the layer map and the projection of the PKD term its pilot loss shares with phase 2
    fields = PILOT_FIELDS + ("method.student_epochs", "method.meta_loss", "method.meta_lr", "method.meta_teacher",
                             "method.meta_input", "method.meta_objective", "method.meta_lambda", "method.pilot_pkd",
                             "method.beta", "method.layer_map", "method.pkd_projection")

    @classmethod
    def check(cls, cfg: Any) -> None:
        m = cfg.method
        if not 0.0 <= m.meta_lambda <= 1.0:
            raise ConfigError(f"method.meta_lambda={m.meta_lambda} must lie in [0, 1]")
        if m.meta_lr <= 0:
            raise ConfigError(f"method.meta_lr={m.meta_lr} must be > 0")
        check_pilot(cfg, m.meta_objective != "direct" and cls.used(cfg))

    def epochs(self, ctx: RunContext) -> int:
        return ctx.cfg.method.student_epochs

    def prepare(self, ctx: RunContext) -> None:
        ctx.meta_teacher()
        attach_pkd_projection(ctx, ctx.student)  # the pilot's PKD term maps the student's states as phase 2 does

    def loaded(self, ctx: RunContext) -> None:
        ctx.meta_teacher().trained = True

    def row_agent(self, ctx: RunContext) -> None:
        return None  # T' labels the frozen teacher's cached representations: see row_logits

    def row_logits(self, ctx: RunContext, split: str) -> torch.Tensor:
        return ctx.meta_teacher_logits(split)

    def start(self, ctx: RunContext) -> None:
        self.mt = ctx.meta_teacher()
        self.opt = ctx.rt.optimizer(self.mt.parameters(), ctx.cfg.method.meta_lr)

    def student_representation(self, ctx: RunContext) -> torch.Tensor:
        out = predict(ctx.student, ctx.splits["quiz"], ctx.rt, with_pooled=True)
        return out["pooled"] if ctx.cfg.method.meta_input == "pooled" else out["cls"]

    def _soft_targets(self, ctx: RunContext, h_train: torch.Tensor) -> Callable[[dict[str, Any]], torch.Tensor]:
        """T''s soft targets for a train' batch, from the frozen teacher's cached representations (keeps T''s graph);
        with several teachers, mixed with the others' as phase 2 mixes them (T' in the first teacher's place)."""
        choices = ctx.splits["train"].num_choices
        mix = ctx.mixture()

        def soft(batch: dict[str, Any]) -> torch.Tensor:
            idx = batch["index"].cpu()
            h = h_train[idx]
            logits = self.mt(h.view(-1, h.shape[-1]).to(ctx.rt.device), "teacher", choices)
            if mix is None:
                return logits
            stack = ctx.teacher_stack("train", idx, logits)
            with torch.no_grad():
                weights = mix.weights(stack.detach(), batch["labels"], "train", idx)
            return mix_logits(stack, weights, ctx.task.kind, ctx.cfg.method.temperature)

        return soft

    def run_epoch(self, ctx: RunContext, epoch: int) -> dict[str, float]:
        m, rt = ctx.cfg.method, ctx.rt
        if m.meta_loss == "none" and m.meta_objective == "direct":
            return {}
        split = ctx.splits["quiz"]
        h_t = ctx.representation(ctx.teacher_cache("quiz"))
        h_s = self.student_representation(ctx)
        h_train = ctx.representation(ctx.teacher_cache("train")) if m.meta_objective != "direct" else None
        # the pilot mirrors phase 2's loss, PKD included (β > 0), unless method.pilot_pkd=false
        teacher_cls = cached_teacher_cls(ctx, "train") if h_train is not None and m.pilot_pkd and m.beta > 0 else None
        params = [p for p in self.mt.parameters() if p.requires_grad]
        weight_direct = {"direct": 1.0, "pilot": 0.0, "mixed": 1.0 - m.meta_lambda}[m.meta_objective]
        # endless train' batches for the pilot steps (their soft targets come from T')
        train_iter = ctx.endless_batches(ctx.splits["train"], 6, epoch) if h_train is not None else None
        quiz_batches = list(rt.batches(split, ctx.cfg.trainer.batch_size, shuffle=True,
                                       generator=ctx.generator(4, epoch)))
        self.mt.train()
        sums: dict[str, float] = {}
        for b, batch in enumerate(tqdm(quiz_batches, desc=f"meta-teacher {epoch + 1}", disable=not rt.progress,
                                       leave=False)):
            grads = [torch.zeros_like(p) for p in params]
            if weight_direct > 0 and m.meta_loss != "none":
                idx = batch["index"].cpu()
                ht = h_t[idx].view(-1, h_t.shape[-1]).to(rt.device)
                hs = h_s[idx].view(-1, h_s.shape[-1]).to(rt.device)
                # T' is a head over cached vectors: fp32 even under autocast (no fp16 gradient to underflow)
                loss = META_LOSSES[m.meta_loss](self.mt(ht.float(), "teacher", split.num_choices),
                                                self.mt(hs.float(), "student", split.num_choices),
                                                batch["labels"], ctx.task.kind)
                direct = torch.autograd.grad(loss, params, allow_unused=True)
                grads = [g + weight_direct * (d if d is not None else 0) for g, d in zip(grads, direct)]
                accumulate(sums, {"loss": float(loss.detach())}, rt.share(batch))
            if weight_direct < 1:
                quiz = [batch] + [quiz_batches[(b + j) % len(quiz_batches)] for j in range(1, m.quiz_batches_per_step)]
                inner = [next(train_iter) for _ in range(m.unroll_steps)]
                pilot, stats = pilot_gradient(ctx, params, self._soft_targets(ctx, h_train), inner, quiz,
                                               teacher_cls)
                grads = [g + (1 - weight_direct) * p for g, p in zip(grads, pilot)]
                accumulate(sums, {"pilot_quiz_loss": stats["outer_loss"]}, rt.share(batch))
            apply_gradient(params, grads, self.opt, rt, "meta-teacher", batch)
        self.mt.trained = True
        return self.end_epoch(ctx, self.mt, epoch, sums, len(quiz_batches),
                              lambda split: ctx.metrics_from_logits(ctx.meta_teacher_logits(split), split))

    def finish(self, ctx: RunContext) -> dict[str, Any]:
        self.best.restore(self.mt)
        return {"best_epoch": self.best.epoch, "selection": self.best.metrics, "history": self.history,
                "meta_loss": ctx.cfg.method.meta_loss, "meta_objective": ctx.cfg.method.meta_objective}
