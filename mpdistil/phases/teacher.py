"""Phase 1: fine-tune the teacher on train' with the task loss; keep the best epoch.

The fine-tuned teacher is cached under ``<cache_dir>/teachers/`` and reused by every later run with
the same teacher, data and phase-1 settings (its ``fields``); concurrent jobs build it once.
"""
from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from mpdistil.config import ConfigError
from mpdistil.context import RunContext
from mpdistil.data.encode import model_inputs
from mpdistil.losses import hard_loss
from mpdistil.phases import Row, TrainingPhase, register_phase


@register_phase("teacher")
class TeacherPhase(TrainingPhase):
    row = Row("teacher", "teacher")
    trains = ("teacher",)
    cache = "teachers"
    fields = ("model.teacher", "method.teacher_epochs", "method.teacher_lr", "method.authors_no_dropout")

    @classmethod
    def check(cls, cfg: Any) -> None:
        m = cfg.method
        if m.teacher_epochs <= 0:
            raise ConfigError(f"method.teacher_epochs={m.teacher_epochs} must be a positive integer")
        if m.teacher_lr <= 0:
            raise ConfigError(f"method.teacher_lr={m.teacher_lr} must be > 0")

    def epochs(self, ctx: RunContext) -> int:
        return ctx.cfg.method.teacher_epochs

    def start(self, ctx: RunContext) -> None:
        self.opt = ctx.rt.optimizer(ctx.teacher.parameters(), ctx.cfg.method.teacher_lr)

    def run_epoch(self, ctx: RunContext, epoch: int) -> dict[str, float]:
        teacher, rt = ctx.teacher, ctx.rt
        teacher.train(not ctx.cfg.method.authors_no_dropout)
        total, n = 0.0, 0
        batches = rt.batches(ctx.teacher_splits["train"], ctx.cfg.trainer.batch_size, shuffle=True,
                             generator=ctx.generator(1, epoch))
        for batch in tqdm(batches, desc=f"teacher {epoch + 1}", disable=not rt.progress, leave=False):
            with rt.autocast():
                out = teacher(**model_inputs(batch))
            loss = hard_loss(out.logits, batch["labels"], ctx.task.kind)
            rt.step(loss, self.opt, "teacher")
            total, n = total + float(loss.detach()), n + 1
        return self.end_epoch(ctx, teacher, epoch, {"loss": total}, n)

    def finish(self, ctx: RunContext) -> dict[str, Any]:
        self.best.restore(ctx.teacher)
        return {"best_epoch": self.best.epoch, "selection": self.best.metrics, "history": self.history}
