"""One run, top to bottom: config → data → agents → phase groups → results.

Each phase lives in ``mpdistil/phases/``; a group of phases runs (or comes from the cache) in
``mpdistil/groups.py``. A checkpoint in ``<run dir>/checkpoint/`` after every epoch/episode and every
group lets a killed run continue where it stopped (``mpdistil/checkpoints.py``).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from mpdistil.atomic import write_json
from mpdistil.checkpoints import Checkpoint, Position, kill_point, verify_checkpoint
from mpdistil.config import cache_root, validate
from mpdistil.context import RunContext
from mpdistil.data.prepare import prepare_data
from mpdistil.data.registry import get_task_spec
from mpdistil.evaluation import evaluate_ood, evaluate_row
from mpdistil.groups import phase_groups, resume, run_group
from mpdistil.identity import identity, run_fields
from mpdistil.loggers import build_logger
from mpdistil.models.agent import build_agents, count_parameters
from mpdistil.models.loading import check_same_tokenizer, load_tokenizer, resolve_model_source
from mpdistil.phases import PHASES
from mpdistil.results import export, final_rows, final_student, format_table, machine_info, peak_memory
from mpdistil.seeding import seed_everything
from mpdistil.training import Runtime, resolve_device


def preflight(cfg: Any) -> None:
    """Every cheap check, before data or weights are loaded."""
    validate(cfg)
    for name in [cfg.task.name, *cfg.method.curriculum_tasks]:
        get_task_spec(name)
    for model in (cfg.model.teacher, cfg.model.student):
        if model:
            resolve_model_source(model)
    resolve_device(cfg.trainer.device)


def run(cfg: DictConfig, out_dir: Optional[Path] = None) -> dict[str, Any]:
    start = time.perf_counter()
    preflight(cfg)
    if out_dir is None:
        from hydra.core.hydra_config import HydraConfig

        out_dir = Path(HydraConfig.get().runtime.output_dir)
    out_dir = Path(out_dir)
    # A checkpoint in the run folder is resumed; a corrupt one or one of another config is refused right away.
    resumable = verify_checkpoint(out_dir / "checkpoint", run_fields(cfg), required=cfg.resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    cache_dir = cache_root(cfg.cache_dir)
    groups = phase_groups(cfg)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    tokenizer = load_tokenizer(resolve_model_source(cfg.model.tokenizer or cfg.model.teacher)[0])
    if cfg.model.student:
        check_same_tokenizer(tokenizer, load_tokenizer(resolve_model_source(cfg.model.student)[0]),
                             (cfg.model.teacher, cfg.model.student))
    aux_tasks = list(dict.fromkeys(t for g in groups for name in g for t in PHASES[name].aux_tasks(cfg)))
    data = prepare_data(cfg, out_dir, cache_dir, tokenizer, aux_tasks)
    info = data.task
    timings["data"] = time.perf_counter() - t
    ckpt = Checkpoint(out_dir / "checkpoint", identity("run", run_fields(cfg), data.fingerprint()),
                      cfg.trainer.checkpoint_every, cfg.trainer.checkpoint_min_interval_s)
    saved = ckpt.load(resumable) if resumable else None

    t = time.perf_counter()
    teacher, student, sources = build_agents(cfg.model, info.name, info.kind, info.num_outputs, info.label_names,
                                             cfg.seed)
    rt = Runtime(resolve_device(cfg.trainer.device), cfg.trainer.precision, cfg.trainer.grad_clip,
                 cfg.trainer.weight_decay, cfg.trainer.eval_batch_size, tokenizer.pad_token_id or 0,
                 cfg.trainer.progress, bucket=cfg.trainer.length_bucket, max_padding=cfg.trainer.eval_max_padding)
    teacher.to(rt.device)
    student.to(rt.device)
    timings["models"] = time.perf_counter() - t

    resolved = OmegaConf.to_container(cfg, resolve=True)
    write_json(out_dir / "config.json", resolved)
    logger = build_logger(cfg.logger, resolved, out_dir, f"{info.name}-{cfg.method.name}-s{cfg.seed}")
    ctx = RunContext(cfg=cfg, rt=rt, out_dir=out_dir, cache_dir=cache_dir, logger=logger, task=info,
                     splits=data.splits, dev_names=data.dev_names, teacher=teacher, student=student,
                     initial_student_state={k: v.detach().clone() for k, v in student.state_dict().items()},
                     aux=data.aux, sources=sources)
    ctx.data_hash = data.training_hash(ctx.selection_split)
    eval_splits = [s for s in [*data.dev_names, "quiz", *[n for n in data.splits if n.startswith("test")]]
                   if s in data.splits and data.splits[s].labels is not None]
    position = Position(0, 0)
    if saved is not None:
        position = resume(ctx, groups, saved)
        where = (f"after epoch {position.epoch} of {'+'.join(groups[position.group])}" if position.epoch
                 else f"after {position.group} of {len(groups)} phase groups")
        print(f"[mpdistil] resuming from {ckpt.folder} ({where})", flush=True)
    # Matmul FLOPs per phase when asked (trainer.count_flops): counted by torch's dispatcher, results unchanged.
    counting = FlopCounterMode(display=False) if cfg.trainer.count_flops else contextlib.nullcontext()
    try:
        with counting as ctx.flop_counter:
            for index, group in enumerate(groups[position.group:], start=position.group):
                label = "+".join(group)
                mid_group = saved if index == position.group and position.epoch else None
                with ctx.timed(label):
                    produced = run_group(ctx, group, index, ckpt, mid_group)
                print(f"[mpdistil] {label}: {ctx.timings[label]:.1f}s", flush=True)
                with ctx.timed("evaluation"):
                    for phase in produced:
                        ctx.row_phase[phase.row.name] = phase.name
                        ctx.rows[phase.row.name] = evaluate_row(ctx, phase, eval_splits)
                ckpt.save(ctx, Position(index + 1, 0), [])
                kill_point(f"{label}:done")
    finally:
        timings.update(ctx.timings)
        timings["total"] = time.perf_counter() - start

    final = final_rows(ctx)
    ood = evaluate_ood(ctx, {row: phase.row_agent(ctx) for row, phase in final.items()}, data.ood, ctx.rows) \
        if data.ood else {}
    final_row = final_student(ctx)
    outputs = export(ctx, final[final_row].row_agent(ctx) if final_row in final else ctx.student)
    timings["total"] = time.perf_counter() - start
    results = {
        "task": {"name": info.name, "kind": info.kind, "label_names": info.label_names, "metrics": info.metrics,
                 "main_metric": info.main_metric, **data.info},
        "method": {"name": cfg.method.name, "phases": list(cfg.method.phases)},
        "selection_split": cfg.trainer.selection_split, "seed": cfg.seed,
        "model": {**sources, "teacher_layers": teacher.num_layers, "student_layers": student.num_layers,
                  "teacher_params": count_parameters(teacher.hf), "student_params": count_parameters(student.hf)},
        "agents": ctx.rows, "final_row": final_row,
        "row_titles": {row: PHASES[name].row.title for row, name in ctx.row_phase.items()},
        "fidelity": ctx.records.pop("fidelity", {}), "ood": ood,
        "phases": ctx.records, "time": timings, **({"flops": ctx.flops} if cfg.trainer.count_flops else {}),
        "memory": peak_memory(), "machine": machine_info(),
        "device": str(rt.device), "precision": rt.precision, "outputs": outputs,
    }
    write_json(out_dir / "results.json", results)
    if not cfg.trainer.keep_checkpoint:
        ckpt.clear()
    logger.summary({f"final/{row}/{s}/{k}": v for row, per in ctx.rows.items() for s, m in per.items()
                    for k, v in m.items()})
    logger.finish()
    print("\n" + format_table(results, [s for s in eval_splits if s != "quiz"][:2] or eval_splits[:1]), flush=True)
    print(f"\n[mpdistil] results: {out_dir / 'results.json'}", flush=True)
    return results
