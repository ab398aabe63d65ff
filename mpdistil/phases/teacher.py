"""Phase 1: fine-tune the teacher on train' with the task loss; keep the best epoch.

A fine-tuned teacher is cached under ``<cache_dir>/teachers/<key>`` and reused by every later
run with the same teacher, task data, split, seed and phase-1 settings. The entry's file lock is
held from start to finish, so concurrent jobs build it once; it is an OS lock (flock), released
when a killed process dies, so a pre-empted job never blocks the others.
"""
from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from mpdistil.caches import CacheEntry, teacher_cache_key
from mpdistil.data.encode import model_inputs
from mpdistil.losses import hard_loss
from mpdistil.phases import TrainingPhase, register_phase
from mpdistil.training import BestKeeper


@register_phase("teacher")
class TeacherPhase(TrainingPhase):
    def start(self, ctx: Any) -> None:
        self.entry = CacheEntry(ctx.cache_dir, "teachers", teacher_cache_key(ctx))
        self.entry.lock.acquire()  # concurrent jobs wanting the same teacher wait here, then reuse it
        cached = self.entry.load() if ctx.cfg.trainer.reuse_cache else None
        self.cached_record = None
        if cached is not None:
            state, record = cached
            ctx.teacher.load_state_dict(state)
            self.cached_record = record
            self.entry.lock.release()
            return
        self.best = BestKeeper("teacher")
        self.opt = ctx.rt.optimizer(ctx.teacher.parameters(), ctx.cfg.method.teacher_lr)
        self.history: list[dict[str, float]] = []

    def epochs(self, ctx: Any) -> int:
        return 0 if self.cached_record is not None else ctx.cfg.method.teacher_epochs

    def run_epoch(self, ctx: Any, epoch: int) -> dict[str, float]:
        teacher, rt = ctx.teacher, ctx.rt
        teacher.train(not ctx.cfg.method.authors_no_dropout)
        total, n = 0.0, 0
        batches = rt.batches(ctx.splits["train"], ctx.cfg.trainer.batch_size, shuffle=True,
                             generator=ctx.generator(1, epoch))
        for batch in tqdm(batches, desc=f"teacher {epoch + 1}", disable=not rt.progress, leave=False):
            with rt.autocast():
                out = teacher(**model_inputs(batch))
            loss = hard_loss(out.logits, batch["labels"], ctx.task.kind)
            rt.step(loss, self.opt, "teacher")
            total, n = total + float(loss.detach()), n + 1
        metrics = ctx.evaluate(teacher, ctx.selection_split)
        self.best.offer(teacher, ctx.score(metrics), epoch, metrics)
        row = {"loss": total / max(n, 1), **{f"sel_{k}": v for k, v in metrics.items()}}
        self.history.append(row)
        return row

    def finish(self, ctx: Any) -> dict[str, Any]:
        if self.cached_record is not None:
            return {**self.cached_record, "cached": True, "cache": str(self.entry.folder)}
        try:
            self.best.restore(ctx.teacher)
            record = {"best_epoch": self.best.epoch, "selection": self.best.metrics, "history": self.history}
            self.entry.save(self.best.state, record)
        finally:
            self.entry.lock.release()
        return {**record, "cached": False, "cache": str(self.entry.folder)}

    def state_dict(self) -> dict[str, Any]:
        return {} if self.cached_record is not None else super().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.cached_record is None:  # else another job finished this teacher meanwhile: same teacher
            super().load_state_dict(state)

    def close(self, ctx: Any) -> None:
        entry = getattr(self, "entry", None)
        if entry is not None and entry.lock.is_locked:
            entry.lock.release(force=True)
