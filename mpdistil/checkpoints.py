"""Resumable runs: a checkpoint in ``<run dir>/checkpoint/`` after every completed epoch/episode.

A run killed at any moment, started again in the same folder (``hydra.run.dir=<folder>``),
continues from its last checkpoint and ends with exactly the results of an uninterrupted run:
the checkpoint holds every agent, optimizer, best-so-far state, phase history, the evaluated
rows, the RNG states and where the run was. Data order needs no state: each epoch's order comes
from ``ctx.generator(phase, epoch)``.

Layout: ``state-g<group>-e<epoch>.pt`` (tensors and plain containers, read with ``weights_only=True``)
and ``meta.json`` naming it, with its sha256 and the run's identity (:mod:`mpdistil.identity`: every
field that can change a result, and the data's content hash). ``meta.json`` is replaced last and
older state files are deleted after it, so a kill at any moment leaves one complete checkpoint behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from mpdistil.atomic import torch_load, torch_save, write_json
from mpdistil.config import ConfigError
from mpdistil.distributed import World
from mpdistil.identity import file_checksum, fingerprint
from mpdistil.seeding import rng_state, set_rng_state

FORMAT = 2
KILL_ENV, KILL_SIGNAL_ENV = "MPDISTIL_KILL_AT", "MPDISTIL_KILL_SIGNAL"


class CheckpointError(ConfigError):
    """A checkpoint that must not be resumed: unreadable, corrupt, or written for another config or data."""


def kill_point(where: str) -> None:
    """Test hook: ``MPDISTIL_KILL_AT=<where>`` SIGKILLs the run here, as a node failure would
    (``MPDISTIL_KILL_SIGNAL=SIGUSR2``: signals it as SLURM does before a pre-emption)."""
    if os.environ.get(KILL_ENV) == where:
        os.kill(os.getpid(), getattr(signal, os.environ.get(KILL_SIGNAL_ENV, "SIGKILL")))


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Pre-emption (SIGTERM, submitit's USR1/USR2) and Ctrl-C wait until a checkpoint is complete, so the
    requeue handler never cuts one short; SIGKILL cannot wait, and then the previous checkpoint stays."""
    deferred = {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, deferred)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@dataclass
class Position:
    group: int  # index into method.phases of the group to run next (len(phases): all done)
    epoch: int  # epochs/episodes of that group already completed; 0 = the group has not started


class Checkpoint:
    """The run folder's checkpoint: written every ``every`` epochs/episodes and after each phase group."""

    def __init__(self, folder: Path, identity: dict[str, Any], every: int, min_interval_s: float = 0.0,
                 world: Optional[World] = None) -> None:
        self.folder, self.identity, self.every = Path(folder), identity, every
        self.min_interval_s = min_interval_s
        self.last_save = time.monotonic()
        self.world = world or World()  # rank 0 writes; every rank takes part (its random state is saved too)

    def due(self, epoch: int, epochs: int) -> bool:
        """After epoch ``epoch`` (0-based) of ``epochs``, if ``min_interval_s`` has passed since the last one;
        the last epoch is covered by the group's checkpoint. The interval keeps 200 short curriculum
        episodes from writing 200 full checkpoints. Rank 0's clock decides for every rank."""
        return self.world.broadcast(self.every > 0 and (epoch + 1) % self.every == 0 and epoch + 1 < epochs
                                    and time.monotonic() - self.last_save >= self.min_interval_s)

    def save(self, ctx: Any, position: Position, phases: list[Any]) -> None:
        if self.every <= 0:
            return
        self.last_save = time.monotonic()
        rng = self.world.gather(rng_state())  # each rank's dropout stream continues where it was
        if not self.world.is_main:
            return
        mt = ctx.agents.get("meta_teacher")
        blob = {
            "format": FORMAT, "position": asdict(position),
            "agents": {name: module.state_dict() for name, module in ctx.all_agents().items()},
            "meta_teacher_trained": bool(mt is not None and mt.trained),
            "phases": {phase.name: phase.state_dict() for phase in phases},
            "records": ctx.records, "rows": ctx.rows, "row_phase": ctx.row_phase, "lineage": ctx.lineage,
            "predictions": ctx.predictions,
            "timings": ctx.timings, "flops": ctx.flops,
            "scaler": ctx.rt.scaler.state_dict() if ctx.rt.scaler is not None else None,
            "rng": rng[0], "world_size": self.world.size,
            **({"rng_ranks": rng} if self.world.active else {}),
        }
        name = f"state-g{position.group}-e{position.epoch}.pt"
        with signals_deferred():
            torch_save(blob, self.folder / name)
            write_json(self.folder / "meta.json", indent=1, obj={
                "format": FORMAT, "file": name, "sha256": file_checksum(self.folder / name),
                "position": asdict(position), "fingerprint": fingerprint(self.identity), "identity": self.identity})
        for old in self.folder.glob("state-*.pt"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def load(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The saved state of a checkpoint that :func:`verify_checkpoint` accepted, if it was taken on this data."""
        fix = f"delete {self.folder} to start over"
        if meta["identity"].get("data") != self.identity["data"]:
            raise CheckpointError(f"the data changed since checkpoint {self.folder} was written; restore the "
                                  f"original data files or {fix}")
        path = self.folder / meta["file"]
        try:
            return torch_load(path)
        except Exception as exc:  # noqa: BLE001 - not tensors and containers only, or unreadable: never resumed
            raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}); {fix}") from None

    def clear(self) -> None:
        """A finished run needs no checkpoint: its results are in results.json."""
        if self.world.is_main:
            shutil.rmtree(self.folder, ignore_errors=True)


def verify_checkpoint(folder: Path, fields: dict[str, Any], required: bool) -> Optional[dict[str, Any]]:
    """The meta.json of ``folder``'s checkpoint if there is one to resume, checked before the run writes anything:
    an error when it is unreadable, corrupt, of another config (``fields``: the run's identity fields), or absent
    although ``required``. The data's part of the identity is checked by :meth:`Checkpoint.load`."""
    meta_path = folder / "meta.json"
    fix = f"delete {folder} to start over"
    if not meta_path.is_file():
        if required:
            raise CheckpointError(f"resume=true but {folder} holds no checkpoint; run with "
                                  "hydra.run.dir=<the interrupted run's folder>, or drop resume=true")
        return None
    try:
        meta = json.loads(meta_path.read_text())
        file, checksum, saved = meta["file"], meta["sha256"], meta["identity"]["fields"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {meta_path} is unreadable; {fix}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {folder} has format {meta.get('format')}, this code reads {FORMAT}; {fix}")
    written, now = saved.get("world_size", 1), fields.get("world_size", 1)
    if written != now:
        raise CheckpointError(f"checkpoint {folder} was written by a run of {written} process(es), this one has "
                              f"{now}; resume with {written} (torchrun --nproc_per_node=...) or {fix}")
    if saved != fields:
        changed = sorted(k for k in set(saved) | set(fields) if saved.get(k) != fields.get(k))
        listed = ", ".join(f"{k}={saved.get(k)!r}" for k in changed[:4]) or "settings"
        raise CheckpointError(f"checkpoint {folder} was written by another config ({listed}); run with the "
                              f"original config or {fix}")
    path = folder / file
    if not path.is_file() or file_checksum(path) != checksum:
        raise CheckpointError(f"checkpoint {path} is missing or corrupt (checksum mismatch); {fix}")
    return meta


def restore(ctx: Any, saved: dict[str, Any]) -> None:
    """Agents, records and RNG from a checkpoint; the agents must exist (``Phase.prepare``) beforehand."""
    modules = ctx.all_agents()
    missing = sorted(set(saved["agents"]) - set(modules))
    if missing:
        raise CheckpointError(f"checkpoint holds agents {missing} this run does not build; delete the checkpoint "
                              "folder to start over")
    for name, state in saved["agents"].items():
        modules[name].load_state_dict(state)
    if "meta_teacher" in ctx.agents:
        ctx.agents["meta_teacher"].trained = saved["meta_teacher_trained"]
    ctx.records.update(saved["records"])
    ctx.rows.update(saved["rows"])
    ctx.row_phase.update(saved["row_phase"])
    ctx.predictions.update(saved["predictions"])
    ctx.lineage.update(saved["lineage"])
    ctx.timings.update(saved["timings"])
    ctx.flops.update(saved.get("flops", {}))
    if saved["scaler"] is not None and ctx.rt.scaler is not None:
        ctx.rt.scaler.load_state_dict(saved["scaler"])
    set_rng_state(rank_rng(saved, ctx.rt.world))


def rank_rng(saved: dict[str, Any], world: World) -> dict[str, Any]:
    """This rank's random state in a checkpoint (its ranks' states when several processes wrote it)."""
    return saved["rng_ranks"][world.rank] if "rng_ranks" in saved else saved["rng"]


