"""Entry point: ``python main.py [group=preset ...] [key=value ...]`` (Hydra; ``-m`` for sweeps)."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mpdistil.config import register_configs
from mpdistil.errors import check_presets, fail_cleanly

CONF = Path(__file__).resolve().parent / "conf"
register_configs()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Returns the final student's selection-split score, the objective of `hydra/sweeper=optuna_search`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mpdistil.results import final_score
    from mpdistil.run import run
    from mpdistil.training import NonFiniteLossError

    with fail_cleanly():
        try:
            return final_score(run(cfg))
        except NonFiniteLossError as exc:
            if HydraConfig.get().mode != RunMode.MULTIRUN:
                raise
            print(f"error: {exc}", file=sys.stderr)  # a diverged trial is recorded; the sweep goes on
            return float("nan")


if __name__ == "__main__":
    check_presets(sys.argv[1:], CONF)
    main()
