"""One run, top to bottom: config → tasks → agents → phases → results.

Read this file to follow a run; each phase lives in ``mpdistil/phases/``. A checkpoint in
``<run dir>/checkpoint/`` after every epoch/episode and every phase group lets a killed run
continue where it stopped (``mpdistil/checkpoints.py``).
"""
from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from mpdistil.caches import CacheEntry, student_cache_key
from mpdistil.config import ConfigError, cache_root, validate
from mpdistil.context import AuxTask, RunContext, TaskInfo
from mpdistil.data.encode import EncodedSplit, encode_examples
from mpdistil.data.registry import get_task_spec, load_task, task_config_for
from mpdistil.data.splits import quiz_split, save_split_indices, subsample, subsample_indices
from mpdistil.data.types import MissingTaskFiles, TaskData
from mpdistil.evaluation import evaluate_ood, evaluate_row
from mpdistil.loggers import build_logger
from mpdistil.models.agent import build_agents, count_parameters
from mpdistil.models.loading import check_same_tokenizer, load_tokenizer, resolve_model_source
from mpdistil.phases import PHASES
from mpdistil.atomic import write_json
from mpdistil.results import format_table, machine_info, peak_memory
from mpdistil.checkpoints import (Checkpoint, Position, data_fingerprint, kill_point, restore, run_identity, set_rng_state,
                             verify_checkpoint)
from mpdistil.training import Runtime, resolve_device

ROW_OF_PHASE = {"teacher": "teacher", "undistilled": "undistilled", "distill": "student", "metadistil": "student",
                "meta_teacher": "meta_teacher", "curriculum": "mpdistil"}


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch (CPU and every GPU); ``deterministic`` also picks deterministic GPU kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # must precede the first cuBLAS call
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False  # TF32 results differ between GPU generations
        torch.backends.cudnn.allow_tf32 = False


def seed_group(seed: int, index: int) -> None:
    """Each phase group starts from random states fixed by (seed, group index), so it draws the same numbers
    whether the groups before it were trained here, loaded from a cache or restored from a checkpoint."""
    group_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
    random.seed(group_seed)
    np.random.seed(group_seed)
    torch.manual_seed(group_seed)


def task_info(data: TaskData, task_cfg: Any) -> TaskInfo:
    spec = get_task_spec(data.name, task_cfg)
    return TaskInfo(data.name, data.kind, list(data.label_names), list(spec.metrics), spec.main_metric)


def _labels(examples: list) -> Optional[np.ndarray]:
    return np.array([ex.label for ex in examples]) if examples else None


def prepare_main_task(cfg: Any, data_dir: Optional[str], cache_dir: Path, out_dir: Path, tokenizer: Any,
                      info_out: dict[str, Any]) -> tuple[TaskInfo, dict[str, EncodedSplit], list[str]]:
    """Load the task, subsample if asked, split train 9:1 into train'/quiz, tokenise every split."""
    data = load_task(cfg.task, data_dir, cache_dir)
    info = task_info(data, cfg.task)
    train_idx_all = np.arange(len(data.train))
    if cfg.task.max_train_examples:
        train_idx_all = subsample_indices(_labels(data.train), cfg.task.max_train_examples, cfg.seed,
                                          info.kind != "regression")
    stratify = info.kind != "regression"
    labels = _labels([data.train[i] for i in train_idx_all])
    tr, qz = quiz_split(labels, cfg.task.quiz_fraction, cfg.seed, stratify)
    train_idx, quiz_idx = train_idx_all[np.asarray(tr, dtype=int)], train_idx_all[np.asarray(qz, dtype=int)]
    save_split_indices(out_dir / "splits.json", {
        "task": info.name, "seed": cfg.seed, "quiz_fraction": cfg.task.quiz_fraction,
        "note": "indices into the official train file, in file order",
        "train": train_idx.tolist(), "quiz": quiz_idx.tolist(), "label_names": info.label_names})
    enc = lambda exs, name: encode_examples(tokenizer, exs, info.name, name, info.kind,  # noqa: E731
                                            cfg.task.max_length, cache_dir)
    splits = {"train": enc([data.train[i] for i in train_idx], "train"),
              "quiz": enc([data.train[i] for i in quiz_idx], "quiz")}
    dev_names = list(data.dev)
    for name, exs in list(data.dev.items()) + list(data.test.items()):
        if cfg.task.max_eval_examples and name in data.dev:
            exs = subsample(exs, cfg.task.max_eval_examples, cfg.seed)
        if exs:
            splits[name] = enc(exs, name)
    info_out.update(source=data.source, sizes={k: len(v) for k, v in splits.items()})
    return info, splits, dev_names


def partners_by_default(cfg: Any) -> bool:
    """Whether method.curriculum_tasks is still the task's default partner list (not chosen by the user)."""
    raw = OmegaConf.to_container(cfg.method, resolve=False).get("curriculum_tasks")
    return isinstance(raw, str) and raw.replace(" ", "") == "${task.partners}"


def prepare_aux_tasks(cfg: Any, names: list[str], data_dir: Optional[str], cache_dir: Path,
                      tokenizer: Any, skipped: Optional[dict[str, str]] = None) -> dict[str, AuxTask]:
    """Curriculum actions: each other task's quiz split (9:1 of its train set, same seed).

    With ``skipped`` (a dict), a task whose files are not in data_dir is left out and recorded there instead of
    stopping the run: used for the default partner list, where e.g. a SuperGLUE folder without BoolQ should not
    stop an RTE run. A list the user wrote is taken at its word: a missing task is an error."""
    aux: dict[str, AuxTask] = {}
    for name in names:
        if name == cfg.task.name:
            continue
        tcfg = task_config_for(name, data_dir=cfg.task.data_dir or data_dir, max_length=cfg.task.max_length)
        try:
            data = load_task(tcfg, data_dir, cache_dir)
        except MissingTaskFiles as exc:
            if skipped is None:
                raise
            skipped[name] = str(exc)
            print(f"curriculum: default partner {name} left out ({exc}); choose the actions with "
                  f"method.curriculum_tasks=[...]", flush=True)
            continue
        info = task_info(data, tcfg)
        _, qz = quiz_split(_labels(data.train), tcfg.quiz_fraction, cfg.seed, info.kind != "regression")
        aux[name] = AuxTask(info, encode_examples(tokenizer, [data.train[i] for i in qz], name, "quiz", info.kind,
                                                  cfg.task.max_length, cache_dir))
    return aux


def phase_groups(cfg: Any) -> list[list[str]]:
    return [group.split("+") for group in cfg.method.phases]


def preflight(cfg: Any) -> None:
    """Every cheap check, before data or weights are loaded."""
    validate(cfg)
    get_task_spec(cfg.task.name)
    for name in cfg.method.curriculum_tasks:
        get_task_spec(name)
    resolve_model_source(cfg.model.teacher)
    if cfg.model.student:
        resolve_model_source(cfg.model.student)
    resolve_device(cfg.trainer.device)


def run(cfg: DictConfig, out_dir: Optional[Path] = None) -> dict[str, Any]:
    start = time.perf_counter()
    preflight(cfg)
    if out_dir is None:
        from hydra.core.hydra_config import HydraConfig

        out_dir = Path(HydraConfig.get().runtime.output_dir)
    out_dir = Path(out_dir)
    identity = run_identity(cfg)
    # A checkpoint in the run folder is resumed; a corrupt one or one of another config is refused right away.
    resumable = verify_checkpoint(out_dir / "checkpoint", identity, required=cfg.resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    cache_dir = cache_root(cfg.cache_dir)
    data_dir = cfg.data_dir
    timings: dict[str, float] = {}

    t = time.perf_counter()
    teacher_src, _ = resolve_model_source(cfg.model.teacher)
    tok_src = resolve_model_source(cfg.model.tokenizer)[0] if cfg.model.tokenizer else teacher_src
    tokenizer = load_tokenizer(tok_src)
    if cfg.model.student:
        check_same_tokenizer(tokenizer, load_tokenizer(resolve_model_source(cfg.model.student)[0]),
                             (cfg.model.teacher, cfg.model.student))
    data_info: dict[str, Any] = {}
    info, splits, dev_names = prepare_main_task(cfg, data_dir, cache_dir, out_dir, tokenizer, data_info)
    groups = phase_groups(cfg)
    wants_curriculum = any("curriculum" in g for g in groups) and cfg.method.curriculum
    skipped: dict[str, str] = {}
    aux = prepare_aux_tasks(cfg, list(cfg.method.curriculum_tasks), data_dir, cache_dir, tokenizer,
                            skipped if partners_by_default(cfg) else None) if wants_curriculum else {}
    if skipped:
        data_info["curriculum_tasks_left_out"] = skipped
    ood = prepare_ood(cfg, data_dir, cache_dir, tokenizer, info) if cfg.eval.ood_tasks else {}
    timings["data"] = time.perf_counter() - t
    data_fp = data_fingerprint({**splits, **{f"aux/{k}": a.quiz for k, a in aux.items()},
                                **{f"ood/{k}": v for k, v in ood.items()}})
    ckpt = Checkpoint(out_dir / "checkpoint", identity, data_fp, cfg.trainer.checkpoint_every,
                      cfg.trainer.checkpoint_min_interval_s)
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
                     splits=splits, dev_names=dev_names, teacher=teacher, student=student,
                     initial_student_state={k: v.detach().clone() for k, v in student.state_dict().items()},
                     aux=aux, sources=sources)
    eval_splits = [s for s in [*dev_names, "quiz", *[n for n in splits if n.startswith("test")]]
                   if s in splits and splits[s].labels is not None]
    agents_out = ctx.rows
    position = resume_run(ctx, groups, saved, ckpt.folder) if saved is not None else Position(0, 0)
    # Matmul FLOPs per phase when asked (trainer.count_flops): counted by torch's dispatcher, results unchanged.
    counting = FlopCounterMode(display=False) if cfg.trainer.count_flops else contextlib.nullcontext()
    try:
        with counting as ctx.flop_counter:
            for index, group in enumerate(groups):
                if index < position.group:
                    continue  # finished before the checkpoint: its agents and rows are restored
                label = "+".join(group)
                mid_group = saved if index == position.group and position.epoch else None
                with ctx.timed(label):
                    produced = run_group(ctx, group, index, ckpt, mid_group)
                _print(f"[mpdistil] {label}: {ctx.timings[label]:.1f}s")
                with ctx.timed("evaluation"):
                    for name in produced:
                        row = ROW_OF_PHASE[name]
                        agents_out[row] = evaluate_row(ctx, row, row_agent(ctx, row), eval_splits)
                ckpt.save(ctx, Position(index + 1, 0), [])
                kill_point(f"{label}:done")
    finally:
        timings.update(ctx.timings)
        timings["total"] = time.perf_counter() - start
    final_rows = [r for r in ("teacher", "undistilled", "mpdistil" if "mpdistil" in agents_out else "student")
                  if r in agents_out]
    ood_results = evaluate_ood(ctx, {r: row_agent(ctx, r) for r in final_rows}, ood, agents_out) if ood else {}
    outputs = export(ctx, row_agent(ctx, final_rows[-1]) if final_rows else ctx.student)
    timings["total"] = time.perf_counter() - start
    results = {
        "task": {"name": info.name, "kind": info.kind, "label_names": info.label_names, "metrics": info.metrics,
                 "main_metric": info.main_metric, **data_info},
        "method": {"name": cfg.method.name, "phases": list(cfg.method.phases)},
        "selection_split": cfg.trainer.selection_split, "seed": cfg.seed,
        "model": {**sources, "teacher_layers": teacher.num_layers, "student_layers": student.num_layers,
                  "teacher_params": count_parameters(teacher.hf), "student_params": count_parameters(student.hf)},
        "agents": agents_out, "fidelity": ctx.records.pop("fidelity", {}), "ood": ood_results,
        "phases": ctx.records, "time": timings, **({"flops": ctx.flops} if cfg.trainer.count_flops else {}),
        "memory": peak_memory(), "machine": machine_info(),
        "device": str(rt.device), "precision": rt.precision, "outputs": outputs,
    }
    write_json(out_dir / "results.json", results)
    if not cfg.trainer.keep_checkpoint:
        ckpt.clear()
    logger.summary({f"final/{row}/{s}/{k}": v for row, per in agents_out.items() for s, m in per.items()
                    for k, v in m.items()})
    logger.finish()
    _print("\n" + format_table(results, [s for s in eval_splits if s != "quiz"][:2] or eval_splits[:1]))
    _print(f"\n[mpdistil] results: {out_dir / 'results.json'}")
    return results


def _group_states(ctx: RunContext, group: list[str]) -> dict[str, torch.nn.Module]:
    modules: dict[str, torch.nn.Module] = {}
    for name in group:
        if name in ("distill", "metadistil"):
            modules["student"] = ctx.student
            if name == "metadistil":
                modules["metadistil_teacher"] = ctx.agents["metadistil_teacher"]
        elif name == "undistilled":
            modules["undistilled"] = ctx.agents["undistilled"]
        elif name == "meta_teacher":
            modules["meta_teacher"] = ctx.meta_teacher()
    return modules


def resume_run(ctx: RunContext, groups: list[list[str]], saved: dict[str, Any], folder: Path) -> Position:
    """Recreate the agents of the groups run before the checkpoint (heads, clones, T', policy), then load it."""
    position = Position(**saved["position"])
    for group in groups[:position.group + (1 if position.epoch else 0)]:
        for name in group:
            PHASES[name]().prepare(ctx)
    restore(ctx, saved)
    where = (f"after epoch {position.epoch} of {'+'.join(groups[position.group])}" if position.epoch
             else f"after {position.group} of {len(groups)} phase groups")
    _print(f"[mpdistil] resuming from {folder} ({where})")
    return position


def run_group(ctx: RunContext, group: list[str], index: int = 0, ckpt: Optional[Checkpoint] = None,
              saved: Optional[dict[str, Any]] = None) -> list[str]:
    """Run phases in lockstep (``a+b``: b after every epoch of a); returns the phases that produced an agent.

    Student groups are cached like the teacher: an ablation over curriculum switches reuses them.
    ``saved``: a checkpoint taken inside this group, to continue after its last completed epoch.
    """
    phases = [PHASES[name]() for name in group]
    if saved is None:
        seed_group(ctx.cfg.seed, index)
    entry = None
    if not {"teacher", "curriculum"} & set(group):
        entry = CacheEntry(ctx.cache_dir, "students", student_cache_key(ctx, "+".join(group)))
    try:
        with entry.lock if entry else contextlib.nullcontext():
            cached = entry.load() if entry and ctx.cfg.trainer.reuse_cache else None
            if cached is not None:
                load_cached_group(ctx, group, phases, entry, cached)
                return list(group)
            return train_group(ctx, group, index, phases, entry, ckpt, saved)
    finally:
        for phase in phases:
            phase.close(ctx)


def load_cached_group(ctx: RunContext, group: list[str], phases: list[Any], entry: CacheEntry,
                      cached: tuple[dict[str, Any], dict[str, Any]]) -> None:
    for phase in phases:
        phase.prepare(ctx)
    state, records = cached
    for key, module in _group_states(ctx, group).items():
        module.load_state_dict(state[key])
    if "meta_teacher" in group:
        ctx.meta_teacher().trained = True
    for name in group:
        ctx.records[name] = {**records[name], "cached": True, "cache": str(entry.folder)}


def train_group(ctx: RunContext, group: list[str], index: int, phases: list[Any], entry: Optional[CacheEntry],
                ckpt: Optional[Checkpoint], saved: Optional[dict[str, Any]]) -> list[str]:
    """start → epochs (a checkpoint after each, per trainer.checkpoint_every) → finish; the entry caches the result."""
    for phase in phases:
        phase.start(ctx)
    first = 0
    if saved is not None:
        for phase in phases:
            phase.load_state_dict(saved["phases"][phase.name])
        set_rng_state(saved["rng"])  # start() may draw random numbers the interrupted run drew before the checkpoint
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
    produced = []
    for phase in phases:
        ctx.records[phase.name] = phase.finish(ctx)
        if phase.epochs(ctx) or phase.name in ("teacher", "meta_teacher"):
            produced.append(phase.name)
    if entry is not None:
        state = {k: {n: v.detach().cpu() for n, v in m.state_dict().items()}
                 for k, m in _group_states(ctx, group).items()}
        entry.save(state, {name: ctx.records[name] for name in group})
    return produced


def row_agent(ctx: RunContext, row: str) -> Optional[torch.nn.Module]:
    return {"teacher": ctx.teacher, "undistilled": ctx.agents.get("undistilled"), "meta_teacher": None}.get(
        row, ctx.student)


def prepare_ood(cfg: Any, data_dir: Optional[str], cache_dir: Path, tokenizer: Any,
                info: TaskInfo) -> dict[str, EncodedSplit]:
    """Other tasks with the main task's label scheme, read through the main task's head."""
    out: dict[str, EncodedSplit] = {}
    for name in cfg.eval.ood_tasks:
        tcfg = task_config_for(name, max_length=cfg.task.max_length, max_eval_examples=cfg.task.max_eval_examples)
        data = load_task(tcfg, data_dir, cache_dir)
        if data.kind != info.kind or (info.kind == "classification" and list(data.label_names) != info.label_names):
            raise ConfigError(f"eval.ood_tasks: {name} has labels {list(data.label_names)} ({data.kind}), not the "
                              f"main task's {info.label_names} ({info.kind}); pick a task with the same label scheme")
        dev_name, exs = next(iter(data.dev.items()))
        if cfg.task.max_eval_examples:
            exs = subsample(exs, cfg.task.max_eval_examples, cfg.seed)
        out[name] = encode_examples(tokenizer, exs, name, dev_name, info.kind, cfg.task.max_length, cache_dir)
    return out


def export(ctx: RunContext, student: torch.nn.Module) -> dict[str, Any]:
    """The final student as an HF folder (with tokenizer) and test predictions in leaderboard format."""
    from mpdistil.data.leaderboard import write_test_predictions
    from mpdistil.training import predict, predictions_from_logits

    outputs: dict[str, Any] = {}
    tokenizer = load_tokenizer(resolve_model_source(ctx.cfg.model.tokenizer or ctx.cfg.model.teacher)[0])
    for name, agent, wanted in (("student", student, ctx.cfg.trainer.save_student),
                                ("teacher", ctx.teacher, ctx.cfg.trainer.save_teacher)):
        if wanted:
            agent.hf.save_pretrained(ctx.out_dir / name)
            tokenizer.save_pretrained(ctx.out_dir / name)
            outputs[name] = str(ctx.out_dir / name)
    if ctx.cfg.eval.write_test_predictions:
        spec = get_task_spec(ctx.task.name, ctx.cfg.task)
        files = []
        for name, split in ctx.splits.items():
            if not name.startswith("test"):
                continue
            preds = predictions_from_logits(predict(student, split, ctx.rt)["logits"], ctx.task.kind)
            files.append(str(write_test_predictions(spec, name, [ex.uid for ex in split.examples], preds.tolist(),
                                                    ctx.out_dir / "test_predictions", ctx.task.label_names)))
        outputs["test_predictions"] = files
    return outputs


def _print(msg: str) -> None:
    print(msg, flush=True)

