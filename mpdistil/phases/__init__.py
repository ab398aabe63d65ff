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
    """One stage of a run. ``run_epoch`` is called ``epochs(ctx)`` times between start and finish."""

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


def _load_all() -> None:
    from mpdistil.phases import curriculum, distill, meta_teacher, metadistil, teacher  # noqa: F401


_load_all()
