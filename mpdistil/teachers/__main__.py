"""``python -m mpdistil.teachers audit task=<task> teachers=[<candidate>,...] [any run override]``.

``teachers=`` is short for ``audit.teachers=``; every other argument is an override of the project's config (the
same ``conf/`` and checks as ``main.py``). The audit writes into Hydra's run folder, by default
``outputs/audit/<task>/<time>/`` (``hydra.run.dir=<folder>`` chooses another).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import hydra
from omegaconf import DictConfig

from mpdistil.config import ConfigError, register_configs
from mpdistil.errors import check_presets, fail_cleanly
from mpdistil.teachers.plan import CONF

USAGE = (
    "usage: python -m mpdistil.teachers audit task=<task> teachers=[<model preset or model.teacher source>,...] "
    "[overrides]"
)
RUN_DIR = "hydra.run.dir='outputs/audit/${task.name}/${now:%Y-%m-%d_%H-%M-%S}'"


def arguments(argv: Sequence[str]) -> list[str]:
    """Hydra's arguments for the audit: the command word dropped, ``teachers=`` spelt in full, the audit's folder."""
    if not argv or argv[0] != "audit":
        raise ConfigError(f"unknown command {argv[0] if argv else '(none)'!r}; {USAGE}")
    args = [f"audit.{a}" if a.partition("=")[0] == "teachers" else a for a in argv[1:]]
    if not any(a.partition("=")[0] == "hydra.run.dir" for a in args):
        args.append(RUN_DIR)
    if not any(a.partition("=")[0] == "hydra.job.name" for a in args):
        args.append("hydra.job.name=audit")  # the log is audit.log, not __main__.log
    return args


@hydra.main(config_path=str(CONF), config_name="config", version_base="1.3")
def _audit(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from mpdistil.teachers.audit import run_audit

    hydra_cfg = HydraConfig.get()
    with fail_cleanly():
        run_audit(list(hydra_cfg.overrides.task), Path(hydra_cfg.runtime.output_dir))


def main(argv: Sequence[str]) -> None:
    with fail_cleanly():
        args = arguments(argv)
    check_presets(args, CONF)
    register_configs()
    sys.argv = [sys.argv[0], *args]
    _audit()


if __name__ == "__main__":
    main(sys.argv[1:])
