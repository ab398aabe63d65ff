"""Turning bad input into one clear line and a non-zero exit, instead of a traceback."""
from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path
from typing import Iterator, Sequence

from mpdistil.config import ConfigError
from mpdistil.data.types import DataError
from mpdistil.training import NonFiniteLossError

USER_ERRORS = (ConfigError, DataError, NonFiniteLossError)
GROUPS = ("task", "model", "method", "trainer", "logger", "experiment", "debug")


def _die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def check_presets(argv: Sequence[str], conf_dir: Path) -> None:
    """Unknown presets (``task=foo``) fail here with one line, before Hydra prints its long listing."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if not sep or key not in GROUPS or value == "":
            continue
        if value == "null" and not arg.startswith("~"):
            hint = "experiment=paper for the paper's hyperparameters, or " if key == "experiment" else ""
            _die(f"{arg} cannot drop a config group on the command line; use {hint}~{key}")
        value = value.strip()
        for choice in value.strip("[]").split(","):
            if choice.startswith(("choice(", "range(", "glob(")):
                continue
            if not (conf_dir / key / f"{choice}.yaml").is_file():
                known = sorted(p.stem for p in (conf_dir / key).glob("*.yaml"))
                _die(f"unknown {key} preset {choice!r}; choose one of {', '.join(known)} ({key}=<name>)")


HYDRA_ONLY = {".hydra", "main.log"}  # what Hydra writes into a run folder before the run starts


def discard_untouched(folder: Path) -> None:
    """Remove a run folder that holds only Hydra's own files: a run refused at its checks leaves nothing behind,
    while a folder with anything of a run in it (a resumed or diverged run's checkpoints) is kept."""
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= HYDRA_ONLY:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def fail_cleanly(run_dir: Path | None = None) -> Iterator[None]:
    """User errors become `error: <one line>` and exit code 2 (``run_dir`` removed if nothing but Hydra wrote
    into it); bugs keep their traceback."""
    try:
        yield
    except USER_ERRORS as exc:
        if run_dir is not None:
            discard_untouched(run_dir)
        _die(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
