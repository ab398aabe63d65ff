"""Phase 2: distil the student from the (meta-)teacher, one epoch at a time (KD / PKD).

L_S = α·τ²·D(softmax(z_T'/τ), softmax(z_S/τ)) + (1 − α)·CE(z_S, y) + β·Σ_l MSE(h_S^l, h_T^m(l)).
The frozen teacher's logits and [CLS] states come from a per-run cache, computed once. Soft
targets come from the meta-teacher T' once phase 3 has trained it, else from the teacher.
``undistilled`` is the same loop with α = β = 0 on a fresh copy of the initial student.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from mpdistil.data.encode import model_inputs
from mpdistil.losses import distillation_loss, layer_map
from mpdistil.phases import TrainingPhase, register_phase
from mpdistil.training import BestKeeper


@register_phase("distill")
class DistillPhase(TrainingPhase):
    distilled = True

    def agent(self, ctx: Any) -> nn.Module:
        return ctx.student

    def epochs(self, ctx: Any) -> int:
        return ctx.cfg.method.student_epochs

    def prepare(self, ctx: Any) -> None:
        self.agent(ctx)

    def start(self, ctx: Any) -> None:
        m = ctx.cfg.method
        self.alpha, self.beta = (m.alpha, m.beta) if self.distilled else (0.0, 0.0)
        self.model = self.agent(ctx)
        self.opt = ctx.rt.optimizer(self.model.parameters(), m.student_lr)
        self.best = BestKeeper(self.name)
        self.history: list[dict[str, float]] = []
        self.pairs = layer_map(self.model.num_layers, ctx.teacher.num_layers, m.layer_map) if self.beta > 0 else []
        self.cache = ctx.teacher_cache("train") if self.distilled else None

    def soft_targets(self, ctx: Any, idx: torch.Tensor, choices: int) -> Optional[torch.Tensor]:
        if self.alpha == 0:
            return None
        mt = ctx.agents.get("meta_teacher")
        if mt is not None and mt.trained:
            h = ctx.representation(self.cache)[idx]
            with torch.no_grad():
                return mt(h.view(-1, h.shape[-1]).to(ctx.rt.device), "teacher", choices)
        return self.cache["logits"][idx].to(ctx.rt.device)

    def run_epoch(self, ctx: Any, epoch: int) -> dict[str, float]:
        rt, m, kind = ctx.rt, ctx.cfg.method, ctx.task.kind
        self.model.train(not m.authors_no_dropout)
        split = ctx.splits["train"]
        sums: dict[str, float] = {}
        n = 0
        batches = rt.batches(split, ctx.cfg.trainer.batch_size, shuffle=True,
                             generator=ctx.generator(2 if self.distilled else 3, epoch))
        for batch in tqdm(batches, desc=f"{self.name} {epoch + 1}", disable=not rt.progress, leave=False):
            idx = batch["index"].cpu()
            with rt.autocast():
                out = self.model(**model_inputs(batch), output_hidden=bool(self.pairs))
                student_cls = teacher_cls = None
                if self.pairs:
                    student_cls = [out.cls_states[s - 1] for s, _ in self.pairs]
                    t = self.cache["cls"][idx].to(rt.device)
                    t = t.view(-1, t.shape[-2], t.shape[-1])
                    teacher_cls = [t[:, j] for j in range(len(self.pairs))]
                loss, parts = distillation_loss(
                    out.logits, self.soft_targets(ctx, idx, split.num_choices), batch["labels"], kind, self.alpha,
                    m.temperature, m.soft_loss, self.beta, student_cls, teacher_cls)
            rt.step(loss, self.opt, self.name)
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        metrics = ctx.evaluate(self.model, ctx.selection_split)
        self.best.offer(self.model, ctx.score(metrics), epoch, metrics)
        row = {**{k: v / max(n, 1) for k, v in sums.items()}, **{f"sel_{k}": v for k, v in metrics.items()}}
        self.history.append(row)
        return row

    def finish(self, ctx: Any) -> dict[str, Any]:
        self.best.restore(self.model)
        return {"best_epoch": self.best.epoch, "selection": self.best.metrics, "history": self.history,
                "alpha": self.alpha, "beta": self.beta}


@register_phase("undistilled")
class UndistilledPhase(DistillPhase):
    """The baseline row: the same student trained on labels alone (α = β = 0)."""

    distilled = False

    def agent(self, ctx: Any) -> nn.Module:
        if "undistilled" not in ctx.agents:
            clone = copy.deepcopy(ctx.student)
            clone.load_state_dict(ctx.initial_student_state)
            ctx.agents["undistilled"] = clone
        return ctx.agents["undistilled"]
