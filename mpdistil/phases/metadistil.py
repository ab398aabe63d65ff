"""The MetaDistil baseline (Zhou et al., ACL 2022): the teacher learns to teach by meta-gradients.

For every train' batch: (1) a differentiable copy of the student takes a pilot step (SGD, or Adam
continuing the real student optimizer's moments: ``method.pilot_optimizer``) on the distillation loss
with the teacher's soft targets, keeping the teacher's graph; like the real step (4), it has no PKD
term; (2) the quiz loss of the stepped student is back-propagated into every teacher parameter (second order);
(3) the teacher takes a step; (4) the student takes its real step with the updated teacher's
soft targets. The phase-1 teacher stays untouched for the table's teacher row and fidelity;
the meta-trained copy lives in ``ctx.agents["metadistil_teacher"]``.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from tqdm.auto import tqdm

from mpdistil.config import ConfigError
from mpdistil.context import RunContext
from mpdistil.data.encode import model_inputs
from mpdistil.losses import distillation_loss
from mpdistil.phases import (
    STUDENT_FIELDS,
    Row,
    TrainingPhase,
    accumulate,
    check_distillation,
    check_student,
    register_phase,
)
from mpdistil.pilot import PILOT_FIELDS, apply_gradient, check_pilot, pilot_gradient


@register_phase("metadistil")
class MetaDistilPhase(TrainingPhase):
    row = Row("student", "student, distilled", student=True)
    trains = ("student", "metadistil_teacher")
    reads = ("teacher", "student")
    cache = "students"
    fields = STUDENT_FIELDS + PILOT_FIELDS + ("method.teacher_lr",)
    optimizers = ("opt_teacher", "opt_student")

    @classmethod
    def check(cls, cfg: Any) -> None:
        check_student(cfg)
        check_distillation(cfg)
        m = cfg.method
        check_pilot(cfg, cls.used(cfg))
        if cls.used(cfg) and len(cfg.teachers) > 1:
            raise ConfigError(f"metadistil trains its own copy of one teacher; this run has {len(cfg.teachers)} "
                              "(teachers=[...]): list one teacher, or use method=kd or mpdistil to distil a mixture")
        if cls.used(cfg) and cfg.data.transfer:
            raise ConfigError("data.transfer adds inputs to the distillation phases (distill, kd), not to metadistil's "
                              "pilot updates; set data.transfer=[] or use method=kd or mpdistil")
        if cls.used(cfg):
            if m.frontier_filter != "none" or m.teacher_noise == "logit_gauss":
                raise ConfigError("method.frontier_filter and method.teacher_noise=logit_gauss act on the soft term of "
                                  "phase 2 (distill, kd), not on metadistil's; set method.frontier_filter=none and "
                                  "method.teacher_noise=none or label_flip")

    def epochs(self, ctx: RunContext) -> int:
        return ctx.cfg.method.student_epochs

    def prepare(self, ctx: RunContext) -> None:
        if "metadistil_teacher" not in ctx.agents:
            # trained, so in fp32 even when the frozen teacher is kept in bf16 (model.teacher_dtype)
            ctx.agents["metadistil_teacher"] = copy.deepcopy(ctx.teacher).float()

    def row_agent(self, ctx: RunContext) -> torch.nn.Module:
        return ctx.student

    def start(self, ctx: RunContext) -> None:
        m, rt = ctx.cfg.method, ctx.rt
        self.teacher = ctx.agents["metadistil_teacher"]
        self.params = [p for p in self.teacher.parameters() if p.requires_grad]
        self.opt_teacher = rt.optimizer(self.params, m.teacher_lr)
        self.opt_student = rt.optimizer(ctx.student.parameters(), m.student_lr)
        ctx.optimizers.update(student=self.opt_student, metadistil_teacher=self.opt_teacher)
        # the teacher reads its own encoding of each train' batch's examples (the batch itself if they share one)
        self.teacher_inputs = lambda batch: model_inputs(ctx.teacher_batch(batch, "train"))

    def _soft(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.teacher(**self.teacher_inputs(batch)).logits

    def run_epoch(self, ctx: RunContext, epoch: int) -> dict[str, float]:
        m, rt, student, kind = ctx.cfg.method, ctx.rt, ctx.student, ctx.task.kind
        student.train(not m.authors_no_dropout)
        self.teacher.eval()
        quiz = ctx.endless_batches(ctx.splits["quiz"], 7, epoch)
        extra = ctx.endless_batches(ctx.splits["train"], 8, epoch)
        sums: dict[str, float] = {}
        n = 0
        batches = rt.batches(ctx.splits["train"], ctx.cfg.trainer.batch_size, shuffle=True,
                             generator=ctx.generator(2, epoch))
        for batch in tqdm(batches, desc=f"metadistil {epoch + 1}", disable=not rt.progress, leave=False):
            inner = [batch] + [next(extra) for _ in range(m.unroll_steps - 1)]
            quiz_batches = [next(quiz) for _ in range(m.quiz_batches_per_step)]
            grads, stats = pilot_gradient(ctx, self.params, self._soft, inner, quiz_batches)
            apply_gradient(self.params, grads, self.opt_teacher, rt, "teacher (MetaDistil)", quiz_batches[0])
            with torch.no_grad(), rt.autocast():
                soft = self._soft(batch)
            with rt.autocast():
                out = student(**model_inputs(batch))
                loss, parts = distillation_loss(out.logits, soft, batch["labels"], kind, m.alpha, m.temperature,
                                                m.soft_loss)
            rt.step(loss, self.opt_student, "student (MetaDistil)", batch=batch)
            accumulate(sums, {"loss": float(loss.detach()), **parts}, rt.share(batch))
            accumulate(sums, {"quiz_loss": stats["outer_loss"]}, rt.share(quiz_batches[0]))
            n += 1
        split = ctx.selection_split
        teacher_metrics = ctx.evaluate(self.teacher, split) if split else {}
        return self.end_epoch(ctx, student, epoch, sums, n,
                              **{f"teacher_sel_{k}": v for k, v in teacher_metrics.items()})

    def finish(self, ctx: RunContext) -> dict[str, Any]:
        self.best.restore(ctx.student)
        return {"best_epoch": self.best.epoch, "selection": self.best.metrics, "history": self.history,
                "pilot_lr": ctx.cfg.method.pilot_lr, "unroll_steps": ctx.cfg.method.unroll_steps,
                "first_order": ctx.cfg.method.first_order, "backend": ctx.cfg.method.meta_backend}

    def close(self, ctx: RunContext) -> None:
        for agent in self.trains:
            ctx.optimizers.pop(agent, None)
