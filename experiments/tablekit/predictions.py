"""Per-example dev predictions behind a table's cells: read from run folders, kept in one file per table.

Each run folder has a ``predictions.json`` (every row of that run, every dev example). A table keeps
only what its cells came from, keyed by *table* row, in ``<table>_predictions.json``, so that its
paired comparisons can be recomputed after the run folders are gone::

    {"format": "mpdistil table predictions 1", "table": "<table>",
     "tasks": {"<task>": {"kind": "classification", "main_metric": "accuracy", "label_names": [...],
       "seeds": {"<seed>": {
         "train_label_counts": {"<class index>": count},
         "splits": {"<split>": {"uid_ranges": "0-55", "labels": "0120..."}},
         "rows": {"<table row>": {"<split>": "0121..."}},
         "runs": {"<table row>": "<run folder, relative to its runs folder>"}}}}}}

Class predictions and labels are strings with one character per example, in the order of the
split's uids: the class index as ``0-9``, then ``a-z``, then ``A-Z`` (up to 62 classes), and ``-``
where a row has no prediction for that example. Regression labels and predictions are JSON lists of
numbers (``null`` where missing). Uids are ``uid_ranges`` (``"0-55,60,62-70"``) when every uid is a
plain non-negative integer, else a ``uids`` list of strings; a uid repeated within a split is told
apart by a ``#<n>`` suffix on its n-th repeat. Examples are identified by uid, so two rows from
different runs of one seed pair example by example even if their dev files were subsampled
differently; a row lacking an example has ``-`` there.
"""
from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "mpdistil table predictions 1"
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MISSING_CLASS = "-"
_CLASS_OF = {c: i for i, c in enumerate(ALPHABET)}
_INT = re.compile(r"0|[1-9][0-9]*")

Value = int | float | None


# ------------------------------------------------------------------------------------------------ encoding


def encode_classes(values: Sequence[Value]) -> str:
    """One character per class index; ``-`` for a missing one."""
    try:
        return "".join(MISSING_CLASS if v is None else ALPHABET[int(v)] for v in values)
    except IndexError:
        raise ValueError(f"class indices must be 0-{len(ALPHABET) - 1} to be stored as characters") from None


def decode_classes(text: str) -> list[int | None]:
    return [None if c == MISSING_CLASS else _CLASS_OF[c] for c in text]


def unique_keys(uids: Iterable[Any]) -> list[str]:
    """Uids as strings, a repeat made distinct by ``#<n>``, so examples can be matched by key."""
    seen: dict[str, int] = {}
    keys = []
    for uid in uids:
        uid = str(uid)
        n = seen.get(uid, 0)
        seen[uid] = n + 1
        keys.append(uid if n == 0 else f"{uid}#{n}")
    return keys


def encode_uids(keys: Sequence[str]) -> dict[str, Any]:
    """``{"uid_ranges": "0-55,60"}`` for plain integer uids, else ``{"uids": [...]}``."""
    if not all(_INT.fullmatch(k) for k in keys):
        return {"uids": list(keys)}
    parts, start, prev = [], None, None
    for k in map(int, keys):
        if start is not None and k == prev + 1:
            prev = k
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = k
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    return {"uid_ranges": ",".join(parts)}


def decode_uids(entry: dict[str, Any]) -> list[str]:
    if "uids" in entry:
        return [str(u) for u in entry["uids"]]
    keys = []
    for part in filter(None, entry["uid_ranges"].split(",")):
        a, _, b = part.partition("-")
        keys += [str(k) for k in range(int(a), int(b or a) + 1)]
    return keys


# ----------------------------------------------------------------------------------------------- the store


@dataclass
class SplitExamples:
    """The examples of one dev split at one task and seed: the union over the rows stored there."""

    keys: list[str] = field(default_factory=list)
    labels: dict[str, Value] = field(default_factory=dict)


@dataclass
class SeedEntry:
    train_label_counts: dict[str, int] = field(default_factory=dict)
    splits: dict[str, SplitExamples] = field(default_factory=dict)
    rows: dict[str, dict[str, dict[str, Value]]] = field(default_factory=dict)  # row -> split -> key -> prediction
    runs: dict[str, str] = field(default_factory=dict)


@dataclass
class TaskEntry:
    kind: str
    main_metric: str
    label_names: list[str]
    seeds: dict[int, SeedEntry] = field(default_factory=dict)

    @property
    def regression(self) -> bool:
        return self.kind == "regression"


@dataclass(frozen=True)
class RowPredictions:
    """One row's predictions at one task and seed, as a run or a table file gives them."""

    kind: str
    main_metric: str
    label_names: list[str]
    train_label_counts: dict[str, int]
    splits: dict[str, tuple[list[str], list[Value], list[Value]]]  # split -> (keys, labels, predictions)
    run: str


class TablePredictions:
    """Per task, seed and row: each dev example's prediction, plus the gold labels and training label counts."""

    def __init__(self, table: str, row_order: Sequence[str] = (), task_order: Sequence[str] = ()) -> None:
        self.table = table
        self.row_order = list(row_order)
        self.task_order = list(task_order)
        self.tasks: dict[str, TaskEntry] = {}

    def __bool__(self) -> bool:
        return any(seed.rows for t in self.tasks.values() for seed in t.seeds.values())

    def slots(self) -> list[tuple[str, int, str]]:
        return [(task, seed, row) for task, t in self.tasks.items() for seed, e in t.seeds.items() for row in e.rows]

    def has(self, task: str, seed: int, row: str) -> bool:
        return row in self.tasks.get(task, TaskEntry("", "", [])).seeds.get(seed, SeedEntry()).rows

    def add(self, task: str, seed: int, row: str, given: RowPredictions) -> str | None:
        """Store a row's predictions; a one-line reason instead when they cannot sit beside what is stored."""
        t = self.tasks.setdefault(task, TaskEntry(given.kind, given.main_metric, list(given.label_names)))
        if t.kind != given.kind:
            return f"{row} / {task} / seed {seed}: predictions of kind {given.kind!r} beside {t.kind!r}; left out"
        entry = t.seeds.setdefault(seed, SeedEntry())
        for split, (keys, labels, _) in given.splits.items():
            ex = entry.splits.get(split)
            if ex is None:
                continue
            clash = next((k for k, y in zip(keys, labels) if k in ex.labels and ex.labels[k] != y), None)
            if clash is not None:
                return (f"{row} / {task} / seed {seed}: run {given.run} labels {split} example {clash} "
                        f"{labels[keys.index(clash)]!r}, another run {ex.labels[clash]!r}; its predictions left out")
        if not entry.train_label_counts:
            entry.train_label_counts = dict(given.train_label_counts)
        stored = entry.rows.setdefault(row, {})
        for split, (keys, labels, preds) in given.splits.items():
            ex = entry.splits.setdefault(split, SplitExamples())
            for k, y in zip(keys, labels):
                if k not in ex.labels:
                    ex.keys.append(k)
                    ex.labels[k] = y
            stored[split] = {k: p for k, p in zip(keys, preds) if p is not None}
        entry.runs[row] = given.run
        return None

    def row(self, task: str, seed: int, row: str) -> RowPredictions:
        """What is stored for one row, in the form :meth:`add` takes."""
        t = self.tasks[task]
        entry = t.seeds[seed]
        splits = {}
        for split, preds in entry.rows[row].items():
            ex = entry.splits[split]
            keys = [k for k in ex.keys if k in preds]
            splits[split] = (keys, [ex.labels[k] for k in keys], [preds[k] for k in keys])
        return RowPredictions(t.kind, t.main_metric, t.label_names, entry.train_label_counts, splits,
                              entry.runs.get(row, ""))

    # ----------------------------------------------------------------------------------------- reading

    def paired(self, task: str, split: str, a: str, b: str
               ) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Per seed with both rows on ``split``: (seed, gold, a, b) over the examples both predicted."""
        t = self.tasks.get(task)
        out = []
        for seed, entry in sorted(t.seeds.items()) if t else []:
            pa, pb = entry.rows.get(a, {}).get(split), entry.rows.get(b, {}).get(split)
            if pa is None or pb is None:
                continue
            ex = entry.splits[split]
            keys = [k for k in ex.keys if k in pa and k in pb and ex.labels[k] is not None]
            if not keys:
                continue
            dtype = np.float64 if t.regression else np.int64
            out.append((seed, np.array([ex.labels[k] for k in keys], dtype=dtype),
                        np.array([pa[k] for k in keys], dtype=dtype), np.array([pb[k] for k in keys], dtype=dtype)))
        return out

    def labelled(self, task: str, seed: int, split: str) -> list[Value]:
        ex = self.tasks[task].seeds[seed].splits.get(split)
        return [] if ex is None else [y for y in (ex.labels[k] for k in ex.keys) if y is not None]

    # ------------------------------------------------------------------------------------------ as JSON

    def _ordered(self, names: Iterable[str], order: list[str]) -> list[str]:
        return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))

    def to_json(self) -> dict[str, Any]:
        tasks = {}
        for task in self._ordered(self.tasks, self.task_order):
            t = self.tasks[task]
            seeds = {}
            for seed in sorted(t.seeds):
                e = t.seeds[seed]
                if not e.rows:
                    continue
                enc = (lambda vs: list(vs)) if t.regression else encode_classes  # noqa: E731
                splits = {s: {**encode_uids(ex.keys), "labels": enc([ex.labels[k] for k in ex.keys])}
                          for s, ex in sorted(e.splits.items())}
                rows = {r: {s: enc([e.rows[r][s].get(k) for k in e.splits[s].keys]) for s in sorted(e.rows[r])}
                        for r in self._ordered(e.rows, self.row_order)}
                seeds[str(seed)] = {"train_label_counts": e.train_label_counts, "splits": splits, "rows": rows,
                                    "runs": {r: e.runs[r] for r in rows}}
            if seeds:
                tasks[task] = {"kind": t.kind, "main_metric": t.main_metric, "label_names": t.label_names,
                               "seeds": seeds}
        return {"format": FORMAT, "table": self.table, "tasks": tasks}

    def write(self, path: Path) -> None:
        """One line per row and seed (and per split's labels): a new seed or row shows as new lines in a diff."""
        text = _layout(self.to_json()) + "\n"
        if path.suffix == ".gz":
            path.write_bytes(gzip.compress(text.encode(), mtime=0))
        else:
            path.write_text(text)

    @classmethod
    def from_json(cls, doc: dict[str, Any], row_order: Sequence[str] = (), task_order: Sequence[str] = ()
                  ) -> TablePredictions:
        store = cls(doc["table"], row_order, task_order)
        for task, t in doc["tasks"].items():
            regression = t["kind"] == "regression"
            dec = (lambda vs: list(vs)) if regression else decode_classes  # noqa: E731
            for seed, e in t["seeds"].items():
                keys = {s: decode_uids(ex) for s, ex in e["splits"].items()}
                labels = {s: dec(ex["labels"]) for s, ex in e["splits"].items()}
                for s in keys:
                    if len(keys[s]) != len(labels[s]):
                        raise ValueError(f"{task} seed {seed} {s}: {len(keys[s])} uids, {len(labels[s])} labels")
                for row, per_split in e["rows"].items():
                    splits = {}
                    for s, preds in per_split.items():
                        values = dec(preds)
                        if len(values) != len(keys[s]):
                            raise ValueError(f"{task} seed {seed} {row} {s}: {len(values)} predictions for "
                                             f"{len(keys[s])} uids")
                        splits[s] = (keys[s], labels[s], values)
                    given = RowPredictions(t["kind"], t["main_metric"], list(t["label_names"]),
                                           {str(k): int(v) for k, v in e["train_label_counts"].items()}, splits,
                                           e.get("runs", {}).get(row, ""))
                    note = store.add(task, int(seed), row, given)
                    if note:
                        raise ValueError(note)
        return store


def _layout(value: Any, depth: int = 0) -> str:
    """JSON with a dict of dicts spread over lines, one key per line, and anything else on a single line."""
    if isinstance(value, dict) and any(isinstance(v, dict) for v in value.values()):
        pad = " " * (depth + 1)
        items = [f"{pad}{json.dumps(k)}: {_layout(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
    return json.dumps(value, ensure_ascii=False)


def read_table_predictions(path: Path, table: str, row_order: Sequence[str] = (),
                           task_order: Sequence[str] = ()) -> TablePredictions:
    """A ``<table>_predictions.json[.gz]``; SystemExit with a one-line reason when it is not one of ``table``'s."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        doc = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {path} is not readable as a table's predictions file: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SystemExit(f"error: {path} is not a <table>_predictions.json written by render (format {FORMAT!r})")
    if doc.get("table") != table:
        raise SystemExit(f"error: {path} holds table {doc.get('table')!r}, not {table!r}; "
                         f"pass the predictions of {table!r}")
    try:
        return TablePredictions.from_json(doc, row_order, task_order)
    except (KeyError, TypeError, ValueError) as exc:
        raise SystemExit(f"error: {path} is malformed: {type(exc).__name__}: {exc}") from None


# ------------------------------------------------------------------------------------------- run folders


def read_run_predictions(folder: Path) -> dict[str, Any] | None:
    """A run folder's predictions.json, or None (runs made before it was written have none)."""
    path = folder / "predictions.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("rows"), dict) else None


def from_run(doc: dict[str, Any], agent: str, splits: Iterable[str], run: str) -> RowPredictions | None:
    """One agent's predictions on ``splits`` from a run's predictions.json; None when it has none of them."""
    preds = doc["rows"].get(agent, {})
    out = {}
    for s in splits:
        ex = doc.get("splits", {}).get(s)
        if ex is None or s not in preds or len(preds[s]) != len(ex["uids"]):
            continue
        out[s] = (unique_keys(ex["uids"]), list(ex["labels"]), list(preds[s]))
    if not out:
        return None
    counts = {str(k): int(v) for k, v in (doc.get("train_label_counts") or {}).items()}
    return RowPredictions(doc.get("kind", "classification"), doc.get("main_metric", ""),
                          list(doc.get("label_names") or []), counts, out, run)


class RunReader:
    """Run folders' predictions.json files, each read once however many rows a table takes from it."""

    def __init__(self) -> None:
        self.docs: dict[Path, dict[str, Any] | None] = {}

    def row(self, folder: Path, agent: str, splits: Iterable[str], run: str) -> RowPredictions | None:
        """One agent's predictions from a run folder (see :func:`from_run`); None when the run kept none."""
        if folder not in self.docs:
            self.docs[folder] = read_run_predictions(folder)
        doc = self.docs[folder]
        return from_run(doc, agent, splits, run) if doc is not None else None


def majority_class(counts: dict[str, int]) -> int | None:
    """The most frequent training class (the lowest index among equals); None without counts."""
    if not counts:
        return None
    return int(min(counts, key=lambda k: (-counts[k], int(k))))
