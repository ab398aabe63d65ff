"""Plain containers shared by every task reader, the encoder and the phases."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

Kind = Literal["classification", "regression", "multiple_choice"]

# One text segment or a pair (a, b). A multiple-choice example holds one such tuple per choice.
Segments = tuple[str, ...]


@dataclass
class Example:
    """One benchmark example, already reduced to the text the encoder sees.

    ``uid`` is the official index (``idx`` / ``index`` / ``id``) so that test predictions can be
    written in the leaderboard format. ``label`` is a class index (classification, multiple
    choice), a float (regression) or ``None`` (unlabelled test split).
    """

    uid: Union[int, str]
    texts: Union[Segments, list[Segments]]
    label: Union[int, float, None] = None


@dataclass
class TaskData:
    """Every split of one task, as Examples.

    ``dev`` maps a split name to examples: ``{"dev": [...]}`` for most tasks,
    ``{"dev_matched": [...], "dev_mismatched": [...]}`` for MNLI. ``test`` is shaped the same way
    (possibly empty). ``source`` says where the data came from, e.g. ``local:/path`` or
    ``hub:nyu-mll/glue/cola@rev``, and is written into results.json.
    """

    name: str
    kind: Kind
    label_names: list[str]
    train: list[Example]
    dev: dict[str, list[Example]]
    test: dict[str, list[Example]] = field(default_factory=dict)
    source: str = ""

    @property
    def num_labels(self) -> int:
        """Output units of the head: classes, 1 for regression, 1 per choice for multiple choice."""
        return len(self.label_names) if self.kind == "classification" else 1


class DataError(ValueError):
    """A data file or folder that does not fit the task, reported as one line (file, line, fix)."""


class MissingTaskFiles(DataError):
    """data_dir holds no files for a task (as opposed to files that are there but wrong)."""
