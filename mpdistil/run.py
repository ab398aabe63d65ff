"""One run, top to bottom: config → data → agents → phase groups → results.

Each phase lives in ``mpdistil/phases/``; a group of phases runs (or comes from the cache) in
``mpdistil/groups.py``. A checkpoint in ``<run dir>/checkpoint/`` after every epoch/episode and every
group lets a killed run continue where it stopped (``mpdistil/checkpoints.py``).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from mpdistil.checkpoints import Checkpoint, Position, kill_point, verify_checkpoint
from mpdistil.config import ConfigError, cache_root, validate
from mpdistil.context import build_context
from mpdistil.data.prepare import prepare_data
from mpdistil.data.registry import get_task_spec
from mpdistil.distributed import World, init_world
from mpdistil.ensemble import fit_further_teachers
from mpdistil.evaluation import evaluate_row
from mpdistil.groups import phase_groups, resume, run_group, settle_teacher
from mpdistil.identity import identity, run_fields
from mpdistil.models.loading import resolve_model_source
from mpdistil.phases import PHASES
from mpdistil.results import finish, finished_results, format_table
from mpdistil.seeding import seed_everything
from mpdistil.training import resolve_device


def preflight(cfg: Any) -> None:
    """Every cheap check, before data or weights are loaded."""
    validate(cfg)
    for name in [cfg.task.name, *cfg.method.curriculum_tasks]:
        get_task_spec(name)
    for model in (cfg.model.teacher, cfg.model.student):
        if model:
            resolve_model_source(model, cfg.cache_dir)
    device = resolve_device(cfg.trainer.device)
    if cfg.trainer.precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"trainer.precision=fp16 needs a CUDA device for its gradient scaler (this run is on "
                          f"{device.type}); use trainer.precision=bf16 or fp32")


def global_batch(cfg: Any, world: World) -> None:
    """``trainer.per_device_batch_size``, when set, makes ``trainer.batch_size`` (the global batch every phase
    reads) that many examples per process."""
    from omegaconf import open_dict

    per_device = cfg.trainer.per_device_batch_size
    if per_device is not None:
        with open_dict(cfg):
            cfg.trainer.batch_size = per_device * world.size


@contextlib.contextmanager
def rank_folder(world: World, run_dir: Path):
    """The folder this process writes to: the run folder on rank 0; elsewhere a temporary folder, removed at the
    end, with printing silenced, so that the run folder, the log and W&B hold one process's output."""
    if world.is_main:
        yield run_dir
        return
    with tempfile.TemporaryDirectory(prefix=f"mpdistil-rank{world.rank}-") as scratch, \
            open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield Path(scratch)


def run(cfg: DictConfig, out_dir: Optional[Path] = None) -> dict[str, Any]:
    start = time.perf_counter()
    preflight(cfg)
    world = init_world(cfg.trainer.device)
    global_batch(cfg, world)
    if out_dir is None:
        from hydra.core.hydra_config import HydraConfig

        out_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir = Path(world.broadcast(str(out_dir)))  # each torchrun process starts Hydra: rank 0's folder is the run's
    fields = {**run_fields(cfg), **world.identity_fields()}
    # A checkpoint in the run folder is resumed; a corrupt one or one of another config is refused right away.
    resumable = verify_checkpoint(run_dir / "checkpoint", fields, required=cfg.resume)
    with rank_folder(world, run_dir) as out_dir:
        return _run(cfg, out_dir, run_dir, world, fields, resumable, start)


def _run(cfg: DictConfig, out_dir: Path, run_dir: Path, world: World, fields: dict[str, Any],
         resumable: Optional[dict[str, Any]], start: float) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()  # a multirun job reports its own peak, not an earlier job's
    cache_dir = cache_root(cfg.cache_dir)
    groups = phase_groups(cfg)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    aux_tasks = list(dict.fromkeys(t for g in groups for name in g for t in PHASES[name].aux_tasks(cfg)))
    data = prepare_data(cfg, out_dir, cache_dir, aux_tasks)
    timings["data"] = time.perf_counter() - t
    run_identity = identity("run", fields, data.fingerprint())
    if cfg.skip_finished and (done := finished_results(run_dir, run_identity)) is not None:
        print(f"[mpdistil] finished already, left as it is (skip_finished=true): {run_dir / 'results.json'}",
              flush=True)
        return done
    ckpt = Checkpoint(run_dir / "checkpoint", run_identity, cfg.trainer.checkpoint_every,
                      cfg.trainer.checkpoint_min_interval_s, world)
    saved = ckpt.load(resumable) if resumable else None

    t = time.perf_counter()
    ctx = build_context(cfg, data, out_dir, cache_dir, world)
    timings["models"] = time.perf_counter() - t
    eval_splits = [s for s in [*data.dev_names, "quiz", "heldout", *[n for n in data.splits if n.startswith("test")]]
                   if s in data.splits and data.splits[s].labels is not None]
    position = Position(0, 0)
    if saved is not None:
        position = resume(ctx, groups, saved, ckpt.folder)
    # Matmul FLOPs per phase when asked (trainer.count_flops): counted by torch's dispatcher, results unchanged.
    counting = FlopCounterMode(display=False) if cfg.trainer.count_flops else contextlib.nullcontext()
    try:
        with counting as ctx.flop_counter:
            for index, group in enumerate(groups[position.group:], start=position.group):
                label = "+".join(group)
                mid_group = saved if index == position.group and position.epoch else None
                settle_teacher(ctx, groups, index)
                with ctx.timed(label):
                    produced = run_group(ctx, group, index, ckpt, mid_group)
                print(f"[mpdistil] {label}: {ctx.timings[label]:.1f}s", flush=True)
                with ctx.timed("evaluation"):
                    for phase in produced:
                        ctx.row_phase[phase.row.name] = phase.name
                        ctx.rows[phase.row.name] = evaluate_row(ctx, phase, eval_splits)
                fit_further_teachers(ctx, group, index, eval_splits)
                ckpt.save(ctx, Position(index + 1, 0), [])
                kill_point(f"{label}:done")
    finally:
        timings.update(ctx.timings)
        timings["total"] = time.perf_counter() - start

    results = finish(ctx, data, timings, start, run_identity)
    if not cfg.trainer.keep_checkpoint:
        ckpt.clear()
    shown = [s for s in eval_splits if s not in ("quiz", "heldout")][:2] or eval_splits[:1]
    print("\n" + format_table(results, shown), flush=True)
    print(f"\n[mpdistil] results: {out_dir / 'results.json'}", flush=True)
    return results
