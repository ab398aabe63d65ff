"""The data of one run: the main task's splits (train′/quiz 9:1, dev, test), the curriculum's other tasks and
the out-of-domain tasks, tokenised, with the train′/quiz indices saved beside the run."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import OmegaConf

from mpdistil.config import ConfigError
from mpdistil.context import AuxTask, TaskInfo
from mpdistil.data.encode import EncodedSplit, encode_examples, split_fingerprint
from mpdistil.data.registry import get_task_spec, load_task, task_config_for
from mpdistil.data.splits import (
    SplitTooSmall,
    quiz_split,
    save_split_indices,
    subsample,
    subsample_indices,
    three_way_split,
)
from mpdistil.data.types import MissingTaskFiles, TaskData
from mpdistil.identity import fingerprint
from mpdistil.models.loading import check_same_tokenizer, load_tokenizer, resolve_model_source


@dataclass
class RunData:
    task: TaskInfo
    splits: dict[str, EncodedSplit]  # "train", "quiz", dev split names, test split names
    dev_names: list[str]
    aux: dict[str, AuxTask] = field(default_factory=dict)
    ood: dict[str, EncodedSplit] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # source, sizes, partners left out (for results.json)
    pad_id: int = 0

    def fingerprint(self) -> str:
        """Content of every tokenised split the run reads: a changed data file changes it."""
        every = {**self.splits, **{f"aux/{k}": a.quiz for k, a in self.aux.items()},
                 **{f"ood/{k}": v for k, v in self.ood.items()}}
        return fingerprint({name: split_fingerprint(split) for name, split in sorted(every.items())})

    def training_hash(self, selection: Optional[str]) -> str:
        """Content of the splits that agents are trained and selected on (part of every cached agent's identity)."""
        names = ["train", "quiz"] + ([selection] if selection else [])
        return fingerprint({name: split_fingerprint(self.splits[name]) for name in names})


def run_tokenizer(cfg: Any) -> Any:
    """The tokenizer every model of the run shares (the teacher's unless model.tokenizer names one)."""
    tokenizer = load_tokenizer(resolve_model_source(cfg.model.tokenizer or cfg.model.teacher, cfg.cache_dir)[0])
    if cfg.model.student:
        check_same_tokenizer(tokenizer, load_tokenizer(resolve_model_source(cfg.model.student, cfg.cache_dir)[0]),
                             (cfg.model.teacher, cfg.model.student))
    return tokenizer


def prepare_data(cfg: Any, out_dir: Path, cache_dir: Path, aux_tasks: list[str]) -> RunData:
    """The main task (split and tokenised), the curriculum's ``aux_tasks`` and the out-of-domain tasks."""
    data_dir = cfg.data_dir
    tokenizer = run_tokenizer(cfg)
    info, splits, dev_names, data_info = prepare_main_task(cfg, data_dir, cache_dir, out_dir, tokenizer)
    skipped: dict[str, str] = {}
    aux = prepare_aux_tasks(cfg, aux_tasks, data_dir, cache_dir, tokenizer,
                            skipped if partners_by_default(cfg) else None) if aux_tasks else {}
    if skipped:
        data_info["curriculum_tasks_left_out"] = skipped
    ood = prepare_ood(cfg, data_dir, cache_dir, tokenizer, info) if cfg.eval.ood_tasks else {}
    return RunData(info, splits, dev_names, aux, ood, data_info, tokenizer.pad_token_id or 0)


def task_info(data: TaskData, task_cfg: Any) -> TaskInfo:
    spec = get_task_spec(data.name, task_cfg)
    return TaskInfo(data.name, data.kind, list(data.label_names), list(spec.metrics), spec.main_metric)


def _labels(examples: list) -> Optional[np.ndarray]:
    return np.array([ex.label for ex in examples]) if examples else None


def prepare_main_task(cfg: Any, data_dir: Optional[str], cache_dir: Path, out_dir: Path, tokenizer: Any
                      ) -> tuple[TaskInfo, dict[str, EncodedSplit], list[str], dict[str, Any]]:
    """Load the task, subsample if asked, split the official train file into train′ and quiz (9:1), or into
    train′, quiz and a held-out selection slice (``trainer.selection_split=heldout``), tokenise every split."""
    data = load_task(cfg.task, data_dir, cache_dir)
    info = task_info(data, cfg.task)
    train_idx_all = np.arange(len(data.train))
    if cfg.task.max_train_examples:
        train_idx_all = subsample_indices(_labels(data.train), cfg.task.max_train_examples, cfg.seed,
                                          info.kind != "regression")
    stratify = info.kind != "regression"
    labels = _labels([data.train[i] for i in train_idx_all])
    if cfg.trainer.selection_split == "heldout":
        try:
            parts = three_way_split(labels, cfg.task.quiz_fraction, cfg.trainer.heldout_fraction, cfg.seed, stratify)
        except SplitTooSmall as exc:
            raise ConfigError(f"task {info.name}: {exc}; lower trainer.heldout_fraction or task.quiz_fraction, "
                              "or select on trainer.selection_split=quiz") from None
    else:
        tr, qz = quiz_split(labels, cfg.task.quiz_fraction, cfg.seed, stratify)
        parts = {"train": tr, "quiz": qz}
    index = {name: train_idx_all[np.asarray(pos, dtype=int)] for name, pos in parts.items()}
    save_split_indices(out_dir / "splits.json", {
        "task": info.name, "seed": cfg.seed, "quiz_fraction": cfg.task.quiz_fraction,
        "heldout_fraction": cfg.trainer.heldout_fraction if "heldout" in index else None,
        "selection_split": cfg.trainer.selection_split,
        "note": "row indices into the official train file, in file order",
        **{name: idx.tolist() for name, idx in index.items()}, "label_names": info.label_names})
    enc = lambda exs, name: encode_examples(tokenizer, exs, info.name, name, info.kind,  # noqa: E731
                                            cfg.task.max_length, cache_dir)
    splits = {name: enc([data.train[i] for i in idx], name) for name, idx in index.items()}
    dev_names = list(data.dev)
    for name, exs in list(data.dev.items()) + list(data.test.items()):
        if cfg.task.max_eval_examples and name in data.dev:
            exs = subsample(exs, cfg.task.max_eval_examples, cfg.seed)
        if exs:
            splits[name] = enc(exs, name)
    return info, splits, dev_names, {"source": data.source, "sizes": {k: len(v) for k, v in splits.items()}}


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


