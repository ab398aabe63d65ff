"""Compose the real Hydra config tree in-process and run it on tiny settings."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mpdistil.config import register_configs

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
FAST = ["debug=fast"]  # conf/debug/fast.yaml: a tiny model, one epoch per agent, two short curriculum episodes


def make_cfg(*overrides: str) -> DictConfig:
    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def run_cfg(out_dir: Path, *overrides: str, cache_dir: Path | None = None) -> dict[str, Any]:
    from mpdistil.run import run

    extra = [f"cache_dir={cache_dir or out_dir / 'cache'}"]
    return run(make_cfg(*FAST, *extra, *overrides), out_dir=out_dir)


def main_py(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def custom_task(folder: Path) -> list[str]:
    """Overrides for a small two-class custom task written into ``folder`` (no benchmark files needed)."""
    train = folder / "train.csv"
    train.write_text("text,label\n" + "".join(f"a {w} film number {i},{w}\n" for i in range(24)
                                              for w in ("good", "bad")))
    return ["task=custom", f"task.train={train}", f"task.dev={train}", "task.text_fields=[text]",
            "task.label_field=label"]
