"""GLUE tasks: CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE (as ``glue_rte``), WNLI.

Official files are the TSVs of ``download_glue_data.py``, read with quoting disabled (their
sentences contain unbalanced quotes). Their quirks are encoded per task: CoLA train/dev have no
header, MRPC's label column is "Quality" (and starts with a BOM), STS-B's target is "score",
test files carry an ``index`` (QQP: ``id``) column and no label. Hub records come from
``nyu-mll/glue`` with integer labels in the same order as ``label_names``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from mpdistil.data.io import read_tsv, row_error
from mpdistil.data.registry import TaskSpec, hub_label, parse_label, register_task
from mpdistil.data.types import DataError, Example, Kind

HUB_PATH = "nyu-mll/glue"
FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
COLA_COLUMNS = ("source", "label", "original_label", "sentence")


def _readers(
    text_columns: tuple[str, ...],
    label_column: str,
    hub_fields: tuple[str, ...],
    uid_column: Optional[str] = None,
    test_uid_column: str = "index",
    headerless: Optional[tuple[str, ...]] = None,
) -> dict[str, Any]:
    """Local and hub readers for one GLUE task.

    Rows of files without an id column get their 0-based row position as ``uid``. ``headerless``
    names the columns of train/dev files that have no header line (CoLA).
    """

    def read_local(path: Path, split: str, spec: TaskSpec) -> list[Example]:
        is_test = split in spec.test_splits
        no_header = headerless is not None and not is_test
        rows = read_tsv(path, header=not no_header, fieldnames=headerless if no_header else None)
        if not rows:
            return []
        uid_col = test_uid_column if is_test else uid_column
        needed = list(text_columns) + ([uid_col] if uid_col else []) + ([] if is_test else [label_column])
        present = list(rows[0].fields)
        missing = [c for c in needed if c not in present]
        if missing:
            raise DataError(
                f"{path} has no column {', '.join(map(repr, missing))} for task {spec.name} "
                f"(columns: {', '.join(present)}); data_dir must hold the official GLUE {spec.folder} files"
            )
        examples = []
        for position, (line, fields) in enumerate(rows):
            texts = tuple(fields[c] for c in text_columns)
            raw = None if is_test else fields[label_column]
            label = parse_label(spec, raw, split, path, line)
            if spec.kind == "regression" and label is not None and not 0.0 <= label <= 5.0:
                raise row_error(path, line, f"score {raw!r} lies outside the 0-5 similarity scale")
            uid: Any = fields[uid_col] if uid_col else position
            examples.append(Example(uid=_as_int(uid), texts=texts, label=label))
        return examples

    def read_hub(record: Mapping[str, Any], split: str, spec: TaskSpec) -> Example:
        texts = tuple(str(record[f]) for f in hub_fields)
        return Example(uid=record["idx"], texts=texts, label=hub_label(spec, record.get("label"), split))

    return {"read_local": read_local, "read_hub": read_hub}


def _as_int(value: Any) -> Any:
    """Official indices are integers written as text; keep anything else as it is."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _glue(
    name: str,
    folder: str,
    kind: Kind,
    labels: tuple[str, ...],
    readers: dict[str, Any],
    leaderboard_labels: str,
    metrics: tuple[str, ...] = ("accuracy",),
    main_metric: str = "accuracy",
    hub_name: Optional[str] = None,
    binary_labels: bool = False,
    **extra: Any,
) -> TaskSpec:
    return TaskSpec(
        name=name,
        benchmark="glue",
        kind=kind,
        label_names=labels,
        metrics=metrics,
        main_metric=main_metric,
        folder=folder,
        leaderboard_file=f"{folder}.tsv",
        hub_path=HUB_PATH,
        hub_name=hub_name or name,
        files=extra.pop("files", FILES),
        local_labels=("0", "1") if binary_labels else None,
        leaderboard_labels=leaderboard_labels,
        **readers,
        **extra,
    )


@register_task("cola")
def cola() -> TaskSpec:
    return _glue(
        "cola", "CoLA", "classification", ("unacceptable", "acceptable"),
        _readers(("sentence",), "label", ("sentence",), headerless=COLA_COLUMNS),
        "index", metrics=("mcc", "accuracy"), main_metric="mcc", binary_labels=True,
    )


@register_task("sst2")
def sst2() -> TaskSpec:
    return _glue(
        "sst2", "SST-2", "classification", ("negative", "positive"),
        _readers(("sentence",), "label", ("sentence",)), "index", binary_labels=True,
    )


@register_task("mrpc")
def mrpc() -> TaskSpec:
    return _glue(
        "mrpc", "MRPC", "classification", ("not_equivalent", "equivalent"),
        _readers(("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2")),
        "index", metrics=("accuracy", "f1"), binary_labels=True,
    )


@register_task("stsb")
def stsb() -> TaskSpec:
    return _glue(
        "stsb", "STS-B", "regression", (),
        _readers(("sentence1", "sentence2"), "score", ("sentence1", "sentence2"), uid_column="index"),
        "float", metrics=("pearson", "spearman"), main_metric="pearson",
    )


@register_task("qqp")
def qqp() -> TaskSpec:
    return _glue(
        "qqp", "QQP", "classification", ("not_duplicate", "duplicate"),
        _readers(("question1", "question2"), "is_duplicate", ("question1", "question2"),
                 uid_column="id", test_uid_column="id"),
        "index", metrics=("accuracy", "f1"), binary_labels=True,
    )


@register_task("mnli")
def mnli() -> TaskSpec:
    return _glue(
        "mnli", "MNLI", "classification", ("entailment", "neutral", "contradiction"),
        _readers(("sentence1", "sentence2"), "gold_label", ("premise", "hypothesis"), uid_column="index"),
        "name",
        files={
            "train": "train.tsv",
            "dev_matched": "dev_matched.tsv",
            "dev_mismatched": "dev_mismatched.tsv",
            "test_matched": "test_matched.tsv",
            "test_mismatched": "test_mismatched.tsv",
        },
        dev_splits=("dev_matched", "dev_mismatched"),
        test_splits=("test_matched", "test_mismatched"),
        hub_splits={
            "train": "train",
            "dev_matched": "validation_matched",
            "dev_mismatched": "validation_mismatched",
            "test_matched": "test_matched",
            "test_mismatched": "test_mismatched",
        },
        leaderboard_files={"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
    )


@register_task("qnli")
def qnli() -> TaskSpec:
    return _glue(
        "qnli", "QNLI", "classification", ("entailment", "not_entailment"),
        _readers(("question", "sentence"), "label", ("question", "sentence"), uid_column="index"),
        "name",
    )


@register_task("glue_rte")
def glue_rte() -> TaskSpec:
    return _glue(
        "glue_rte", "RTE", "classification", ("entailment", "not_entailment"),
        _readers(("sentence1", "sentence2"), "label", ("sentence1", "sentence2"), uid_column="index"),
        "name", hub_name="rte",
    )


@register_task("wnli")
def wnli() -> TaskSpec:
    return _glue(
        "wnli", "WNLI", "classification", ("not_entailment", "entailment"),
        _readers(("sentence1", "sentence2"), "label", ("sentence1", "sentence2"), uid_column="index"),
        "index", binary_labels=True,
    )
