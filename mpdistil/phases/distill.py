"""Phase 2: distil the student from the (meta-)teacher, one epoch at a time (KD / PKD).

L_S = α·τ²·D(softmax(z_T'/τ), softmax(z_S/τ)) + (1 − α)·CE(z_S, y) + β·Σ_l MSE(h_S^l, h_T^m(l)).
The frozen teacher's logits and [CLS] states come from a per-run cache, computed once. Soft
targets come from the meta-teacher T' once phase 3 has trained it, else from the teacher.
``undistilled`` is the same loop with α = β = 0 on a fresh copy of the initial student.
Beyond the paper, the soft term can leave out the targets furthest beyond the current student
(``method.frontier_filter``) and the soft targets can carry fixed Gaussian noise (``method.teacher_noise``).
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from mpdistil.context import RunContext
from mpdistil.data.encode import model_inputs
from mpdistil.frontier import SOFT_TERM_FIELDS, FrontierLog, check_frontier, filter_epoch, logit_noise
from mpdistil.losses import distillation_loss, layer_map
from mpdistil.phases import (
    STUDENT_FIELDS,
    Row,
    TrainingPhase,
    accumulate,
    attach_pkd_projection,
    check_distillation,
    check_student,
    register_phase,
)
from mpdistil.training import predict


def fresh_student(ctx: RunContext, name: str) -> nn.Module:
    """A baseline's own copy of the initial student (created once; a cache or checkpoint then loads into it)."""
    if name not in ctx.agents:
        clone = copy.deepcopy(ctx.student)
        clone.pkd_projection = nn.ModuleList()  # PKD maps the student gained in an earlier phase are not initial
        clone.load_state_dict(ctx.initial_student_state)
        ctx.agents[name] = clone
    return ctx.agents[name]


@register_phase("distill")
class DistillPhase(TrainingPhase):
    row = Row("student", "student, distilled", student=True)
    trains = ("student",)
    reads = ("teacher", "student", "meta_teacher")
    cache = "students"
    fields = STUDENT_FIELDS + ("method.alpha", "method.beta", "method.temperature", "method.soft_loss",
                               "method.layer_map", "method.meta_input", "method.pkd_projection") + SOFT_TERM_FIELDS
    distilled = True
    salt = 2

    @classmethod
    def check(cls, cfg: Any) -> None:
        check_student(cfg)
        check_distillation(cfg)
        check_frontier(cfg)

    def epochs(self, ctx: RunContext) -> int:
        return ctx.cfg.method.student_epochs

    def prepare(self, ctx: RunContext) -> None:
        student = self.row_agent(ctx)
        if self.distilled:
            attach_pkd_projection(ctx, student)

    def start(self, ctx: RunContext) -> None:
        m = ctx.cfg.method
        # the undistilled student reads no distillation setting: its loss is the hard-label term alone
        self.alpha, self.beta, self.temperature, self.soft_loss = (
            (m.alpha, m.beta, m.temperature, m.soft_loss) if self.distilled else (0.0, 0.0, 1.0, "kl"))
        self.model = self.row_agent(ctx)
        self.opt = ctx.rt.optimizer(self.model.parameters(), m.student_lr)
        ctx.optimizers[self.trains[0]] = self.opt
        self.pairs = layer_map(self.model.num_layers, ctx.teacher.num_layers, m.layer_map) if self.beta > 0 else []
        self.cache_out = ctx.teacher_cache("train") if self.distilled else None
        self.start_frontier(ctx)

    def start_frontier(self, ctx: RunContext) -> None:
        """Filtering and logit noise act on the soft term only, so a phase without one reads neither switch."""
        m = ctx.cfg.method
        soft = self.distilled and self.alpha > 0
        self.frontier = (m.frontier_filter, m.frontier_keep, m.frontier_warmup, m.frontier_mode) \
            if soft and m.frontier_filter != "none" else None
        self.frontier_log = FrontierLog()
        self.noise = logit_noise(tuple(self.cache_out["logits"].shape), m.teacher_noise_scale, ctx.generator(10)) \
            if soft and m.teacher_noise == "logit_gauss" else None

    def soft_targets(self, ctx: RunContext, idx: torch.Tensor, choices: int) -> Optional[torch.Tensor]:
        if self.alpha == 0:
            return None
        mt = ctx.agents.get("meta_teacher")
        if mt is not None and mt.trained:
            h = ctx.representation(self.cache_out)[idx]
            with torch.no_grad():
                return mt(h.view(-1, h.shape[-1]).to(ctx.rt.device), "teacher", choices)
        return self.cache_out["logits"][idx].to(ctx.rt.device)

    def targets(self, ctx: RunContext, idx: torch.Tensor, choices: int) -> Optional[torch.Tensor]:
        """The soft targets the student is distilled towards: :meth:`soft_targets` plus the fixed logit noise of
        these examples when ``method.teacher_noise=logit_gauss``."""
        soft = self.soft_targets(ctx, idx, choices)
        if soft is None or self.noise is None:
            return soft
        return soft + self.noise[idx].to(soft.device, soft.dtype)

    def frontier_weights(self, ctx: RunContext, epoch: int) -> Optional[torch.Tensor]:
        """This epoch's weight of each train′ example's soft term (None: all 1), from the student's predictions at
        the epoch's start; nothing is filtered during the first ``method.frontier_warmup`` epochs."""
        if self.frontier is None:
            return None
        criterion, keep, warmup, mode = self.frontier
        if epoch < warmup:
            return None
        split = ctx.splits["train"]
        student = predict(self.model, split, ctx.rt)["logits"]
        with torch.no_grad():
            targets = self.targets(ctx, torch.arange(len(split)), split.num_choices)
        weights, record = filter_epoch(student, targets, split.labels, criterion, keep, mode, self.temperature)
        self.frontier_log.add(epoch, record)
        return weights

    def run_epoch(self, ctx: RunContext, epoch: int) -> dict[str, float]:
        rt, m, kind = ctx.rt, ctx.cfg.method, ctx.task.kind
        weights = self.frontier_weights(ctx, epoch)
        self.model.train(not m.authors_no_dropout)
        split = ctx.splits["train"]
        sums: dict[str, float] = {}
        n = 0
        batches = rt.batches(split, ctx.cfg.trainer.batch_size, shuffle=True, generator=ctx.generator(self.salt, epoch))
        for batch in tqdm(batches, desc=f"{self.name} {epoch + 1}", disable=not rt.progress, leave=False):
            idx = batch["index"].cpu()
            with rt.autocast():
                out = self.model(**model_inputs(batch), output_hidden=bool(self.pairs))
                student_cls = teacher_cls = None
                if self.pairs:
                    student_cls = [out.pkd_states[s - 1] for s, _ in self.pairs]
                    t = self.cache_out["cls"][idx].to(rt.device)
                    t = t.view(-1, t.shape[-2], t.shape[-1])
                    teacher_cls = [t[:, j] for j in range(len(self.pairs))]
                loss, parts = distillation_loss(
                    out.logits, self.targets(ctx, idx, split.num_choices), batch["labels"], kind, self.alpha,
                    self.temperature, self.soft_loss, self.beta, student_cls, teacher_cls,
                    soft_weights=None if weights is None else weights[idx].to(rt.device))
            rt.step(loss, self.opt, self.name)
            accumulate(sums, {"loss": float(loss.detach()), **parts})
            n += 1
        filtered = {"frontier_filtered": float(self.frontier_log.epochs[-1]["count"])} \
            if self.frontier_log.epochs and self.frontier_log.epochs[-1]["epoch"] == epoch else {}
        return self.end_epoch(ctx, self.model, epoch, sums, n, **filtered)

    def finish(self, ctx: RunContext) -> dict[str, Any]:
        self.best.restore(self.model)
        record = {"best_epoch": self.best.epoch, "selection": self.best.metrics, "history": self.history,
                  "alpha": self.alpha, "beta": self.beta}
        if self.frontier is not None:
            criterion, keep, warmup, mode = self.frontier
            record["frontier"] = {"criterion": criterion, "keep": keep, "warmup": warmup, "mode": mode,
                                  **self.frontier_log.state_dict(), "summary": self.frontier_log.summary()}
        if self.noise is not None:
            record["teacher_noise"] = {"kind": "logit_gauss", "scale": ctx.cfg.method.teacher_noise_scale,
                                       "realised_std": float(self.noise.std()) if self.noise.numel() > 1 else 0.0,
                                       "realised_mean": float(self.noise.mean()), "entries": self.noise.numel()}
        return record

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "frontier": self.frontier_log.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "frontier" in state:
            self.frontier_log.load_state_dict(state["frontier"])

    def close(self, ctx: RunContext) -> None:
        ctx.optimizers.pop(self.trains[0], None)


@register_phase("undistilled")
class UndistilledPhase(DistillPhase):
    """The baseline row: the same student trained on labels alone (α = β = 0), from the initial student."""

    row = Row("undistilled", "student, undistilled", student=True)
    trains = ("undistilled",)
    reads = ()
    fields = STUDENT_FIELDS
    distilled = False
    salt = 3

    @classmethod
    def check(cls, cfg: Any) -> None:
        check_student(cfg)

    def row_agent(self, ctx: RunContext) -> nn.Module:
        return fresh_student(ctx, "undistilled")


@register_phase("kd")
class KDBaselinePhase(DistillPhase):
    """The KD row inside a longer method: a fresh copy of the initial student distilled from the frozen teacher
    alone (never from T′), with the same settings and batch order as ``distill``, so that the method's own
    students can be compared with plain KD/PKD trained in the same run."""

    row = Row("kd", "student, KD baseline", student=True)
    trains = ("kd",)
    reads = ("teacher",)

    def row_agent(self, ctx: RunContext) -> nn.Module:
        return fresh_student(ctx, "kd")

    def soft_targets(self, ctx: RunContext, idx: torch.Tensor, choices: int) -> Optional[torch.Tensor]:
        return self.cache_out["logits"][idx].to(ctx.rt.device) if self.alpha > 0 else None
