"""Phase 3: one pass of meta-teacher learning over the main task's quiz split, after each
distillation epoch (run it as ``distill+meta_teacher``).

T' reads the frozen teacher's representation h_T (cached) and the current student's h_S
(recomputed once per pass, no gradient into either encoder) and is trained on the
collaborative or competitive loss. The best T' on the selection split is kept.
"""
from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from mpdistil.losses import META_LOSSES
from mpdistil.phases import Phase, register_phase
from mpdistil.training import BestKeeper, predict


@register_phase("meta_teacher")
class MetaTeacherPhase(Phase):
    def epochs(self, ctx: Any) -> int:
        return ctx.cfg.method.student_epochs

    def prepare(self, ctx: Any) -> None:
        ctx.meta_teacher()

    def start(self, ctx: Any) -> None:
        self.mt = ctx.meta_teacher()
        self.opt = ctx.rt.optimizer(self.mt.parameters(), ctx.cfg.method.meta_lr)
        self.best = BestKeeper("meta_teacher")
        self.history: list[dict[str, float]] = []

    def student_representation(self, ctx: Any) -> torch.Tensor:
        out = predict(ctx.student, ctx.splits["quiz"], ctx.rt, with_pooled=True)
        return out["pooled"] if ctx.cfg.method.meta_input == "pooled" else out["cls"]

    def run_epoch(self, ctx: Any, epoch: int) -> dict[str, float]:
        m, rt = ctx.cfg.method, ctx.rt
        if m.meta_loss == "none":
            return {}
        split = ctx.splits["quiz"]
        h_t = ctx.representation(ctx.teacher_cache("quiz"))
        h_s = self.student_representation(ctx)
        loss_fn = META_LOSSES[m.meta_loss]
        self.mt.train()
        total, n = 0.0, 0
        batches = rt.batches(split, ctx.cfg.trainer.batch_size, shuffle=True, generator=ctx.generator(4, epoch))
        for batch in tqdm(batches, desc=f"meta-teacher {epoch + 1}", disable=not rt.progress, leave=False):
            idx = batch["index"].cpu()
            ht = h_t[idx].view(-1, h_t.shape[-1]).to(rt.device)
            hs = h_s[idx].view(-1, h_s.shape[-1]).to(rt.device)
            with rt.autocast():
                loss = loss_fn(self.mt(ht, "teacher", split.num_choices), self.mt(hs, "student", split.num_choices),
                               batch["labels"], ctx.task.kind)
            rt.step(loss, self.opt, "meta-teacher")
            total, n = total + float(loss.detach()), n + 1
        self.mt.trained = True
        metrics = ctx.metrics_from_logits(ctx.meta_teacher_logits(ctx.selection_split), ctx.selection_split)
        self.best.offer(self.mt, ctx.score(metrics), epoch, metrics)
        row = {"loss": total / max(n, 1), **{f"sel_{k}": v for k, v in metrics.items()}}
        self.history.append(row)
        return row

    def finish(self, ctx: Any) -> dict[str, Any]:
        self.best.restore(self.mt)
        return {"best_epoch": self.best.epoch, "selection": self.best.metrics, "history": self.history,
                "meta_loss": ctx.cfg.method.meta_loss}
