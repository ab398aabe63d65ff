"""Phases of a method. A method preset lists them; ``a+b`` runs b after every epoch of a.

A new phase is one file in this folder with a :class:`Phase` subclass decorated by ``@register_phase``;
the file is found and imported by itself. A phase declares everything the rest of the code needs to
know about it, so nothing outside this folder switches on a phase's name:

- ``row``: the table row it produces (name in results.json, printed title, whether it is a student
  whose fidelity to the teacher is measured);
- ``trains`` / ``reads``: the agents whose weights it changes, and those whose trained state it
  starts from (their identities become part of its own);
- ``cache``: the cache folder its result is kept in between runs (None: never cached);
- ``fields``: the config fields that determine its result, beyond :data:`mpdistil.identity.COMMON_FIELDS`
  (and :data:`~mpdistil.identity.FROZEN_TEACHER_FIELDS`, added when it reads the teacher without training it);
- ``options``: new ``method.<name>`` fields it adds to the typed config, with their defaults;
- ``reads_transfer``: whether it trains on the teacher-labelled transfer split (``data.transfer``), whose
  content then joins its identity;
- ``check(cfg)``: value checks of its fields, run before any work starts;
- ``aux_tasks(cfg)``: other tasks whose quiz splits it needs.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional

import torch
from torch import nn

from mpdistil.config import ConfigError
from mpdistil.identity import FROZEN_TEACHER_FIELDS
from mpdistil.training import BestKeeper, predict

if TYPE_CHECKING:
    from mpdistil.context import RunContext

PHASES: dict[str, type[Phase]] = {}


@dataclass(frozen=True)
class Row:
    """A row of the results table: ``name`` keys results.json's ``agents``; ``student`` rows are compared with
    the teacher (fidelity) and the last one is the run's final student."""

    name: str
    title: str
    student: bool = False


def register_phase(name: str) -> Callable[[type[Phase]], type[Phase]]:
    def wrap(cls: type[Phase]) -> type[Phase]:
        if name in PHASES and PHASES[name] is not cls:
            raise ValueError(f"phase {name!r} is registered twice ({PHASES[name].__module__}, {cls.__module__})")
        cls.name = name
        PHASES[name] = cls
        return cls

    return wrap


class Phase:
    """One stage of a run. ``run_epoch`` is called ``epochs(ctx)`` times between start and finish.

    A group calls ``prepare`` (create agents) and ``start`` (optimizers) on each phase; a resumed run then
    calls ``load_state_dict`` and continues with the next epoch, so ``run_epoch`` must depend only on the
    agents, the state dict and the epoch.
    """

    name: ClassVar[str] = "phase"
    row: ClassVar[Optional[Row]] = None
    trains: ClassVar[tuple[str, ...]] = ()
    reads: ClassVar[tuple[str, ...]] = ()
    cache: ClassVar[Optional[str]] = None
    fields: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[dict[str, Any]] = {}
    reads_transfer: ClassVar[bool] = False  # whether it trains on the transfer split (data.transfer) when there is one

    @classmethod
    def check(cls, cfg: Any) -> None:
        """Raise :class:`mpdistil.config.ConfigError` (one line: problem and fix) for an impossible value."""

    @classmethod
    def used(cls, cfg: Any) -> bool:
        """Whether the run's ``method.phases`` include this phase."""
        return any(cls.name in group.split("+") for group in cfg.method.phases)

    @classmethod
    def aux_tasks(cls, cfg: Any) -> list[str]:
        """Other tasks (by name) whose quiz splits this phase trains on."""
        return []

    @classmethod
    def identity_fields(cls) -> tuple[str, ...]:
        """Its own fields and options, and the frozen teacher's form when it reads the teacher without training it."""
        frozen = FROZEN_TEACHER_FIELDS if "teacher" in cls.reads and "teacher" not in cls.trains else ()
        return cls.fields + tuple(f"method.{k}" for k in cls.options) + frozen

    def epochs(self, ctx: RunContext) -> int:
        return 1

    def prepare(self, ctx: RunContext) -> None:
        """Create the agents this phase trains (also when their trained state comes from a cache)."""

    def start(self, ctx: RunContext) -> None:
        """Build optimizers, read what the phase needs."""

    def run_epoch(self, ctx: RunContext, epoch: int) -> dict[str, float]:
        raise NotImplementedError

    def finish(self, ctx: RunContext) -> dict[str, Any]:
        """Restore the best state and return this phase's record for results.json."""
        return {}

    def loaded(self, ctx: RunContext) -> None:
        """Called instead of training when the group's result came from the cache."""

    def state_dict(self) -> dict[str, Any]:
        """What ``run_epoch`` carries from one epoch to the next beyond the agents' weights (optimizers,
        best-so-far state, history), for the run's checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint; called after ``start``."""

    def close(self, ctx: RunContext) -> None:
        """Release what ``start`` holds, also when the group failed."""

    def modules(self, ctx: RunContext) -> dict[str, nn.Module]:
        """The trained modules a cache entry keeps, by agent name."""
        return {name: ctx.agent(name) for name in self.trains}

    def produces_row(self, ctx: RunContext) -> bool:
        return self.row is not None and self.epochs(ctx) > 0

    def row_agent(self, ctx: RunContext) -> Optional[nn.Module]:
        """The module the row evaluates (None when the row has its own :meth:`row_logits`)."""
        return ctx.agent(self.trains[0]) if self.trains else None

    def row_logits(self, ctx: RunContext, split: str) -> torch.Tensor:
        agent = self.row_agent(ctx)
        return predict(agent, ctx.splits_for(agent)[split], ctx.rt)["logits"]


class TrainingPhase(Phase):
    """A phase that trains with optimizers, keeps a best state (``self.best``) and a ``self.history``:
    its checkpoint state is those, named by ``optimizers``."""

    optimizers: ClassVar[tuple[str, ...]] = ("opt",)

    def __init__(self) -> None:
        self.best = BestKeeper(self.name)
        self.history: list[dict[str, float]] = []

    def end_epoch(self, ctx: RunContext, module: nn.Module, epoch: int, sums: dict[str, float], steps: int,
                  metrics: Optional[Callable[[str], dict[str, float]]] = None, **extra: float) -> dict[str, float]:
        """Score ``module`` on the selection split (by ``metrics(split)``, default: its task metrics), keep it if
        best, log the epoch's means."""
        metrics = ctx.select(self.best, module, epoch, metrics or (lambda split: ctx.evaluate(module, split)))
        sums = ctx.rt.world.sum_floats(sums)  # each rank summed its share of every batch's mean
        row = {**{k: v / max(steps, 1) for k, v in sums.items()}, **{f"sel_{k}": v for k, v in metrics.items()},
               **extra}
        self.history.append(row)
        return row

    def state_dict(self) -> dict[str, Any]:
        return {**{name: getattr(self, name).state_dict() for name in self.optimizers},
                "best": self.best.state_dict(), "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.optimizers:
            getattr(self, name).load_state_dict(state[name])
        self.best.load_state_dict(state["best"])
        self.history = state["history"]


# What every phase that trains a student from the initial student depends on.
STUDENT_FIELDS = ("model.teacher", "model.student", "model.student_layers", "model.student_init",
                  "method.student_epochs", "method.student_lr", "method.authors_no_dropout")


def check_student(cfg: Any) -> None:
    m = cfg.method
    if m.student_epochs <= 0:
        raise ConfigError(f"method.student_epochs={m.student_epochs} must be a positive integer")
    if m.student_lr <= 0:
        raise ConfigError(f"method.student_lr={m.student_lr} must be > 0")


def check_distillation(cfg: Any) -> None:
    m = cfg.method
    if not 0.0 <= m.alpha <= 1.0:
        raise ConfigError(f"method.alpha={m.alpha} must lie in [0, 1]; e.g. method.alpha=0.5")
    if m.temperature <= 0:
        raise ConfigError(f"method.temperature={m.temperature} must be > 0; e.g. method.temperature=5")
    if m.beta < 0:
        raise ConfigError(f"method.beta={m.beta} must be >= 0")


def attach_pkd_projection(ctx: RunContext, student: nn.Module) -> None:
    """With β > 0 and ``method.pkd_projection=linear``, give a student its learned maps to the teacher's width before
    it trains or loads a state that has them (:meth:`mpdistil.models.agent.Agent.add_pkd_projection`)."""
    m = ctx.cfg.method
    if m.beta > 0 and m.pkd_projection == "linear":
        student.add_pkd_projection(ctx.teacher.layer_width, int(ctx.cfg.seed))


def accumulate(sums: dict[str, float], values: dict[str, float], share: float = 1.0) -> None:
    """Add a batch's logged means; ``share``: this rank's part of the batch (``Runtime.share``), so that the sums
    over ranks (:meth:`TrainingPhase.end_epoch`) are the whole batches' means."""
    for k, v in values.items():
        sums[k] = sums.get(k, 0.0) + v * share


def _discover() -> None:
    """Import every module of this folder: a new phase file registers itself."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_discover()
