"""Phases of a method, by name. A method preset lists them; ``a+b`` runs b after every epoch of a.

A new phase is one file here with a :class:`Phase` subclass decorated by ``@register_phase``.
"""
from __future__ import annotations

from typing import Any, Callable

PHASES: dict[str, type] = {}


def register_phase(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        cls.name = name
        PHASES[name] = cls
        return cls

    return wrap


class Phase:
    """One stage of a run. ``run_epoch`` is called ``epochs(ctx)`` times between start and finish.

    A resumed run calls ``prepare`` (agents), ``start``, then ``load_state_dict`` and continues with
    the next epoch, so ``run_epoch`` must depend only on the agents, the state dict and the epoch.
    """

    name = "phase"

    def epochs(self, ctx: Any) -> int:
        return 1

    def prepare(self, ctx: Any) -> None:
        """Create the agents this phase trains (also when their trained state comes from a cache)."""

    def start(self, ctx: Any) -> None:
        """Build optimizers, load caches."""

    def run_epoch(self, ctx: Any, epoch: int) -> dict[str, float]:
        raise NotImplementedError

    def finish(self, ctx: Any) -> dict[str, Any]:
        """Restore the best state and return this phase's record for results.json."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What ``run_epoch`` carries from one epoch to the next beyond the agents' weights (optimizers,
        best-so-far state, history), for the run's checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint; called after ``start``."""

    def close(self, ctx: Any) -> None:
        """Release what ``start`` holds (locks), also when the group failed."""


class TrainingPhase(Phase):
    """A phase that trains with optimizers, keeps a best state (``self.best``) and a ``self.history``:
    its checkpoint state is those, named by ``optimizers``."""

    optimizers: tuple[str, ...] = ("opt",)

    def state_dict(self) -> dict[str, Any]:
        return {**{name: getattr(self, name).state_dict() for name in self.optimizers},
                "best": self.best.state_dict(), "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.optimizers:
            getattr(self, name).load_state_dict(state[name])
        self.best.load_state_dict(state["best"])
        self.history = state["history"]


def _load_all() -> None:
    from mpdistil.phases import curriculum, distill, meta_teacher, metadistil, teacher  # noqa: F401


_load_all()
