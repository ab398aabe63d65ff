"""The further teachers of a run with several (``teachers=[...]``): built beside the model group's teacher, each
reading its own tokenizer's encoding of the data, and fine-tuned by the run's phase-1 group right after the first
teacher, with the same seed and data order and the same cache (an earlier run's teacher of the same identity is
reused). How their soft targets are mixed is :mod:`mpdistil.mixing`."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf, open_dict

from mpdistil.context import RunContext
from mpdistil.data.encode import EncodedSplit, encode_examples
from mpdistil.data.prepare import check_aligned, encoding_hashes
from mpdistil.loggers import Logger
from mpdistil.mixing import TeacherSpec, teacher_names, teacher_specs


def add_further_teachers(ctx: RunContext) -> None:
    """Each further teacher as agent ``teacher_<k>``, on the run's device, with its encoding of every split."""
    from mpdistil.models.agent import build_further_teacher, enable_gradient_checkpointing
    from mpdistil.models.loading import load_tokenizer, resolve_model_source, same_tokenizer

    cfg, info = ctx.cfg, ctx.task
    for name, spec in zip(teacher_names(cfg)[1:], teacher_specs(cfg)[1:]):
        agent, label = build_further_teacher(spec, name, info.name, info.kind, info.num_outputs, info.label_names,
                                             cfg.seed, ctx.cache_dir)
        if cfg.trainer.gradient_checkpointing:
            enable_gradient_checkpointing(agent.hf)
        ctx.agents[name] = agent.to(ctx.rt.device)
        ctx.sources[name] = label
        view: Optional[dict[str, EncodedSplit]] = None
        reads = "the student's encoding (model.tokenizer)"
        if not cfg.model.tokenizer:
            tokenizer = load_tokenizer(resolve_model_source(spec.source, ctx.cache_dir)[0])
            reads = "the student's encoding"
            if same_tokenizer(tokenizer, ctx.tokenizers["teacher"]) and ctx.teacher_view is not None:
                view, reads = ctx.teacher_view, "the first teacher's encoding"
            elif not same_tokenizer(tokenizer, ctx.tokenizers["student"]):
                view = {split: encode_view(tokenizer, data, cfg.task.max_length, ctx.cache_dir)
                        for split, data in ctx.splits.items()}
                reads = f"its own encoding ({tokenizer.name_or_path})"
        ctx.views[name] = view
        ctx.sources[f"{name}_reads"] = reads  # results.json, under model


def encode_view(tokenizer: Any, split: EncodedSplit, max_length: int, cache_dir: Path) -> EncodedSplit:
    """A further teacher's encoding of a split: the same examples in the same order (cached like every split)."""
    own = encode_examples(tokenizer, split.examples, split.task, split.name, split.kind, max_length, cache_dir)
    check_aligned(split, own)
    return own


def teacher_context(ctx: RunContext, name: str, spec: TeacherSpec) -> RunContext:
    """The run as phase 1 sees it for further teacher ``name``: that teacher in the teacher's place, its config
    fields (so its cache identity is that of a run with it as the teacher) and its encoding."""
    cfg = OmegaConf.create(OmegaConf.to_container(ctx.cfg, resolve=True))
    with open_dict(cfg):
        cfg.model.teacher = spec.source
        cfg.model.random_init = spec.random_init
        cfg.model.config_overrides = spec.overrides
        cfg.model.attn_implementation = spec.attn_implementation
        cfg.teachers = []
    view = ctx.views[name]
    sub = dataclasses.replace(ctx, cfg=cfg, teacher=ctx.agents[name], teacher_view=view, agents={}, records={},
                              rows={}, row_phase={}, predictions={}, lineage={}, teacher_outputs={}, optimizers={},
                              views={name: view}, logger=Logger())
    sub.data_hashes = encoding_hashes(ctx.splits, view, ctx.selection_split)
    return sub


def fit_further_teachers(ctx: RunContext, group: list[str], index: int, eval_splits: list[str]) -> None:
    """After the group that trains the teacher: the same phases for every further teacher (from the cache when an
    earlier run made it), its table row, record and lineage under its own name."""
    from mpdistil.evaluation import evaluate_row
    from mpdistil.groups import run_group
    from mpdistil.phases import PHASES

    phases = [name for name in group if "teacher" in PHASES[name].trains]
    if not phases:
        return
    for name, spec in zip(ctx.further_teachers, teacher_specs(ctx.cfg)[1:]):
        if name in ctx.lineage:  # done before the checkpoint this run resumed from
            continue
        sub = teacher_context(ctx, name, spec)
        label = f"{'+'.join(phases)} ({name})"
        with ctx.timed(label):
            produced = run_group(sub, phases, index)
        for phase in produced:
            ctx.row_phase[name] = phase.name
            ctx.rows[name] = evaluate_row(sub, phase, eval_splits)
            ctx.predictions[name] = sub.predictions[phase.row.name]
        ctx.records[name] = {phase: sub.records[phase] for phase in phases} if len(phases) > 1 \
            else sub.records[phases[0]]
        ctx.lineage[name] = sub.lineage["teacher"]
        print(f"[mpdistil] {label}: {ctx.timings[label]:.1f}s", flush=True)
