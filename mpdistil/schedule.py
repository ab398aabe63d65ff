"""Beyond the paper: distil from the teacher's earlier checkpoints first (``method.teacher_schedule``).

A teacher early in its fine-tuning is less sharp and easier for a small student to approximate; one at its
best epoch is the most accurate. With ``trainer.keep_teacher_checkpoints=true`` phase 1 keeps the
teacher's weights after every epoch (in its cache entry too). ``method.teacher_schedule=checkpoints``
then gives the distillation phases' soft targets and PKD states from checkpoint 0, 1, … up to the kept
(best) epoch, in that order: spread evenly over the student's epochs, or (``method.schedule_agreement``
set) moving to the next checkpoint at the start of an epoch once the student's predictions on train′
agree with the current checkpoint's on at least that fraction of examples. The meta-teacher T′ always
reads the final teacher.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Optional

import torch
from torch import nn

from mpdistil.config import ConfigError

SCHEDULE_FIELDS = ("method.teacher_schedule", "method.schedule_agreement")


class CheckpointBank(nn.Module):
    """The teacher's weights after each phase-1 epoch, as buffers (so caches and run checkpoints keep them).

    Its buffers are named ``e<epoch>__<parameter name with dots as __>``; loading a state creates them, so an
    empty bank takes any saved one.
    """

    def add(self, epoch: int, module: nn.Module) -> None:
        for name, value in module.state_dict().items():
            self.register_buffer(f"e{epoch}__{name.replace('.', '__')}", value.detach().to("cpu", copy=True))

    @property
    def epochs(self) -> list[int]:
        return sorted({int(key.split("__", 1)[0][1:]) for key in self._buffers})

    def state(self, epoch: int) -> dict[str, torch.Tensor]:
        prefix = f"e{epoch}__"
        return {key[len(prefix):].replace("__", "."): value for key, value in self._buffers.items()
                if key.startswith(prefix)}

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self._buffers.clear()
        for key, value in state_dict.items():
            self.register_buffer(key, value.detach().clone())
        return nn.modules.module._IncompatibleKeys([], [])


def check_schedule(cfg: Any, used: bool) -> None:
    """Values of the schedule's switches; ``used``: whether a phase of this run distils under the schedule."""
    m = cfg.method
    if m.schedule_agreement is not None and not 0.0 < m.schedule_agreement <= 1.0:
        raise ConfigError(f"method.schedule_agreement={m.schedule_agreement} must lie in (0, 1], or null to spread "
                          "the checkpoints evenly over the student's epochs")
    if not used or m.teacher_schedule != "checkpoints":
        return
    if len(cfg.teachers) > 1:
        raise ConfigError("method.teacher_schedule=checkpoints follows one teacher's checkpoints, and this run has "
                          f"{len(cfg.teachers)} teachers (teachers=[...]); set method.teacher_schedule=final or list "
                          "one teacher")
    if not cfg.trainer.keep_teacher_checkpoints:
        raise ConfigError("method.teacher_schedule=checkpoints distils from the teacher's per-epoch checkpoints; "
                          "set trainer.keep_teacher_checkpoints=true so that phase 1 keeps them")
    from mpdistil.data.registry import get_task_spec

    if m.schedule_agreement is not None and get_task_spec(cfg.task.name, cfg.task).kind == "regression":
        raise ConfigError("method.schedule_agreement compares predicted classes, and this is a regression task; "
                          "set method.schedule_agreement=null to spread the checkpoints over the epochs")


def spread(epoch: int, epochs: int, checkpoints: int) -> int:
    """The checkpoint (0-based, of ``checkpoints``) for student epoch ``epoch`` of ``epochs``: in order, each
    used for an equal share of the epochs, the last one (the final teacher) for the last share."""
    return min(checkpoints - 1, math.floor(epoch * checkpoints / max(epochs, 1)))


class TeacherSchedule:
    """Which checkpoint the soft targets of each student epoch come from, and their outputs on a split."""

    def __init__(self, ctx: Any, bank: CheckpointBank, best_epoch: Optional[int]) -> None:
        last = max(bank.epochs) if best_epoch is None else best_epoch
        self.epochs = [e for e in bank.epochs if e <= last]  # past the kept epoch, a checkpoint is not better
        if not self.epochs:
            raise ConfigError("the teacher's cache entry holds no per-epoch checkpoints; run phase 1 again with "
                              "trainer.keep_teacher_checkpoints=true (trainer.reuse_cache=false)")
        self.bank, self.current = bank, 0
        self.by_split: dict[str, dict[str, torch.Tensor]] = {}
        self.scratch = copy.deepcopy(ctx.teacher)  # the checkpoints' weights are loaded into this copy in turn
        self.loaded: Optional[int] = None
        self.history: list[dict[str, Any]] = []

    def choose(self, ctx: Any, epoch: int, layers: list[int], student_logits: Optional[torch.Tensor] = None) -> int:
        """The checkpoint index for ``epoch``: spread evenly, or advanced by the student's agreement on train′
        (``student_logits``) with the current checkpoint."""
        m = ctx.cfg.method
        entry: dict[str, Any] = {"epoch": epoch}
        if m.schedule_agreement is None:
            self.current = spread(epoch, m.student_epochs, len(self.epochs))
        elif student_logits is not None:
            teacher = self.outputs(ctx, "train", layers)["logits"].argmax(-1)
            agreement = float((student_logits.argmax(-1) == teacher).float().mean())
            entry["agreement_before"] = agreement
            if agreement >= m.schedule_agreement and self.current < len(self.epochs) - 1:
                self.current += 1
        entry["checkpoint_epoch"] = self.epochs[self.current]
        self.history.append(entry)
        return self.current

    def outputs(self, ctx: Any, split: str, layers: list[int]) -> dict[str, torch.Tensor]:
        """The current checkpoint's frozen-teacher outputs on ``split`` (recomputed when the checkpoint changes)."""
        from mpdistil.context import teacher_outputs

        if self.loaded != self.current:
            self.scratch.load_state_dict(self.bank.state(self.epochs[self.current]))
            self.loaded, self.by_split = self.current, {}
        if split not in self.by_split:
            self.by_split[split] = teacher_outputs(self.scratch, ctx.teacher_splits[split], ctx.rt, layers)
        return self.by_split[split]

    def record(self) -> dict[str, Any]:
        return {"checkpoints": self.epochs, "per_epoch": self.history}

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current, self.history = state["current"], state["history"]
