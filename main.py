"""Entry point: ``python main.py [group=preset ...] [key=value ...]`` (Hydra; ``-m`` for sweeps)."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mpdistil.config import register_configs
from mpdistil.errors import fail_cleanly, check_presets

CONF = Path(__file__).resolve().parent / "conf"
register_configs()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Returns the final student's selection-split score, the objective of `hydra/sweeper=optuna_search`."""
    from mpdistil.results import final_score
    from mpdistil.run import run

    with fail_cleanly():
        return final_score(run(cfg))


if __name__ == "__main__":
    check_presets(sys.argv[1:], CONF)
    main()
