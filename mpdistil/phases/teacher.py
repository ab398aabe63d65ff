"""Phase 1: fine-tune the teacher on train' with the task loss; keep the best epoch.

The fine-tuned teacher is cached under ``<cache_dir>/teachers/`` and reused by every later run with
the same teacher, data and phase-1 settings (its ``fields``); concurrent jobs build it once.
With ``method.teacher_noise=label_flip`` the teacher is fine-tuned on train' labels of which a seeded
fraction is flipped to another class; selection and every later phase use the true labels.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from mpdistil.config import ConfigError
from mpdistil.context import RunContext
from mpdistil.data.encode import model_inputs
from mpdistil.frontier import LABEL_NOISE_FIELDS, check_label_noise, flip_labels
from mpdistil.losses import hard_loss
from mpdistil.phases import Row, TrainingPhase, accumulate, register_phase
from mpdistil.schedule import CheckpointBank


@register_phase("teacher")
class TeacherPhase(TrainingPhase):
    row = Row("teacher", "teacher")
    trains = ("teacher",)
    cache = "teachers"
    fields = ("model.teacher", "method.teacher_epochs", "method.teacher_lr",
              "method.authors_no_dropout", "trainer.keep_teacher_checkpoints") + LABEL_NOISE_FIELDS

    @classmethod
    def check(cls, cfg: Any) -> None:
        m = cfg.method
        if m.teacher_epochs <= 0:
            raise ConfigError(f"method.teacher_epochs={m.teacher_epochs} must be a positive integer")
        if m.teacher_lr <= 0:
            raise ConfigError(f"method.teacher_lr={m.teacher_lr} must be > 0")
        check_label_noise(cfg)

    def epochs(self, ctx: RunContext) -> int:
        return ctx.cfg.method.teacher_epochs

    def prepare(self, ctx: RunContext) -> None:
        if ctx.cfg.trainer.keep_teacher_checkpoints and "teacher_checkpoints" not in ctx.agents:
            ctx.agents["teacher_checkpoints"] = CheckpointBank()

    def modules(self, ctx: RunContext) -> dict[str, torch.nn.Module]:
        """The teacher, and its per-epoch checkpoints when kept (so a cached teacher has them too)."""
        bank = ctx.agents.get("teacher_checkpoints")
        return {"teacher": ctx.teacher, **({"teacher_checkpoints": bank} if bank is not None else {})}

    def start(self, ctx: RunContext) -> None:
        self.opt = ctx.rt.optimizer(ctx.teacher.parameters(), ctx.cfg.method.teacher_lr)
        self.labels: Optional[torch.Tensor] = None  # the noisy train' labels; None: the true ones
        self.noise: dict[str, Any] = {}
        m = ctx.cfg.method
        if m.teacher_noise == "label_flip":
            split = ctx.splits["train"]
            classes = split.num_choices or ctx.task.num_outputs
            self.labels, flipped = flip_labels(split.labels, m.teacher_noise_rate, classes, ctx.generator(9))
            self.noise = {"kind": "label_flip", "rate": m.teacher_noise_rate, "flipped": int(flipped.numel()),
                          "of": len(split), "flipped_indices": flipped.tolist()}

    def run_epoch(self, ctx: RunContext, epoch: int) -> dict[str, float]:
        teacher, rt = ctx.teacher, ctx.rt
        teacher.train(not ctx.cfg.method.authors_no_dropout)
        sums: dict[str, float] = {}
        n = 0
        batches = rt.batches(ctx.teacher_splits["train"], ctx.cfg.trainer.batch_size, shuffle=True,
                             generator=ctx.generator(1, epoch))
        for batch in tqdm(batches, desc=f"teacher {epoch + 1}", disable=not rt.progress, leave=False):
            with rt.autocast():
                out = teacher(**model_inputs(batch))
            labels = batch["labels"] if self.labels is None else self.labels[batch["index"].cpu()].to(rt.device)
            loss = hard_loss(out.logits, labels, ctx.task.kind)
            rt.step(loss, self.opt, "teacher", batch=batch)
            accumulate(sums, {"loss": float(loss.detach())}, rt.share(batch))
            n += 1
        if "teacher_checkpoints" in ctx.agents:
            ctx.agents["teacher_checkpoints"].add(epoch, teacher)
        return self.end_epoch(ctx, teacher, epoch, sums, n)

    def finish(self, ctx: RunContext) -> dict[str, Any]:
        self.best.restore(ctx.teacher)
        bank = ctx.agents.get("teacher_checkpoints")
        return {"best_epoch": self.best.epoch, "selection": self.best.metrics, "history": self.history,
                **({"teacher_noise": self.noise} if self.noise else {}),
                **({"kept_checkpoints": bank.epochs} if bank is not None else {})}
