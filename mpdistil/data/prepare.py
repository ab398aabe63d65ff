"""The data of one run: the main task's splits (train′/quiz 9:1, dev, test), the curriculum's other tasks and
the out-of-domain tasks, tokenised, with the train′/quiz indices saved beside the run.

Each model reads its own tokenizer's encoding. When the teacher and the student tokenise alike (or
``model.tokenizer`` names one tokenizer for both) every split is encoded once; otherwise the main task's splits
and the out-of-domain tasks are encoded twice, a teacher view and a student view of the same examples in the same
order, and teacher outputs are looked up by example index. The curriculum's other tasks are read by the student
only."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import OmegaConf

from mpdistil.atomic import write_json
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
from mpdistil.data.transfer import transfer_examples
from mpdistil.data.types import MissingTaskFiles, TaskData
from mpdistil.identity import fingerprint
from mpdistil.models.loading import load_tokenizer, resolve_model_source, same_tokenizer


@dataclass
class RunData:
    task: TaskInfo
    splits: dict[str, EncodedSplit]  # the student's encoding: "train", "quiz", dev split names, test split names
    dev_names: list[str]
    aux: dict[str, AuxTask] = field(default_factory=dict)
    ood: dict[str, EncodedSplit] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # source, sizes, partners left out (for results.json)
    pad_id: int = 0  # the student's tokenizer's
    # the teacher's encoding of the same splits and out-of-domain tasks when its tokenizer differs (None: it reads
    # ``splits`` and ``ood``)
    teacher_splits: Optional[dict[str, EncodedSplit]] = None
    teacher_ood: Optional[dict[str, EncodedSplit]] = None
    tokenizers: dict[str, Any] = field(default_factory=dict)  # "teacher", "student": one object when shared

    def fingerprint(self) -> str:
        """Content of every tokenised split the run reads: a changed data file changes it."""
        every = {**self.splits, **{f"aux/{k}": a.quiz for k, a in self.aux.items()},
                 **{f"ood/{k}": v for k, v in self.ood.items()},
                 **{f"teacher/{k}": v for k, v in (self.teacher_splits or {}).items()},
                 **{f"teacher/ood/{k}": v for k, v in (self.teacher_ood or {}).items()}}
        return fingerprint({name: split_fingerprint(split) for name, split in sorted(every.items())})

    def transfer_hash(self) -> str:
        """Content of the transfer split (both encodings), part of the identity of the phases that read it; empty
        without one, so runs without a transfer set keep their caches."""
        views = [("", self.splits)] + ([("teacher/", self.teacher_splits)] if self.teacher_splits else [])
        parts = {f"{p}transfer": split_fingerprint(v["transfer"]) for p, v in views if "transfer" in v}
        return fingerprint(parts) if parts else ""


def training_hash(splits: dict[str, EncodedSplit], teacher_splits: Optional[dict[str, EncodedSplit]],
                  selection: Optional[str]) -> str:
    """Content of train′, quiz and the selection split, in the student's encoding and the teacher's if another."""
    names = ["train", "quiz"] + ([selection] if selection else [])
    parts = {name: split_fingerprint(splits[name]) for name in names}
    if teacher_splits is not None:
        parts.update({f"teacher/{name}": split_fingerprint(teacher_splits[name]) for name in names})
    return fingerprint(parts)


def encoding_hashes(splits: dict[str, EncodedSplit], teacher_view: Optional[dict[str, EncodedSplit]],
                    selection: Optional[str]) -> dict[str, str]:
    """The data identities of the groups (``RunContext.data_hashes``) from the student's splits and the teacher's
    encoding of them (None: the same encoding)."""
    return {"both": training_hash(splits, teacher_view, selection),
            "student": training_hash(splits, None, selection),
            "teacher": training_hash(teacher_view if teacher_view is not None else splits, None, selection)}


def run_tokenizers(cfg: Any) -> tuple[Any, Any]:
    """The teacher's and the student's tokenizers: one object when they encode alike.

    ``model.tokenizer`` names one tokenizer that both models read (their own are then not loaded). Otherwise each
    model reads its own: the teacher's checkpoint's, and the student's (``model.student``; a student cut from the
    teacher's first layers has the teacher's)."""
    def load(name: str) -> Any:
        return load_tokenizer(resolve_model_source(name, cfg.cache_dir)[0])

    if cfg.model.tokenizer:
        shared = load(cfg.model.tokenizer)
        return shared, shared
    teacher = load(cfg.model.teacher)
    if not cfg.model.student:
        return teacher, teacher
    student = load(cfg.model.student)
    return (teacher, teacher) if same_tokenizer(teacher, student) else (teacher, student)


def prepare_data(cfg: Any, out_dir: Path, cache_dir: Path, aux_tasks: list[str]) -> RunData:
    """The main task (split and tokenised), the curriculum's ``aux_tasks`` and the out-of-domain tasks."""
    data_dir = cfg.data_dir
    tokenizers = run_tokenizers(cfg)
    info, splits, teacher_splits, dev_names, data_info = prepare_main_task(cfg, data_dir, cache_dir, out_dir,
                                                                           tokenizers)
    skipped: dict[str, str] = {}
    aux = prepare_aux_tasks(cfg, aux_tasks, data_dir, cache_dir, tokenizers[1],
                            skipped if partners_by_default(cfg) else None) if aux_tasks else {}
    if skipped:
        data_info["curriculum_tasks_left_out"] = skipped
    ood, teacher_ood = prepare_ood(cfg, data_dir, cache_dir, tokenizers, info) if cfg.eval.ood_tasks else ({}, None)
    if cfg.data.transfer:
        prepare_transfer(cfg, info, splits, teacher_splits, tokenizers, data_dir, cache_dir, out_dir, data_info)
    if teacher_splits is not None:
        data_info["tokenizers"] = {"teacher": tokenizers[0].name_or_path, "student": tokenizers[1].name_or_path,
                                   "note": "different: each model reads its own encoding of every split"}
    return RunData(info, splits, dev_names, aux, ood, data_info, tokenizers[1].pad_token_id or 0, teacher_splits,
                   teacher_ood, {"teacher": tokenizers[0], "student": tokenizers[1]})


def prepare_transfer(cfg: Any, info: TaskInfo, splits: dict[str, EncodedSplit],
                     teacher_splits: Optional[dict[str, EncodedSplit]], tokenizers: tuple[Any, Any],
                     data_dir: Optional[str], cache_dir: Path, out_dir: Path, data_info: dict[str, Any]) -> None:
    """The ``transfer`` split (inputs only the teacher labels), in both encodings; its record in transfer.json and,
    without the per-example list, in results.json."""
    test = [ex for name, split in splits.items() if name.startswith("test") for ex in split.examples]
    examples, record = transfer_examples(cfg, splits["train"].examples, test, tokenizers[1].mask_token, data_dir,
                                         cache_dir)
    write_json(out_dir / "transfer.json", record)
    data_info["transfer"] = {k: v for k, v in record.items() if k != "examples"}
    if not examples:
        return
    student, teacher = encode_views(tokenizers, examples, info.name, "transfer", info.kind, cfg.task.max_length,
                                    cache_dir)
    splits["transfer"] = student
    if teacher_splits is not None and teacher is not None:
        teacher_splits["transfer"] = teacher


def check_aligned(student: EncodedSplit, teacher: EncodedSplit) -> None:
    """Teacher outputs are looked up by example index: both encodings must hold the same examples in the same order."""
    if len(student) != len(teacher) or student.examples != teacher.examples:
        raise RuntimeError(f"the teacher's and the student's encodings of {student.task}/{student.name} hold "
                           f"different examples ({len(teacher)} and {len(student)}); they must be the same, in order")


def encode_views(tokenizers: tuple[Any, Any], examples: list, task: str, name: str, kind: str, max_length: int,
                 cache_dir: Path) -> tuple[EncodedSplit, Optional[EncodedSplit]]:
    """The student's encoding of a split and, if the teacher's tokenizer is another, the teacher's (else None)."""
    teacher_tok, student_tok = tokenizers
    student = encode_examples(student_tok, examples, task, name, kind, max_length, cache_dir)
    if teacher_tok is student_tok:
        return student, None
    teacher = encode_examples(teacher_tok, examples, task, name, kind, max_length, cache_dir)
    check_aligned(student, teacher)
    return student, teacher


def task_info(data: TaskData, task_cfg: Any) -> TaskInfo:
    spec = get_task_spec(data.name, task_cfg)
    return TaskInfo(data.name, data.kind, list(data.label_names), list(spec.metrics), spec.main_metric)


def _labels(examples: list) -> Optional[np.ndarray]:
    return np.array([ex.label for ex in examples]) if examples else None


def prepare_main_task(cfg: Any, data_dir: Optional[str], cache_dir: Path, out_dir: Path, tokenizers: tuple[Any, Any]
                      ) -> tuple[TaskInfo, dict[str, EncodedSplit], Optional[dict[str, EncodedSplit]], list[str],
                                 dict[str, Any]]:
    """Load the task, subsample if asked, split the official train file into train′ and quiz (9:1), or into
    train′, quiz and a held-out selection slice (``trainer.selection_split=heldout``), tokenise every split: the
    student's encoding, and the teacher's when its tokenizer is another (else None)."""
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
    views = {name: [data.train[i] for i in idx] for name, idx in index.items()}
    dev_names = list(data.dev)
    for name, exs in list(data.dev.items()) + list(data.test.items()):
        if cfg.task.max_eval_examples and name in data.dev:
            exs = subsample(exs, cfg.task.max_eval_examples, cfg.seed)
        if exs:
            views[name] = exs
    encoded = {name: encode_views(tokenizers, exs, info.name, name, info.kind, cfg.task.max_length, cache_dir)
               for name, exs in views.items()}
    splits = {name: student for name, (student, _) in encoded.items()}
    teacher_splits = None if tokenizers[0] is tokenizers[1] else {name: t for name, (_, t) in encoded.items()}
    return info, splits, teacher_splits, dev_names, {"source": data.source,
                                                     "sizes": {k: len(v) for k, v in splits.items()}}


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


def label_scheme_mismatch(data: TaskData, info: TaskInfo) -> Optional[str]:
    """Why the main task's head cannot be scored on ``data`` (None when it can): another kind of task, or other
    classes (names and order: the head's outputs are read as the main task's labels)."""
    if data.kind != info.kind or (info.kind == "classification" and list(data.label_names) != info.label_names):
        return (f"{data.name} has labels {list(data.label_names)} ({data.kind}), not the main task's "
                f"{info.label_names} ({info.kind})")
    return None


def prepare_ood(cfg: Any, data_dir: Optional[str], cache_dir: Path, tokenizers: tuple[Any, Any],
                info: TaskInfo) -> tuple[dict[str, EncodedSplit], Optional[dict[str, EncodedSplit]]]:
    """Other tasks with the main task's label scheme, read through the main task's head: the student's encoding, and
    the teacher's when its tokenizer is another (else None)."""
    out: dict[str, EncodedSplit] = {}
    teacher_out: dict[str, EncodedSplit] = {}
    for name in cfg.eval.ood_tasks:
        tcfg = task_config_for(name, max_length=cfg.task.max_length, max_eval_examples=cfg.task.max_eval_examples)
        data = load_task(tcfg, data_dir, cache_dir)
        mismatch = label_scheme_mismatch(data, info)
        if mismatch:
            raise ConfigError(f"eval.ood_tasks: {mismatch}; pick a task with the same label scheme")
        dev_name, exs = next(iter(data.dev.items()))
        if cfg.task.max_eval_examples:
            exs = subsample(exs, cfg.task.max_eval_examples, cfg.seed)
        out[name], teacher = encode_views(tokenizers, exs, name, dev_name, info.kind, cfg.task.max_length, cache_dir)
        if teacher is not None:
            teacher_out[name] = teacher
    return out, (teacher_out if tokenizers[0] is not tokenizers[1] else None)


