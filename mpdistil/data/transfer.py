"""Teacher-labelled coverage (``data.transfer``): inputs without labels that only the teacher labels.

Distillation needs no label on an input, only the teacher's output, so the distilled students can see more
inputs than the labelled ones. The sources, in the order listed:

- ``augment``: perturbed copies of the train′ inputs, ``data.augment_multiplier`` per example: each word of each
  segment is chosen with probability ``data.augment_rate`` and deleted, swapped with its right neighbour, or
  replaced by the student tokenizer's mask token (``data.augment=delete|swap|mask``); seeded by the run's seed;
- ``test``: the task's official test inputs (the benchmarks publish them without labels);
- a task name: that task's train inputs, when they have the main task's input shape (segments per example, or
  choices per multiple-choice example): e.g. the sentiment domains for each other;
- a ``.csv``/``.tsv``/``.jsonl`` file: one input per row, its segments in ``data.transfer_fields`` (default: a
  custom task's ``task.text_fields``, else ``text``, or ``text_a`` and ``text_b`` for pairs).

``data.transfer_size`` keeps at most N of them (``N``) or K times as many as train′ has (``Kx``), a seeded
sample that keeps the sources' order. Every kept input's source and id are written to ``transfer.json``.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import numpy as np

from mpdistil.config import ConfigError
from mpdistil.data.io import read_records
from mpdistil.data.registry import TASK_CONF_DIR, load_task, task_config_for
from mpdistil.data.types import DataError, Example, MissingTaskFiles

BUILTIN_SOURCES = ("augment", "test")
FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".ndjson")
_SIZE = re.compile(r"^(?:(\d+)|(\d+(?:\.\d+)?)x)$")


def parse_size(value: Optional[str]) -> Optional[tuple[str, float]]:
    """``("cap", N)``, ``("times", K)`` or None (keep every input); ValueError for anything else."""
    if value is None:
        return None
    match = _SIZE.match(str(value).strip())
    if not match or float(match.group(1) or match.group(2)) <= 0:
        raise ValueError(value)
    return ("cap", int(match.group(1))) if match.group(1) else ("times", float(match.group(2)))


def is_file_source(source: str) -> bool:
    return Path(source).suffix.lower() in FILE_SUFFIXES


def check_transfer(cfg: Any) -> None:
    """One-line refusals of impossible ``data.*`` values, before any data or model is loaded."""
    d = cfg.data
    try:
        parse_size(d.transfer_size)
    except ValueError:
        raise ConfigError(f"data.transfer_size={d.transfer_size!r} is neither a count nor a multiple of train' "
                          "(e.g. data.transfer_size=500 or data.transfer_size=4x)") from None
    if not 0.0 < d.augment_rate <= 1.0:
        raise ConfigError(f"data.augment_rate={d.augment_rate} must lie in (0, 1]; e.g. data.augment_rate=0.15")
    if d.augment_multiplier < 1:
        raise ConfigError(f"data.augment_multiplier={d.augment_multiplier} must be a positive integer")
    sources = list(d.transfer)
    repeated = sorted({s for s in sources if sources.count(s) > 1})
    if repeated:
        raise ConfigError(f"data.transfer lists {repeated} more than once; list each source once")
    tasks = task_presets()
    for source in sources:
        if source in BUILTIN_SOURCES or source in tasks:
            if source == cfg.task.name:
                raise ConfigError(f"data.transfer names the main task {source!r}, whose train inputs are labelled "
                                  "already; use augment for more of them")
            continue
        if is_file_source(source):
            if not Path(source).expanduser().is_file():
                raise ConfigError(f"data.transfer file {source} does not exist; give an existing .csv, .tsv or "
                                  ".jsonl file")
            continue
        raise ConfigError(f"data.transfer source {source!r} is none of augment, test, a task name or a "
                          f".csv/.tsv/.jsonl file; known tasks: {', '.join(tasks)}")


def task_presets() -> list[str]:
    """Tasks a transfer source can name: the presets of conf/task (custom has no files of its own)."""
    return sorted(p.stem for p in TASK_CONF_DIR.glob("*.yaml") if p.stem != "custom")


def input_shape(example: Example) -> tuple[int, int]:
    """(choices, segments): choices is 0 for an example that is not multiple choice."""
    if isinstance(example.texts, list):
        return len(example.texts), len(example.texts[0]) if example.texts else 0
    return 0, len(example.texts)


def _perturb_words(text: str, how: str, rate: float, rng: np.random.Generator, mask: str) -> str:
    words = text.split()
    if not words:
        return text
    chosen = rng.random(len(words)) < rate
    if how == "delete":
        kept = [w for w, c in zip(words, chosen) if not c]
        return " ".join(kept or [words[int(rng.integers(len(words)))]])
    if how == "mask":
        return " ".join(mask if c else w for w, c in zip(words, chosen))
    for i in np.flatnonzero(chosen[:-1]):  # swap: left to right, each chosen word with its right neighbour
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def perturb(example: Example, how: str, rate: float, rng: np.random.Generator, mask: str) -> Example:
    """A copy of ``example`` (without its label) with the words of every segment perturbed."""
    def segments(texts: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_perturb_words(t, how, rate, rng, mask) for t in texts)

    texts = [segments(c) for c in example.texts] if isinstance(example.texts, list) else segments(example.texts)
    return Example(example.uid, texts, None)


def _augmented(cfg: Any, train: list[Example], mask: Optional[str]) -> list[tuple[Example, str]]:
    d = cfg.data
    if d.augment == "mask" and not mask:
        raise ConfigError("data.augment=mask needs a tokenizer with a mask token, and the student's has none; "
                          "use data.augment=delete or swap")
    rng = np.random.default_rng([int(cfg.seed), 7])
    out = []
    for copy in range(d.augment_multiplier):
        for ex in train:
            new = perturb(ex, d.augment, d.augment_rate, rng, mask or "")
            out.append((Example(f"{ex.uid}~{d.augment}{copy}", new.texts, None), f"augment:{d.augment}"))
    return out


def _from_task(name: str, cfg: Any, shape: tuple[int, int], data_dir: Optional[str],
               cache_dir: Path) -> list[tuple[Example, str]]:
    tcfg = task_config_for(name, data_dir=cfg.task.data_dir or data_dir, max_length=cfg.task.max_length)
    try:
        data = load_task(tcfg, data_dir, cache_dir)
    except MissingTaskFiles as exc:
        raise ConfigError(f"data.transfer: {exc}") from None
    if data.train and input_shape(data.train[0]) != shape:
        raise ConfigError(f"data.transfer: task {name} has inputs of shape {describe(input_shape(data.train[0]))}, "
                          f"the main task {cfg.task.name} {describe(shape)}; choose a task with the same input shape")
    return [(Example(f"{name}:{ex.uid}", ex.texts, None), f"task:{name}") for ex in data.train]


def describe(shape: tuple[int, int]) -> str:
    choices, segments = shape
    return f"{choices} choices of {segments} segments" if choices else f"{segments} segment(s)"


def file_fields(cfg: Any, shape: tuple[int, int]) -> list[str]:
    if cfg.data.transfer_fields:
        return list(cfg.data.transfer_fields)
    if cfg.task.name == "custom" and cfg.task.get("text_fields"):
        return list(cfg.task.text_fields)
    return ["text"] if shape[1] == 1 else [f"text_{c}" for c in "abcdefgh"[: shape[1]]]


def _from_file(source: str, cfg: Any, shape: tuple[int, int]) -> list[tuple[Example, str]]:
    path = Path(source).expanduser()
    if shape[0]:
        raise ConfigError(f"data.transfer file {path.name}: a file source holds one input per row, and "
                          f"{cfg.task.name} is multiple choice; use augment or test for it")
    fields = file_fields(cfg, shape)
    if len(fields) != shape[1]:
        raise ConfigError(f"data.transfer_fields={fields} names {len(fields)} column(s) and {cfg.task.name}'s inputs "
                          f"have {shape[1]} segment(s); name one column per segment")
    out = []
    for position, row in enumerate(read_records(path)):
        missing = [f for f in fields if row.fields.get(f) in (None, "")]
        if missing:
            raise DataError(f"no value for {missing[0]!r} at {path} line {row.line} — fix that line, or set "
                            f"data.transfer_fields to the file's text columns")
        out.append((Example(f"{path.name}:{position}", tuple(str(row.fields[f]) for f in fields), None),
                    f"file:{path.name}"))
    return out


def transfer_examples(cfg: Any, train: list[Example], test: list[Example], mask: Optional[str],
                      data_dir: Optional[str], cache_dir: Path) -> tuple[list[Example], dict[str, Any]]:
    """The transfer set and its record: every kept input's source and id, the sizes per source, the sampling."""
    if not train:
        raise ConfigError("data.transfer needs train' examples to take the input shape from")
    shape = input_shape(train[0])
    pool: list[tuple[Example, str]] = []
    for source in cfg.data.transfer:
        if source == "augment":
            pool += _augmented(cfg, train, mask)
        elif source == "test":
            if not test:
                raise ConfigError(f"data.transfer=test: {cfg.task.name} has no test inputs in its files; "
                                  "drop test from data.transfer")
            pool += [(Example(f"test:{ex.uid}", ex.texts, None), "test") for ex in test]
        elif is_file_source(source):
            pool += _from_file(source, cfg, shape)
        else:
            pool += _from_task(source, cfg, shape, data_dir, cache_dir)
    size = parse_size(cfg.data.transfer_size)
    wanted = len(pool) if size is None else (int(size[1]) if size[0] == "cap" else round(size[1] * len(train)))
    keep = np.arange(len(pool))
    if wanted < len(pool):
        keep = np.sort(np.random.default_rng([int(cfg.seed), 8]).choice(len(pool), wanted, replace=False))
    kept = [pool[i] for i in keep]
    record = {"sources": list(cfg.data.transfer), "size": len(kept), "requested": wanted, "pool": len(pool),
              "per_source": dict(Counter(src for _, src in kept)),
              "examples": [{"source": src, "uid": ex.uid} for ex, src in kept]}
    return [ex for ex, _ in kept], record
