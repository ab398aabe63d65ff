"""Task ``custom``: the user's own CSV/TSV/JSONL files.

``task.train=<file>`` (+ optional ``task.dev``, ``task.test``), ``task.text_fields=[a]`` or
``[a, b]``, ``task.label_field=<column>``, ``task.type=classification|regression``. Class names
are discovered from the training file (sorted; numerically when they are all integers) and
returned in ``TaskData.label_names``. Without a dev file a fixed-seed 10% of train is held out
as dev, and ``TaskData.source`` says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from mpdistil.data.io import Row, read_columns, read_records, row_error
from mpdistil.data.registry import TaskSpec, cfg_get, normalise_label, register_task, replace_spec, resolve_path
from mpdistil.data.splits import quiz_split
from mpdistil.data.types import DataError, Example, TaskData

DEV_SEED = 1234
DEV_FRACTION = 0.1
UID_FIELDS = ("idx", "id", "index", "uid", "guid")


def _resolve(file: str, data_dir: Optional[str], key: str) -> Path:
    """A user file: relative to ``data_dir`` when it is there, else to the working directory."""
    if data_dir:
        under = resolve_path(data_dir) / file
        if under.is_file():
            return under
    path = resolve_path(file)
    if not path.is_file():
        raise DataError(f"task.{key}={file} not found (looked for {path}); give an existing .csv/.tsv/.jsonl file")
    return path


def _read(path: Path, key: str) -> list[Row]:
    """Records of a user file, refusing empty ones."""
    rows = read_records(path)
    if not rows:
        raise DataError(f"task.{key}={path} has no data rows; it must hold at least one example")
    return rows


def _columns_present(path: Path, rows: list[Row]) -> list[str]:
    if path.suffix.lower() in (".csv", ".tsv"):
        return read_columns(path, "," if path.suffix.lower() == ".csv" else "\t")
    seen: dict[str, None] = {}
    for row in rows[:100]:
        seen.update(dict.fromkeys(row.fields))
    return list(seen)


def _check_columns(path: Path, rows: list[Row], needed: Sequence[str], key: str) -> None:
    """Name a missing column and list the ones present, in one line."""
    present = _columns_present(path, rows)
    for column in needed:
        if column not in present:
            setting = "task.label_field" if key == "label" else "task.text_fields"
            raise DataError(
                f"column {column!r} is not in {path} (columns: {', '.join(present)}); set {setting} to one of those"
            )


def _text(row: Row, column: str, path: Path) -> str:
    value = row.fields.get(column)
    if value is None:
        raise row_error(path, row.line, f"no value for text field {column!r}")
    if isinstance(value, (dict, list)):
        raise row_error(path, row.line, f"text field {column!r} holds a {type(value).__name__}, not text")
    return value if isinstance(value, str) else str(value)


def _raw_label(row: Row, label_field: str) -> Optional[str]:
    value = row.fields.get(label_field)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return normalise_label(value)


def _sorted_labels(values: set[str]) -> list[str]:
    """Sorted class names; integers sort by value so "10" follows "9"."""
    try:
        return sorted(values, key=lambda v: (int(v), v))
    except ValueError:
        return sorted(values)


def _uid(row: Row, position: int) -> Any:
    for field in UID_FIELDS:
        if field in row.fields and row.fields[field] not in (None, ""):
            value = row.fields[field]
            return int(value) if isinstance(value, str) and value.isdigit() else value
    return position


def _examples(
    rows: list[Row], path: Path, text_fields: Sequence[str], label_field: str, kind: str,
    label_names: Optional[list[str]], required: bool,
) -> list[Example]:
    """Encode rows; labels must be present when ``required`` and known when classes are fixed."""
    examples = []
    for position, row in enumerate(rows):
        texts = tuple(_text(row, c, path) for c in text_fields)
        raw = _raw_label(row, label_field)
        label: Any = None
        if raw is None:
            if required:
                raise row_error(path, row.line, f"no value for label field {label_field!r}")
        elif kind == "regression":
            try:
                label = float(raw)
            except ValueError:
                raise row_error(path, row.line, f"label {raw!r} is not a number (task.type=regression)") from None
        elif label_names is not None:
            if raw not in label_names:
                raise row_error(
                    path, row.line,
                    f"label {raw!r} does not occur in the training file (labels: {', '.join(label_names)})",
                    "fix the label, or add examples of that class to task.train",
                )
            label = label_names.index(raw)
        else:
            label = raw
        examples.append(Example(uid=_uid(row, position), texts=texts, label=label))
    return examples


def load_custom(spec: TaskSpec, task_cfg: Any, data_dir: Optional[str], cache_dir: str) -> TaskData:
    """Read the user's files into TaskData, discovering class names from train."""
    train_file = cfg_get(task_cfg, "train")
    if not train_file:
        raise DataError("task=custom needs task.train=<file.csv|.tsv|.jsonl> (and task.text_fields, task.label_field)")
    text_fields = list(cfg_get(task_cfg, "text_fields") or [])
    if len(text_fields) not in (1, 2):
        raise DataError(
            f"task.text_fields={text_fields} must name one or two columns, e.g. task.text_fields=[sentence] "
            "or task.text_fields=[premise,hypothesis]"
        )
    label_field = cfg_get(task_cfg, "label_field")
    if not label_field:
        raise DataError("task=custom needs task.label_field=<the column holding the label>")
    kind = spec.kind

    train_path = _resolve(str(train_file), data_dir, "train")
    train_rows = _read(train_path, "train")
    _check_columns(train_path, train_rows, text_fields, "text")
    _check_columns(train_path, train_rows, [label_field], "label")
    label_names: Optional[list[str]] = None
    if kind == "classification":
        raws = {r for row in train_rows if (r := _raw_label(row, label_field)) is not None}
        label_names = _sorted_labels(raws)
        if len(label_names) < 2:
            raise DataError(f"{train_path} has {len(label_names)} distinct label(s) in {label_field!r}; "
                            "a classifier needs two or more")
    train = _examples(train_rows, train_path, text_fields, label_field, kind, label_names, required=True)
    source = f"local:{train_path}"

    dev_file = cfg_get(task_cfg, "dev")
    if dev_file:
        dev_path = _resolve(str(dev_file), data_dir, "dev")
        dev_rows = _read(dev_path, "dev")
        _check_columns(dev_path, dev_rows, text_fields, "text")
        _check_columns(dev_path, dev_rows, [label_field], "label")
        dev = _examples(dev_rows, dev_path, text_fields, label_field, kind, label_names, required=True)
        source += f" dev:{dev_path}"
    else:
        labels = [ex.label for ex in train]
        keep, held = quiz_split(labels, DEV_FRACTION, DEV_SEED, stratify=kind == "classification")
        dev = [train[i] for i in held]
        train = [train[i] for i in keep]
        source += f" (no task.dev: dev is a seeded {DEV_FRACTION:.0%} of train held out, seed {DEV_SEED})"

    test: dict[str, list[Example]] = {}
    test_file = cfg_get(task_cfg, "test")
    if test_file:
        test_path = _resolve(str(test_file), data_dir, "test")
        test_rows = _read(test_path, "test")
        _check_columns(test_path, test_rows, text_fields, "text")
        test["test"] = _examples(test_rows, test_path, text_fields, label_field, kind, label_names, required=False)
        source += f" test:{test_path}"
    return TaskData(spec.name, kind, label_names or [], train, {"dev": dev}, test, source=source)


def configure_type(spec: TaskSpec, task_cfg: Any) -> TaskSpec:
    """``task.type`` picks classification (accuracy, macro-F1) or regression (Pearson, Spearman)."""
    kind = cfg_get(task_cfg, "type") or "classification"
    if kind == "classification":
        return spec
    if kind == "regression":
        return replace_spec(spec, kind="regression", metrics=("pearson", "spearman"), main_metric="pearson",
                            leaderboard_labels="float")
    raise DataError(f"task.type={kind!r} is not one of ['classification', 'regression']")


@register_task("custom")
def custom() -> TaskSpec:
    return TaskSpec(
        name="custom",
        benchmark="custom",
        kind="classification",
        label_names=(),
        metrics=("accuracy", "macro_f1"),
        main_metric="accuracy",
        leaderboard_labels="name",
        loader=load_custom,
        configure=configure_type,
        description="your own CSV/TSV/JSONL files",
    )
