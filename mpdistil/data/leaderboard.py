"""Test-set predictions in each benchmark's submission format.

GLUE: ``<Task>.tsv`` with header ``index\tprediction`` (label strings for MNLI/QNLI/RTE, 0/1 for
CoLA/SST-2/MRPC/QQP/WNLI, floats for STS-B; MNLI-m.tsv / MNLI-mm.tsv). SuperGLUE:
``<Task>.jsonl`` lines ``{"idx": ..., "label": ...}`` (BoolQ/WiC "true"/"false", WSC
"True"/"False", CB/RTE label names, COPA the choice index). Sentiment and custom tasks: a TSV
with header ``uid\tprediction`` holding label names (or floats for regression).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from mpdistil.atomic import write_text
from mpdistil.data.registry import TaskSpec


def _class_index(pred: Any, names: Sequence[str]) -> int:
    """A predicted class as an index; label-name strings are accepted too."""
    if isinstance(pred, str):
        if pred in names:
            return list(names).index(pred)
        raise ValueError(f"prediction {pred!r} is not one of {list(names)}")
    index = int(np.asarray(pred).item())
    if names and not 0 <= index < len(names):
        raise ValueError(f"predicted class {index} is outside 0..{len(names) - 1} ({list(names)})")
    return index


def _format(pred: Any, style: str, kind: str, names: Sequence[str]) -> Any:
    """One prediction in the way the benchmark's grader reads it."""
    if kind == "regression" or style == "float":
        return float(np.asarray(pred, dtype=np.float64).item())
    index = _class_index(pred, names)
    if style == "index" or not names:
        return index
    name = names[index]
    if style == "lower":
        return name.lower()
    if style == "title":
        return name.capitalize()
    return name


def write_test_predictions(
    spec: TaskSpec,
    split_name: str,
    uids: Sequence[Any],
    predictions: Sequence[Any],
    out_dir: os.PathLike | str,
    label_names: Optional[Sequence[str]] = None,
) -> Path:
    """Write one test split's predictions as the leaderboard expects and return the file's path.

    ``predictions`` are class indices (or label names) for classification, choice indices for
    multiple choice and floats for regression. ``label_names`` defaults to the spec's (pass
    ``TaskData.label_names`` for the custom task, whose classes come from the data).
    """
    if len(uids) != len(predictions):
        raise ValueError(f"{len(uids)} uids but {len(predictions)} predictions for {spec.name}/{split_name}")
    names = list(label_names if label_names is not None else spec.label_names)
    rows = [(uid.item() if isinstance(uid, np.generic) else uid,
             _format(p, spec.leaderboard_labels, spec.kind, names)) for uid, p in zip(uids, predictions)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / spec.leaderboard_file_for(split_name)
    if spec.benchmark == "superglue":
        text = "".join(json.dumps({"idx": uid, "label": value}) + "\n" for uid, value in rows)
    else:
        header = "index\tprediction" if spec.benchmark == "glue" else "uid\tprediction"
        body = [f"{uid}\t{value!r}" if isinstance(value, float) else f"{uid}\t{value}" for uid, value in rows]
        text = "\n".join([header, *body]) + "\n"
    write_text(path, text)
    return path
