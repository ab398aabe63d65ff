"""The paper's published numbers (MPDistil, ICLR 2024; Tables 1a, 1b and 4, dev sets) as data.

Kept apart from the renderer so the transcription can be checked against the paper line by line.
Values are percentages on the official dev sets. A cell with two numbers (MNLI m/mm, MRPC acc/F1,
QQP acc/F1, STS-B Pearson/Spearman) is a tuple in the order of its column's ``parts``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    """One number of a cell: which split and metric of results.json it is read from."""

    label: str  # "" for single-number cells, else e.g. "m", "mm", "acc", "F1", "P", "S"
    split: str
    metric: str


@dataclass(frozen=True)
class Column:
    """One task column of a paper table."""

    task: str  # task name in our registry (task=<name>)
    title: str  # the paper's column title
    parts: tuple[Part, ...]


def _acc(task: str, title: str) -> Column:
    return Column(task, title, (Part("", "dev", "accuracy"),))


SUPERGLUE_COLUMNS: tuple[Column, ...] = (
    _acc("boolq", "BoolQ"), _acc("cb", "CB"), _acc("copa", "COPA"),
    _acc("rte", "RTE"), _acc("wic", "WiC"), _acc("wsc", "WSC"),
)

GLUE_COLUMNS: tuple[Column, ...] = (
    Column("mnli", "MNLI", (Part("m", "dev_matched", "accuracy"), Part("mm", "dev_mismatched", "accuracy"))),
    Column("mrpc", "MRPC", (Part("acc", "dev", "accuracy"), Part("F1", "dev", "f1"))),
    _acc("qnli", "QNLI"),
    Column("qqp", "QQP", (Part("acc", "dev", "accuracy"), Part("F1", "dev", "f1"))),
    _acc("glue_rte", "RTE"),
    _acc("sst2", "SST-2"),
    Column("stsb", "STS-B", (Part("P", "dev", "pearson"), Part("S", "dev", "spearman"))),
    _acc("wnli", "WNLI"),
)

# The GLUE half of the CPU reproduction (table cpu_repro_glue, experiment=cpu_repro): RTE, MRPC, STS-B, CoLA and
# SST-2. CoLA is not in Table 4, so its column has no paper value; MRPC and STS-B keep Table 4's two-number cells.
CPU_GLUE_COLUMNS: tuple[Column, ...] = (
    _acc("glue_rte", "RTE"),
    Column("mrpc", "MRPC", (Part("acc", "dev", "accuracy"), Part("F1", "dev", "f1"))),
    Column("stsb", "STS-B", (Part("P", "dev", "pearson"), Part("S", "dev", "spearman"))),
    Column("cola", "CoLA", (Part("", "dev", "mcc"),)),
    _acc("sst2", "SST-2"),
)

# Row keys shared by every table, in the paper's order.
ROWS: tuple[str, ...] = (
    "teacher", "undistilled", "kd", "meta_col", "meta_com",
    "mpdistil_col_binary", "mpdistil_col_real", "mpdistil_com_binary", "mpdistil_com_real",
    "no_curriculum_col", "no_curriculum_com",
)

ROW_TITLES: dict[str, str] = {
    "teacher": "teacher",
    "undistilled": "student, undistilled",
    "kd": "student, KD",
    "meta_col": "meta-teacher, col",
    "meta_com": "meta-teacher, com",
    "mpdistil_col_binary": "MPDistil col + binary",
    "mpdistil_col_real": "MPDistil col + real",
    "mpdistil_com_binary": "MPDistil com + binary",
    "mpdistil_com_real": "MPDistil com + real",
    "no_curriculum_col": "no curriculum, col",
    "no_curriculum_com": "no curriculum, com",
}

Cell = tuple[float, ...]


def _rows(columns: tuple[Column, ...], values: dict[str, list[Cell]]) -> dict[str, dict[str, Cell]]:
    """Attach task names to each row's list of cells and check every cell has its column's arity."""
    out: dict[str, dict[str, Cell]] = {}
    for row in ROWS:
        cells = values[row]
        if len(cells) != len(columns):
            raise ValueError(f"row {row!r} has {len(cells)} cells for {len(columns)} columns")
        for col, cell in zip(columns, cells, strict=True):
            if len(cell) != len(col.parts):
                raise ValueError(f"row {row!r}, column {col.title}: {len(cell)} numbers for {len(col.parts)} parts")
        out[row] = {col.task: tuple(cell) for col, cell in zip(columns, cells, strict=True)}
    return out


# Table 1a: SuperGLUE, BERT-base teacher, 6-layer student. Columns: BoolQ CB COPA RTE WiC WSC.
TABLE_1A = _rows(SUPERGLUE_COLUMNS, {
    "teacher": [(75.3,), (83.9,), (63.0,), (67.1,), (57.1,), (64.4,)],
    "undistilled": [(71.6,), (75.0,), (53.0,), (64.6,), (56.0,), (63.5,)],
    "kd": [(73.0,), (80.4,), (54.0,), (66.4,), (57.7,), (64.4,)],
    "meta_col": [(75.5,), (83.9,), (66.0,), (67.8,), (58.5,), (63.5,)],
    "meta_com": [(75.5,), (83.9,), (63.0,), (67.8,), (57.2,), (61.5,)],
    "mpdistil_col_binary": [(72.8,), (83.9,), (67.0,), (67.1,), (58.0,), (65.4,)],
    "mpdistil_col_real": [(73.4,), (82.1,), (70.0,), (66.4,), (58.6,), (64.4,)],
    "mpdistil_com_binary": [(73.0,), (80.4,), (62.0,), (67.5,), (59.6,), (65.4,)],
    "mpdistil_com_real": [(73.0,), (78.6,), (63.0,), (66.4,), (58.9,), (65.4,)],
    "no_curriculum_col": [(72.5,), (78.6,), (58.0,), (65.3,), (58.3,), (64.4,)],
    "no_curriculum_com": [(72.3,), (76.8,), (59.0,), (65.3,), (58.0,), (63.5,)],
})

# Table 1b: SuperGLUE, DeBERTa-v2-xxlarge teacher, DeBERTa-v2 12-layer student.
TABLE_1B = _rows(SUPERGLUE_COLUMNS, {
    "teacher": [(86.8,), (82.1,), (84.0,), (90.6,), (57.7,), (63.4,)],
    "undistilled": [(82.1,), (82.1,), (64.0,), (79.4,), (57.8,), (63.5,)],
    "kd": [(82.4,), (76.9,), (67.0,), (78.7,), (59.4,), (64.4,)],
    "meta_col": [(86.6,), (76.9,), (83.0,), (89.5,), (55.9,), (63.5,)],
    "meta_com": [(86.9,), (78.5,), (83.0,), (89.5,), (56.9,), (63.5,)],
    "mpdistil_col_binary": [(82.7,), (76.8,), (67.0,), (79.8,), (61.0,), (66.3,)],
    "mpdistil_col_real": [(82.7,), (76.7,), (67.0,), (78.0,), (60.0,), (65.4,)],
    "mpdistil_com_binary": [(82.4,), (76.8,), (69.0,), (80.9,), (59.7,), (65.4,)],
    "mpdistil_com_real": [(82.6,), (76.8,), (68.0,), (77.6,), (60.0,), (64.4,)],
    "no_curriculum_col": [(82.5,), (75.0,), (67.0,), (78.7,), (59.4,), (63.5,)],
    "no_curriculum_com": [(82.6,), (75.0,), (64.0,), (80.5,), (61.3,), (64.4,)],
})

# Table 4: GLUE, BERT-base. Columns: MNLI (m/mm) MRPC (acc/F1) QNLI QQP (acc/F1) RTE SST-2 STS-B (P/S) WNLI.
TABLE_4 = _rows(GLUE_COLUMNS, {
    "teacher": [(83.7, 83.4), (84.0, 88.2), (91.0,), (90.5, 87.3), (67.1,), (89.7,), (89.4, 89.1), (56.3,)],
    "undistilled": [(77.8, 78.3), (75.8, 81.5), (85.0,), (89.1, 85.0), (64.6,), (87.7,), (88.8, 88.5), (56.3,)],
    "kd": [(80.3, 80.8), (80.0, 86.2), (87.6,), (90.2, 86.9), (66.4,), (90.4,), (89.1, 88.8), (56.3,)],
    "meta_col": [(83.9, 83.8), (83.8, 88.1), (91.1,), (90.5, 87.6), (67.8,), (93.5,), (89.2, 89.1), (59.1,)],
    "meta_com": [(83.9, 83.8), (84.1, 88.2), (91.2,), (90.5, 87.6), (67.8,), (93.2,), (89.4, 89.1), (56.3,)],
    "mpdistil_col_binary": [(80.5, 80.8), (81.4, 86.7), (87.6,), (90.2, 86.9), (67.1,), (91.0,), (89.1, 88.9),
                            (63.3,)],
    "mpdistil_col_real": [(80.4, 80.2), (81.6, 86.8), (87.7,), (90.3, 87.0), (66.4,), (90.9,), (89.1, 88.9),
                          (56.3,)],
    "mpdistil_com_binary": [(80.4, 80.7), (81.6, 86.8), (87.6,), (90.3, 87.0), (67.5,), (91.4,), (89.1, 88.9),
                            (56.3,)],
    "mpdistil_com_real": [(80.3, 81.0), (81.5, 86.8), (87.7,), (90.3, 87.0), (66.4,), (90.9,), (89.1, 88.9),
                          (56.3,)],
    "no_curriculum_col": [(79.7, 81.0), (82.0, 87.2), (88.3,), (90.2, 87.0), (65.3,), (90.8,), (89.1, 88.8),
                          (56.3,)],
    "no_curriculum_com": [(79.8, 81.0), (81.6, 87.1), (88.3,), (90.2, 86.8), (65.3,), (90.9,), (89.1, 88.8),
                          (56.3,)],
})

PAPER: dict[str, dict[str, dict[str, Cell]]] = {"1a": TABLE_1A, "1b": TABLE_1B, "4": TABLE_4}
