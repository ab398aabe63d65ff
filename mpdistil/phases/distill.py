"""Phase 2: distil the student from the (meta-)teacher, one epoch at a time (KD / PKD).

L_S = α·τ²·D(softmax(z_T'/τ), softmax(z_S/τ)) + (1 − α)·CE(z_S, y) + β·Σ_l MSE(h_S^l, h_T^m(l)).
The frozen teacher's logits and [CLS] states come from a per-run cache, computed once. Soft
targets come from the meta-teacher T' once phase 3 has trained it, else from the teacher.
``undistilled`` is the same loop with α = β = 0 on a fresh copy of the initial student.
Beyond the paper, the soft term can leave out the train′ targets furthest beyond the current student
(``method.frontier_filter``), the soft targets can carry fixed Gaussian noise (``method.teacher_noise``), and
inputs without labels that only the teacher labels (``data.transfer``) add batches with the soft and PKD terms
alone, shuffled among the train′ batches.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from mpdistil.config import ConfigError
from mpdistil.context import RunContext
from mpdistil.data.encode import model_inputs
from mpdistil.frontier import SOFT_TERM_FIELDS, FrontierLog, check_frontier, filter_epoch, logit_noise
from mpdistil.losses import distillation_loss, layer_map
from mpdistil.mixing import build_mix, learn_epoch, mix_logits, weights_plot
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
from mpdistil.pilot import cached_teacher_cls
from mpdistil.schedule import SCHEDULE_FIELDS, TeacherSchedule, check_schedule
from mpdistil.training import predict


def teacher_confidence(logits: torch.Tensor, kind: str) -> dict[str, float]:
    """How sure the frozen teacher is on inputs it alone labels: mean top-class probability and the share of
    inputs above 0.9 (classification and multiple choice; nothing for regression)."""
    if kind == "regression" or logits.numel() == 0:
        return {}
    top = torch.softmax(logits.float(), dim=-1).max(dim=-1).values
    return {"teacher_confidence": float(top.mean()), "teacher_confident_share": float((top > 0.9).float().mean())}


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
                               "method.layer_map", "method.meta_input", "method.pkd_projection") + SOFT_TERM_FIELDS \
        + SCHEDULE_FIELDS
    distilled = True
    reads_transfer = True
    salt = 2

    @classmethod
    def check(cls, cfg: Any) -> None:
        check_student(cfg)
        check_distillation(cfg)
        check_frontier(cfg)
        check_schedule(cfg, cls.used(cfg))
        m = cfg.method
        if cfg.data.transfer and cls.used(cfg) and m.teacher_noise == "logit_gauss":
            raise ConfigError("data.transfer with method.teacher_noise=logit_gauss is not supported (the noise is "
                              "drawn for train' targets only); set method.teacher_noise=none or label_flip, or "
                              "data.transfer=[]")

    def epochs(self, ctx: RunContext) -> int:
        return ctx.cfg.method.student_epochs

    def prepare(self, ctx: RunContext) -> None:
        student = self.row_agent(ctx)
        if self.distilled:
            attach_pkd_projection(ctx, student)
            if ctx.further_teachers and f"{self.trains[0]}_teacher_mix" not in ctx.agents:
                ctx.agents[f"{self.trains[0]}_teacher_mix"] = build_mix(
                    ctx.cfg, 1 + len(ctx.further_teachers), ctx.task.num_outputs).to(ctx.rt.device)

    def modules(self, ctx: RunContext) -> dict[str, nn.Module]:
        """The student, and the teacher mix it learned from when there are several teachers (a cache keeps it)."""
        mix = ctx.mixture(self.trains[0])
        return {**super().modules(ctx), **({f"{self.trains[0]}_teacher_mix": mix} if mix is not None else {})}

    def start(self, ctx: RunContext) -> None:
        m = ctx.cfg.method
        # the undistilled student reads no distillation setting: its loss is the hard-label term alone
        self.alpha, self.beta, self.temperature, self.soft_loss = (
            (m.alpha, m.beta, m.temperature, m.soft_loss) if self.distilled else (0.0, 0.0, 1.0, "kl"))
        self.model = self.row_agent(ctx)
        self.opt = ctx.rt.optimizer(self.model.parameters(), m.student_lr)
        ctx.optimizers[self.trains[0]] = self.opt
        self.pairs = layer_map(self.model.num_layers, ctx.teacher.num_layers, m.layer_map) if self.beta > 0 else []
        # the transfer split: inputs only the teacher labels, so only a phase with a soft or PKD term reads them
        self.transfer = ctx.splits.get("transfer") if self.reads_transfer and (self.alpha > 0 or self.beta > 0) \
            else None
        # the frozen teacher's outputs the soft and PKD terms read, per split: the final teacher's, or with
        # method.teacher_schedule=checkpoints the current checkpoint's (set at the start of every epoch)
        self.schedule = TeacherSchedule(ctx, ctx.agents["teacher_checkpoints"],
                                        ctx.records["teacher"]["best_epoch"]) \
            if self.distilled and m.teacher_schedule == "checkpoints" else None
        self.out: dict[str, dict[str, torch.Tensor]] = {}
        # several teachers: the mix of their soft targets, and the optimizer of its weights when they are learned
        self.mix = ctx.mixture(self.trains[0]) if self.distilled else None
        self.mix_opt = torch.optim.Adam(self.mix.parameters(), lr=m.mix_lr) \
            if self.mix is not None and self.mix.learned else None
        if self.distilled:
            self.out = {split: ctx.teacher_cache(split) for split in ("train", "transfer")
                        if split == "train" or self.transfer is not None}
        self.start_frontier(ctx)

    def start_frontier(self, ctx: RunContext) -> None:
        """Filtering and logit noise act on the soft term only, so a phase without one reads neither switch."""
        m = ctx.cfg.method
        soft = self.distilled and self.alpha > 0
        self.frontier = (m.frontier_filter, m.frontier_keep, m.frontier_warmup, m.frontier_mode) \
            if soft and m.frontier_filter != "none" else None
        self.frontier_log = FrontierLog()
        self.noise = logit_noise(tuple(self.out["train"]["logits"].shape), m.teacher_noise_scale, ctx.generator(10)) \
            if soft and m.teacher_noise == "logit_gauss" else None

    def soft_targets(self, ctx: RunContext, idx: torch.Tensor, choices: int, split: str = "train",
                     labels: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Soft targets of examples ``idx`` of ``split`` (train′ or transfer, ``labels`` where known): the
        teacher's (:meth:`first_targets`), or with several teachers their mixture, in which that teacher's place is
        taken by T′ once phase 3 has trained it."""
        first = self.first_targets(ctx, idx, choices, split)
        if first is None or self.mix is None:
            return first
        with torch.no_grad():
            stack = ctx.teacher_stack(split, idx, first.float())
            return mix_logits(stack, self.mix.weights(stack, labels, split, idx), ctx.task.kind, self.temperature)

    def first_targets(self, ctx: RunContext, idx: torch.Tensor, choices: int,
                      split: str = "train") -> Optional[torch.Tensor]:
        """T′'s logits once phase 3 has trained it (it reads the final teacher's representations), else the
        frozen teacher's."""
        if self.alpha == 0:
            return None
        mt = ctx.agents.get("meta_teacher")
        if mt is not None and mt.trained:
            h = ctx.representation(ctx.teacher_cache(split))[idx]
            with torch.no_grad():
                return mt(h.view(-1, h.shape[-1]).to(ctx.rt.device), "teacher", choices)
        return self.out[split]["logits"][idx].to(ctx.rt.device)

    def targets(self, ctx: RunContext, idx: torch.Tensor, choices: int,
                labels: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """The train′ soft targets the student is distilled towards: :meth:`soft_targets` plus the fixed logit noise
        of these examples when ``method.teacher_noise=logit_gauss``."""
        soft = self.soft_targets(ctx, idx, choices, "train", labels)
        if soft is None or self.noise is None:
            return soft
        return soft + self.noise[idx].to(soft.device, soft.dtype)

    def frontier_weights(self, ctx: RunContext, epoch: int) -> Optional[torch.Tensor]:
        """This epoch's weight of each train′ example's soft term (None: all 1), from the student's predictions at
        the epoch's start; nothing is filtered during the first ``method.frontier_warmup`` epochs. Only train′ is
        ranked: transfer targets are always distilled, so the filter means the same at every coverage and its
        record (whether it removed the teacher's mistakes) rests on gold labels."""
        if self.frontier is None:
            return None
        criterion, keep, warmup, mode = self.frontier
        if epoch < warmup:
            return None
        split = ctx.splits["train"]
        student = predict(self.model, split, ctx.rt)["logits"]
        with torch.no_grad():
            targets = self.targets(ctx, torch.arange(len(split)), split.num_choices, split.labels)
        weights, record = filter_epoch(student, targets, split.labels, criterion, keep, mode, self.temperature)
        self.frontier_log.add(epoch, record)
        return weights

    def epoch_batches(self, ctx: RunContext, epoch: int) -> Iterable[tuple[bool, dict[str, Any]]]:
        """(from the transfer split?, batch): train′ shuffled as always; with a transfer split, its shuffled batches
        too, the two kinds in one seeded order."""
        rt, size = ctx.rt, ctx.cfg.trainer.batch_size
        train = ((False, b) for b in rt.batches(ctx.splits["train"], size, shuffle=True,
                                                generator=ctx.generator(self.salt, epoch)))
        if self.transfer is None:
            return train
        both = [*train, *((True, b) for b in rt.batches(self.transfer, size, shuffle=True,
                                                         generator=ctx.generator(self.salt, epoch, 1)))]
        order = torch.randperm(len(both), generator=ctx.generator(self.salt, epoch, 2)).tolist()
        return [both[i] for i in order]

    def follow_schedule(self, ctx: RunContext, epoch: int) -> None:
        """With a teacher schedule: this epoch's checkpoint, and its outputs as the frozen teacher's."""
        if self.schedule is None:
            return
        agreeing = ctx.cfg.method.schedule_agreement is not None and epoch > 0
        student = predict(self.model, ctx.splits["train"], ctx.rt)["logits"] if agreeing else None
        layers = ctx.mapped_teacher_layers() if self.beta > 0 else []
        self.schedule.choose(ctx, epoch, layers, student)
        self.out = {split: self.schedule.outputs(ctx, split, layers) for split in self.out}

    def run_epoch(self, ctx: RunContext, epoch: int) -> dict[str, float]:
        rt, m, kind = ctx.rt, ctx.cfg.method, ctx.task.kind
        self.follow_schedule(ctx, epoch)
        if self.mix is not None:
            sizes = {split: len(ctx.splits[split]) for split in self.out}
            self.mix.begin_epoch(sizes, ctx.generator(self.salt, epoch, 4))
        weights = self.frontier_weights(ctx, epoch)
        self.model.train(not m.authors_no_dropout)
        choices = ctx.splits["train"].num_choices
        sums: dict[str, float] = {}
        transfer_sums: dict[str, float] = {}
        n = n_transfer = 0
        batches = self.epoch_batches(ctx, epoch)
        for from_transfer, batch in tqdm(batches, desc=f"{self.name} {epoch + 1}", disable=not rt.progress,
                                         leave=False):
            idx = batch["index"].cpu()
            cache = self.out.get("transfer" if from_transfer else "train")  # none for the undistilled student
            with rt.autocast():
                out = self.model(**model_inputs(batch), output_hidden=bool(self.pairs))
                student_cls = teacher_cls = None
                if self.pairs:
                    student_cls = [out.pkd_states[s - 1] for s, _ in self.pairs]
                    t = cache["cls"][idx].to(rt.device)
                    t = t.view(-1, t.shape[-2], t.shape[-1])
                    teacher_cls = [t[:, j] for j in range(len(self.pairs))]
                if from_transfer:  # no label: the soft and PKD terms alone, on the teacher's (or T''s) targets
                    targets, labels, soft_weights = self.soft_targets(ctx, idx, choices, "transfer"), None, None
                else:
                    targets, labels = self.targets(ctx, idx, choices, batch["labels"]), batch["labels"]
                    soft_weights = None if weights is None else weights[idx].to(rt.device)
                loss, parts = distillation_loss(out.logits, targets, labels, kind, self.alpha, self.temperature,
                                                self.soft_loss, self.beta, student_cls, teacher_cls,
                                                soft_weights=soft_weights)
            rt.step(loss, self.opt, self.name, batch=batch)
            if from_transfer:
                accumulate(transfer_sums, {"loss": float(loss.detach()), **parts}, rt.share(batch))
                n_transfer += 1
            else:
                accumulate(sums, {"loss": float(loss.detach()), **parts}, rt.share(batch))
                n += 1
        transfer_sums = rt.world.sum_floats(transfer_sums)
        extra = {f"transfer_{k}": v / n_transfer for k, v in transfer_sums.items()}
        if self.frontier_log.epochs and self.frontier_log.epochs[-1]["epoch"] == epoch:
            extra["frontier_filtered"] = float(self.frontier_log.epochs[-1]["count"])
        if self.mix_opt is not None:
            extra.update(self.learn_mix(ctx, epoch))
        return self.end_epoch(ctx, self.model, epoch, sums, n, **extra)

    def learn_mix(self, ctx: RunContext, epoch: int) -> dict[str, float]:
        """After the epoch: one pass of the learned mixing weights over the quiz split, on this student's feedback."""
        m, choices = ctx.cfg.method, ctx.splits["train"].num_choices

        def stack(batch: dict[str, Any]) -> torch.Tensor:
            idx = batch["index"].cpu()
            with torch.no_grad():
                return ctx.teacher_stack("train", idx, self.first_targets(ctx, idx, choices).float())

        teacher_cls = cached_teacher_cls(ctx, "train") if self.beta > 0 and m.pilot_pkd else None
        stats = learn_epoch(ctx, self.mix, self.mix_opt, self.trains[0], stack, epoch, self.salt, teacher_cls)
        weights = torch.tensor(self.mix.summary()["weights"])
        if weights.dim() == 1:  # global weights join the epoch's logged row (per-class ones are in the record)
            stats.update({f"mix_weight_{name}": float(w) for name, w in
                          zip(["teacher", *ctx.further_teachers], weights)})
        return stats

    def finish(self, ctx: RunContext) -> dict[str, Any]:
        self.best.restore(self.model)
        record = {"best_epoch": self.best.epoch, "selection": self.best.metrics, "history": self.history,
                  "alpha": self.alpha, "beta": self.beta}
        if self.transfer is not None:
            record["transfer"] = {"examples": len(self.transfer),
                                  **teacher_confidence(ctx.teacher_cache("transfer")["logits"], ctx.task.kind)}
        if self.frontier is not None:
            criterion, keep, warmup, mode = self.frontier
            record["frontier"] = {"criterion": criterion, "keep": keep, "warmup": warmup, "mode": mode,
                                  "transfer_unfiltered": 0 if self.transfer is None else len(self.transfer),
                                  **self.frontier_log.state_dict(), "summary": self.frontier_log.summary()}
        if self.schedule is not None:
            record["teacher_schedule"] = self.schedule.record()
        if self.mix is not None:
            record["teacher_mix"] = self.mix_record(ctx)
        if self.noise is not None:
            record["teacher_noise"] = {"kind": "logit_gauss", "scale": ctx.cfg.method.teacher_noise_scale,
                                       "realised_std": float(self.noise.std()) if self.noise.numel() > 1 else 0.0,
                                       "realised_mean": float(self.noise.mean()), "entries": self.noise.numel()}
        return record

    def mix_record(self, ctx: RunContext) -> dict[str, Any]:
        """Which teachers were mixed how; learned weights after every epoch (and their plot); the mixture's own
        metrics on the selection and first dev split (an ensemble at τ = 1 with label-free weights)."""
        names = ["teacher", *ctx.further_teachers]
        record: dict[str, Any] = {"mix": self.mix.name, "teachers": {n: ctx.sources.get(n, n) for n in names},
                                  **self.mix.summary(), "history": self.mix.history}
        if self.mix.learned:
            record.update(estimator=ctx.cfg.method.mix_estimator, scope=self.mix.scope)
            plot = weights_plot(ctx.out_dir / f"teacher_mix_{self.trains[0]}.png", self.mix, names)
            if plot:
                ctx.logger.image(f"teacher_mix_{self.trains[0]}", plot)
        splits = dict.fromkeys(s for s in (ctx.selection_split, ctx.dev_names[0]) if s in ctx.splits
                               and ctx.splits[s].labels is not None)
        record["metrics"] = {s: ctx.metrics_from_logits(ctx.mixed_teacher_logits(s, owner=self.trains[0]), s)
                             for s in splits}
        return record

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "frontier": self.frontier_log.state_dict(),
                **({"schedule": self.schedule.state_dict()} if self.schedule is not None else {}),
                **({"mix_history": self.mix.history} if self.mix is not None else {}),
                **({"mix_opt": self.mix_opt.state_dict()} if self.mix_opt is not None else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.mix is not None:
            self.mix.history = state["mix_history"]
        if self.mix_opt is not None:
            self.mix_opt.load_state_dict(state["mix_opt"])
        if "frontier" in state:
            self.frontier_log.load_state_dict(state["frontier"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])

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
    reads_transfer = False
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

    def first_targets(self, ctx: RunContext, idx: torch.Tensor, choices: int,
                      split: str = "train") -> Optional[torch.Tensor]:
        return self.out[split]["logits"][idx].to(ctx.rt.device) if self.alpha > 0 else None
