"""Entry point: ``python main.py [group=preset ...] [key=value ...]`` (Hydra; ``-m`` for sweeps)."""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
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

    with fail_cleanly(Path(HydraConfig.get().runtime.output_dir)):
        try:
            return final_score(run(cfg))
        except NonFiniteLossError as exc:
            if HydraConfig.get().mode != RunMode.MULTIRUN:
                raise
            print(f"error: {exc}", file=sys.stderr)  # a diverged trial is recorded; the sweep goes on
            return float("nan")


def follower_overrides(argv: list[str]) -> list[str]:
    """Under torchrun, the command line of a rank other than 0: its Hydra writes no folder or log of its own (the
    run's folder is rank 0's, mpdistil/run.py)."""
    scratch = tempfile.mkdtemp(prefix="mpdistil-hydra-")
    atexit.register(shutil.rmtree, scratch, True)
    kept = [arg for arg in argv if not arg.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
    return kept + [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/job_logging=disabled",
                   "hydra/hydra_logging=disabled"]


if __name__ == "__main__":
    check_presets(sys.argv[1:], CONF)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and any(a in ("-m", "--multirun") for a in sys.argv[1:]):
        sys.exit("error: one torchrun runs one job, not a sweep (-m); run one torchrun per job, or sweep with "
                 "hydra/launcher=submitit_slurm and hydra.launcher.tasks_per_node=N to run each job on N tasks")
    if int(os.environ.get("RANK", "0")) > 0:
        sys.argv[1:] = follower_overrides(sys.argv[1:])
    main()
