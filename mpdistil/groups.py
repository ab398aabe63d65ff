"""Running one phase group (``a+b``: b after every epoch of a): from the cache, or trained with checkpoints.

A group whose phases all declare a cache folder is looked up by its identity (the phases' declared
fields, the data's content hash, the group's position and the identities of the agents it starts
from) and stored there when trained, so ablations over later phases reuse earlier ones.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Optional

import torch

from mpdistil.caches import CacheEntry
from mpdistil.checkpoints import Checkpoint, Position, kill_point, rank_rng, restore
from mpdistil.context import RunContext
from mpdistil.identity import COMMON_FIELDS, MIX_FIELDS, field_values, fingerprint, identity
from mpdistil.phases import PHASES, Phase
from mpdistil.seeding import seed_group, set_rng_state


def phase_groups(cfg: Any) -> list[list[str]]:
    return [group.split("+") for group in cfg.method.phases]


def group_identity(ctx: RunContext, phases: list[Phase], index: int) -> dict[str, Any]:
    fields = COMMON_FIELDS + tuple(f for p in phases for f in p.identity_fields())
    upstream = {a: ctx.lineage.get(a, "initial") for p in phases for a in p.reads}
    if ctx.further_teachers and any("teacher" in p.reads and "teacher" not in p.trains for p in phases):
        # it reads the mixture of the teachers: which they are, how they are mixed, and how each was trained
        fields += MIX_FIELDS
        upstream.update({name: ctx.lineage.get(name, "initial") for name in ctx.further_teachers})
    data = ctx.data_hash(a for p in phases for a in (*p.trains, *p.reads))
    if ctx.transfer_hash and any(p.reads_transfer for p in phases):
        data = fingerprint([data, ctx.transfer_hash])
    return identity(f"group {index}: {'+'.join(p.name for p in phases)}",
                    {**field_values(ctx.cfg, fields), **ctx.rt.world.identity_fields()}, data, upstream)


def settle_teacher(ctx: RunContext, groups: list[list[str]], index: int) -> None:
    """Before group ``index``: once no phase from here on trains the teacher, keep it in ``model.teacher_dtype``.

    Its outputs computed so far (in fp32) are dropped, so every phase from here reads the same frozen teacher.
    """
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[ctx.cfg.model.teacher_dtype]
    frozen = not any("teacher" in PHASES[name].trains for group in groups[index:] for name in group)
    if frozen and dtype != torch.float32 and ctx.teacher.main_head_weight().dtype != dtype:
        ctx.teacher.to(dtype)
        ctx.teacher_outputs.clear()


def advance(lineage: dict[str, str], phases: list[Phase], key: dict[str, Any]) -> None:
    """After a group: the agents it trained now descend from its identity."""
    lineage.update({agent: fingerprint(key) for phase in phases for agent in phase.trains})


def run_group(ctx: RunContext, group: list[str], index: int = 0, ckpt: Optional[Checkpoint] = None,
              saved: Optional[dict[str, Any]] = None) -> list[Phase]:
    """Run (or load) one group; returns its phases that produced a table row.

    ``saved``: a checkpoint taken inside this group, to continue after its last completed epoch.
    """
    phases = [PHASES[name]() for name in group]
    if saved is None:
        seed_group(ctx.cfg.seed, index)
    key = group_identity(ctx, phases, index)
    kinds = {p.cache for p in phases}
    entry = CacheEntry(ctx.cache_dir, phases[0].cache, key) if None not in kinds and len(kinds) == 1 else None
    world = ctx.rt.world
    try:
        # rank 0 looks the entry up under its lock and stores it; the other ranks follow its decision
        with entry.lock if entry and world.is_main else contextlib.nullcontext():
            cached = entry.load() if entry and ctx.cfg.trainer.reuse_cache and world.is_main else None
            if world.broadcast(cached is not None):
                cached = cached if world.is_main else entry.load()
                if cached is None:
                    raise RuntimeError(f"rank {world.rank} cannot read the cache entry {entry.folder} that rank 0 "
                                       "loaded; every node must see the same cache_dir (a shared file system)")
                load_cached(ctx, phases, entry, *cached)
            else:
                train(ctx, phases, index, entry if world.is_main else None, ckpt, saved)
    finally:
        for phase in phases:
            phase.close(ctx)
    advance(ctx.lineage, phases, key)
    return [phase for phase in phases if phase.produces_row(ctx)]


def _modules(ctx: RunContext, phases: list[Phase]) -> dict[str, Any]:
    return {name: module for phase in phases for name, module in phase.modules(ctx).items()}


def load_cached(ctx: RunContext, phases: list[Phase], entry: CacheEntry, state: dict[str, Any],
                records: dict[str, Any]) -> None:
    for phase in phases:
        phase.prepare(ctx)
    for name, module in _modules(ctx, phases).items():
        module.load_state_dict(state[name])
    for phase in phases:
        phase.loaded(ctx)
        ctx.records[phase.name] = {**records[phase.name], "cached": True, "cache": str(entry.folder)}


def train(ctx: RunContext, phases: list[Phase], index: int, entry: Optional[CacheEntry],
          ckpt: Optional[Checkpoint], saved: Optional[dict[str, Any]]) -> None:
    """prepare → start → epochs (a checkpoint after each, per trainer.checkpoint_every) → finish; the entry
    caches the result."""
    for phase in phases:
        phase.prepare(ctx)
        phase.start(ctx)
    first = 0
    if saved is not None:
        for phase in phases:
            phase.load_state_dict(saved["phases"][phase.name])
        set_rng_state(rank_rng(saved, ctx.rt.world))  # start() may draw numbers the interrupted run drew before
        first = saved["position"]["epoch"]
    epochs = phases[0].epochs(ctx)
    for epoch in range(first, epochs):
        for phase in phases:
            ctx.rt.stage = f"{phase.name}:{epoch}"
            row = phase.run_epoch(ctx, epoch)
            if row:
                ctx.logger.log(phase.name, epoch, row)
        ctx.rt.stage = ""
        if ckpt is not None and ckpt.due(epoch, epochs):
            ckpt.save(ctx, Position(index, epoch + 1), phases)
        for phase in phases:
            kill_point(f"{phase.name}:{epoch}")
    for phase in phases:
        ctx.records[phase.name] = phase.finish(ctx)
    check_in_step(ctx, phases)
    if entry is not None:
        for phase in phases:
            ctx.records[phase.name].update(cached=False, cache=str(entry.folder))
        state = {name: {k: v.detach().cpu() for k, v in module.state_dict().items()}
                 for name, module in _modules(ctx, phases).items()}
        entry.save(state, {phase.name: ctx.records[phase.name] for phase in phases})


def check_in_step(ctx: RunContext, phases: list[Phase]) -> None:
    """With several processes, every rank must end a group with the same weights: a divergence (a rank that read
    other data or drew another action) is an error here rather than a silently wrong result."""
    world = ctx.rt.world
    if not world.active:
        return
    sums = {name: float(sum(v.double().sum() for v in module.state_dict().values() if v.is_floating_point()))
            for name, module in _modules(ctx, phases).items()}
    ranks = world.gather(sums)
    differ = sorted(name for name in sums if len({r[name] for r in ranks}) > 1)
    if differ:
        raise RuntimeError(f"the processes of this run hold different weights for {differ} after "
                           f"{'+'.join(p.name for p in phases)}; please report this with the command line")


def resume(ctx: RunContext, groups: list[list[str]], saved: dict[str, Any], folder: Path) -> Position:
    """Recreate the agents of the groups run before the checkpoint (heads, clones, T', policy), then load it."""
    position = Position(**saved["position"])
    for group in groups[:position.group + (1 if position.epoch else 0)]:
        for name in group:
            PHASES[name]().prepare(ctx)
    restore(ctx, saved)
    where = (f"after epoch {position.epoch} of {'+'.join(groups[position.group])}" if position.epoch
             else f"after {position.group} of {len(groups)} phase groups")
    print(f"[mpdistil] resuming from {folder} ({where})", flush=True)
    return position
