"""Planning the teacher audit: each candidate's run config, and every check that needs no training.

A candidate is a model preset (``conf/model/<name>.yaml``) or a ``model.teacher`` source; its run config is the
audit's own (same command-line overrides, same validation) with ``method.phases=[teacher, kd]``: phase 1 fine-tunes
the teacher, or loads it from the teachers' cache when a run of the same identity made it, and the ``kd`` phase
distils a fresh student from it for ``audit.kd_epochs`` epochs (the fixed budget that measures approximation ease:
KD only, ``method.beta=0``, with the run's ``method.alpha``, ``method.temperature`` and ``method.soft_loss``).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from omegaconf import DictConfig

from mpdistil.config import CONF_DIR as CONF
from mpdistil.config import ConfigError, cache_root, register_configs, validate
from mpdistil.context import TaskInfo
from mpdistil.data.types import DataError

AUDIT_PHASES = ("teacher", "kd")  # phase 1, then a fresh student distilled from the frozen teacher


@dataclass
class Candidate:
    """One teacher under audit: as named, the name of its files, and its run config."""

    name: str
    slug: str
    cfg: DictConfig


@dataclass
class Plan:
    """Everything checked before training: the candidates, the task, which partner tasks measure OOD accuracy."""

    base: DictConfig
    candidates: list[Candidate]
    task: TaskInfo
    ood: list[str]
    ood_skipped: dict[str, str]
    weights: dict[str, float]


def model_presets() -> list[str]:
    return sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def slug(name: str, taken: set[str]) -> str:
    """A file-name-safe, unique name for a candidate: a preset's name, a folder's last part, a source's name."""
    path = Path(name).expanduser()
    stem = path.name if path.is_dir() else name.split(":", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_.") or "teacher"
    out, n = base, 2
    while out in taken:
        out, n = f"{base}-{n}", n + 1
    taken.add(out)
    return out


def candidate_config(overrides: Sequence[str], name: str, preset: bool, budget: int, ood: list[str]) -> DictConfig:
    """The run config of one candidate: the audit's overrides with the candidate as the teacher.

    A preset replaces the ``model=`` group; a source becomes ``model.teacher`` of the configured model group and is
    loaded with its weights (``model.random_init`` and ``model.config_overrides`` shape the presets' random models).
    The logger is the audit's own, so candidates log nothing themselves.
    """
    from hydra import compose

    kept = [o for o in overrides if _key(o) != "logger" and not (preset and _key(o) == "model")]
    cfg = compose("config", overrides=[*kept, "logger=none", *([f"model={name}"] if preset else [])])
    if not preset:
        cfg.model.teacher = name
        cfg.model.random_init = False
        cfg.model.config_overrides = {}
    cfg.method.phases = list(AUDIT_PHASES)
    cfg.method.student_epochs = budget
    cfg.method.beta = 0.0
    cfg.eval.ood_tasks = list(ood)
    cfg.eval.attribution = "none"
    cfg.eval.write_test_predictions = False
    cfg.trainer.save_student = False
    cfg.trainer.save_teacher = False
    cfg.resume = False
    return cfg


def ood_plan(cfg: DictConfig, info: TaskInfo, cache_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The partner tasks (``eval.ood_tasks``, else ``task.partners``) whose labels are the main task's; the others
    with the reason they are left out."""
    from mpdistil.data.prepare import label_scheme_mismatch
    from mpdistil.data.registry import load_task, task_config_for

    keep: list[str] = []
    skipped: dict[str, str] = {}
    for name in dict.fromkeys(list(cfg.eval.ood_tasks) or list(cfg.task.partners)):
        if name == info.name:
            continue
        try:
            tcfg = task_config_for(name, max_length=cfg.task.max_length, max_eval_examples=cfg.task.max_eval_examples)
            why = label_scheme_mismatch(load_task(tcfg, cfg.data_dir, cache_dir), info)
        except DataError as exc:
            why = f"not loaded: {str(exc).splitlines()[0]}"
        if why:
            skipped[name] = why
        else:
            keep.append(name)
    return keep, skipped


def check_teacher(name: str, cfg: DictConfig, task: TaskInfo, presets: list[str]) -> None:
    """A candidate that cannot be loaded for this task, refused before any training: an unknown name, a head with
    another number of outputs, fewer layers than the student takes. Reads the model's config only (a split-wheel
    model not fetched yet is checked when it loads)."""
    from mpdistil.models import pypi_split
    from mpdistil.models.loading import load_config, resolve_model_source

    m = cfg.model
    source = resolve_model_source(m.teacher, cfg.cache_dir)[0]
    if pypi_split.pending_split_model(source) is not None:
        return
    try:
        config = load_config(source, **(dict(m.config_overrides) if m.random_init else {}))
    except ConfigError as exc:
        if name in presets:
            raise
        why = str(exc).partition("(")[2].partition(")")[0] or str(exc)
        raise ConfigError(
            f"unknown teacher {name!r}: not a model preset ({', '.join(presets)}), not an existing "
            f"folder, package: or pypi-split: source, and not on the HF hub ({why}); fix the name in "
            "teachers=[...]"
        ) from None
    head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    if head and not m.random_init and config.num_labels != task.num_outputs:
        raise ConfigError(
            f"teacher {name!r} has a classification head with {config.num_labels} outputs but task "
            f"{task.name} needs {task.num_outputs} ({', '.join(task.label_names)}); give its encoder "
            "without the head (save_pretrained of its base model) or a teacher made for these labels"
        )
    if not m.student and m.student_layers and m.student_layers > config.num_hidden_layers:
        raise ConfigError(
            f"teacher {name!r} has {config.num_hidden_layers} layers, fewer than "
            f"model.student_layers={m.student_layers}; set model.student_layers<="
            f"{config.num_hidden_layers} or name one student for all with model.student=<source>"
        )


@contextlib.contextmanager
def composing() -> Iterator[None]:
    """Hydra's composition for the audit's configs: the running app's (``python -m mpdistil.teachers``), else the
    project's ``conf/`` (the audit called from Python)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
        return
    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        yield


def plan_audit(overrides: Sequence[str]) -> Plan:
    """Compose the audit's config and each candidate's, and run every check that needs no training."""
    with composing():
        return _plan(overrides)


def _plan(overrides: Sequence[str]) -> Plan:
    from hydra import compose

    from mpdistil.data.prepare import task_info
    from mpdistil.data.registry import load_task
    from mpdistil.run import preflight
    from mpdistil.teachers.ranking import given_weights, resolve_weights

    base = compose("config", overrides=list(overrides))
    validate(base)
    teachers = list(base.audit.teachers)
    if not teachers:
        raise ConfigError(
            "no teachers to audit; name them, e.g. teachers=[minilm,mpnet_base] (model presets, "
            "save_pretrained folders, package:, pypi-split: or hub names)"
        )
    twice = next((t for i, t in enumerate(teachers) if t in teachers[:i]), None)
    if twice is not None:
        raise ConfigError(f"teacher {twice!r} is named twice in teachers=[...]; name each candidate once")
    if base.trainer.selection_split not in ("heldout", "quiz"):
        raise ConfigError(
            f"trainer.selection_split={base.trainer.selection_split}: the audit fits temperatures "
            "and ranks on a split that no model trains on and that is not reported; use "
            "trainer.selection_split=heldout (or quiz)"
        )
    if base.method.alpha <= 0:
        raise ConfigError(
            f"method.alpha={base.method.alpha} leaves the audit's distillation without its soft term, "
            "so it cannot measure how well a student follows a teacher; set e.g. method.alpha=0.5"
        )
    cache = cache_root(base.cache_dir)
    task = task_info(load_task(base.task, base.data_dir, cache), base.task)
    if task.kind == "regression":
        raise ConfigError(
            f"task {task.name} is a regression task; the audit compares class probabilities "
            "(calibration, KL), so it needs a classification or multiple-choice task"
        )
    ood, skipped = ood_plan(base, task, cache)
    weights = resolve_weights(base.audit.profile, given_weights(base.audit))
    if not ood and not any(w > 0 for c, w in weights.items() if c != "ood"):
        raise ConfigError(
            f"the weighting weighs only ood, but no partner task has {task.name}'s labels "
            f"({skipped}); weigh other criteria, e.g. audit.weights.task=1"
        )
    presets = model_presets()
    taken: set[str] = set()
    candidates = []
    for name in teachers:
        cfg = candidate_config(overrides, name, name in presets, base.audit.kd_epochs, ood)
        preflight(cfg)
        check_teacher(name, cfg, task, presets)
        candidates.append(Candidate(name, slug(name, taken), cfg))
    return Plan(base, candidates, task, ood, skipped, weights)
