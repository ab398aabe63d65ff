"""One small logging interface; phases never call W&B directly, and logging never fails a run."""
from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence


class Logger:
    """The no-op logger (``logger=none``): nothing is imported, nothing is written."""

    def log(self, phase: str, step: int, metrics: dict[str, Any]) -> None:
        """Scalars of one phase at that phase's step (``<phase>/step`` is the x axis)."""

    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table, e.g. one curriculum episode's trajectory or the flip table."""

    def image(self, name: str, path: Path) -> None:
        """A plot already written to disk."""

    def summary(self, values: dict[str, Any]) -> None:
        """Run-level values (best episode, final metrics)."""

    def finish(self) -> None:
        """Flush and close."""


def _never_raise(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(self: WandbLogger, *args: Any, **kwargs: Any) -> Any:
        if self.run is None:
            return None
        try:
            return fn(self, *args, **kwargs)
        except Exception as exc:  # logging must never end a run
            self._warn(f"{fn.__name__} failed: {exc}")
            return None

    return wrapper


class WandbLogger(Logger):
    """W&B, offline by default: files under <run dir>/wandb, no account or network needed."""

    def __init__(self, cfg: Any, config: dict[str, Any], out_dir: Path, name: str) -> None:
        self.run = None
        self._warned = False
        self._axes: set[str] = set()
        try:
            import wandb

            self._wandb = wandb
            self.run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, dir=str(out_dir),
                                  config=config, name=name, tags=list(cfg.tags), reinit="finish_previous")
        except Exception as exc:
            self._warn(f"could not start W&B ({exc}); continuing without it")
            self.run = None

    def _warn(self, message: str) -> None:
        if not self._warned:
            warnings.warn(f"[mpdistil] W&B logging: {message}", stacklevel=3)
            self._warned = True

    def _axis(self, phase: str) -> None:
        if phase not in self._axes:
            self._wandb.define_metric(f"{phase}/step")
            self._wandb.define_metric(f"{phase}/*", step_metric=f"{phase}/step")
            self._axes.add(phase)

    @_never_raise
    def log(self, phase: str, step: int, metrics: dict[str, Any]) -> None:
        self._axis(phase)
        payload = {f"{phase}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        payload[f"{phase}/step"] = step
        self.run.log(payload)

    @_never_raise
    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.run.log({name: self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    @_never_raise
    def image(self, name: str, path: Path) -> None:
        self.run.log({name: self._wandb.Image(str(path))})

    @_never_raise
    def summary(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            self.run.summary[k] = v

    @_never_raise
    def finish(self) -> None:
        self.run.finish()
        self.run = None


def build_logger(cfg: Any, config: dict[str, Any], out_dir: Path, name: str) -> Logger:
    if cfg.name == "none" or cfg.mode == "disabled":
        return Logger()
    return WandbLogger(cfg, config, out_dir, name)

