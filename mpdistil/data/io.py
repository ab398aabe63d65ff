"""Readers for the file formats the benchmarks ship (JSONL, TSV, CSV).

Every reader returns :class:`Row` objects that keep the physical line number, so that a label or
field problem found later (in a task's encoder) can still point at the exact line of the file.
Anything malformed raises :class:`DataError` naming the file and line and saying what to do.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence, Union

from mpdistil.data.types import DataError

PathLike = Union[str, Path]

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class Row(NamedTuple):
    """One record of a data file and the 1-based line it starts on."""

    line: int
    fields: dict[str, Any]


def row_error(path: PathLike, line: int, problem: str, fix: str = "fix or remove that line") -> DataError:
    """Build the one-line error every reader and encoder uses, so messages look alike."""
    return DataError(f"{problem} at {path} line {line} — {fix}")


def require_file(path: PathLike, hint: str = "set data_dir=<folder with the official files>") -> Path:
    """Fail early with the path and the fix, rather than with a bare FileNotFoundError later."""
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise DataError(f"data file {p} {what}; {hint}")
    return p


def read_text(path: PathLike) -> str:
    """Decode a UTF-8 file (a leading BOM is dropped, as in GLUE MRPC) and report the bad line if any."""
    p = require_file(path)
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise row_error(p, line, f"text that is not UTF-8 ({exc.reason})", "re-save the file as UTF-8") from None


def read_jsonl(path: PathLike) -> list[Row]:
    """One JSON object per non-empty line (SuperGLUE test files have no final newline)."""
    p = require_file(path)
    rows: list[Row] = []
    for number, line in enumerate(read_text(p).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise row_error(p, number, f"bad JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(record, dict):
            raise row_error(p, number, f"a JSON {type(record).__name__} where an object {{...}} was expected")
        rows.append(Row(number, record))
    return rows


def read_delimited(
    path: PathLike,
    delimiter: str,
    header: bool = True,
    fieldnames: Optional[Sequence[str]] = None,
    quote_none: bool = False,
) -> list[Row]:
    """Read a TSV/CSV into rows keyed by column name.

    GLUE TSVs contain unbalanced quote characters inside sentences, so they must be read with
    ``quote_none=True`` (csv.QUOTE_NONE); otherwise a stray ``"`` swallows the following lines.
    Files without a header (GLUE CoLA train/dev) take their column names from ``fieldnames``.
    Every row must have exactly as many fields as there are columns.
    """
    p = require_file(path)
    quoting = csv.QUOTE_NONE if quote_none else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(read_text(p), newline=""), delimiter=delimiter, quoting=quoting)
    columns: Optional[list[str]] = list(fieldnames) if fieldnames is not None else None
    rows: list[Row] = []
    start = 1
    try:
        for values in reader:
            line, start = start, reader.line_num + 1
            if not values or (len(values) == 1 and not values[0].strip()):
                continue
            if columns is None:
                if not header:
                    raise DataError(f"{p} has no header and no column names were given")
                columns = [v.strip() for v in values]
                continue
            if len(values) != len(columns):
                raise row_error(
                    p, line, f"{len(values)} fields where the header has {len(columns)} ({', '.join(columns)})"
                )
            rows.append(Row(line, dict(zip(columns, values))))
    except csv.Error as exc:
        raise row_error(p, reader.line_num, f"unreadable {'TSV' if delimiter == chr(9) else 'CSV'} ({exc})") from None
    if columns is None:
        raise DataError(f"data file {p} is empty; give a file with a header line and rows")
    return rows


def read_tsv(path: PathLike, header: bool = True, fieldnames: Optional[Sequence[str]] = None,
             quote_none: bool = True) -> list[Row]:
    """Tab-separated file; quoting is off by default, as GLUE requires."""
    return read_delimited(path, "\t", header=header, fieldnames=fieldnames, quote_none=quote_none)


def read_csv(path: PathLike, header: bool = True, fieldnames: Optional[Sequence[str]] = None) -> list[Row]:
    """Comma-separated file with standard quoting."""
    return read_delimited(path, ",", header=header, fieldnames=fieldnames, quote_none=False)


def read_columns(path: PathLike, delimiter: str) -> list[str]:
    """The header of a delimited file, for error messages that list the columns present."""
    text = read_text(path)
    first = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])
    return [c.strip() for c in first]


def read_records(path: PathLike, tsv_quote_none: bool = False) -> list[Row]:
    """Pick the reader from the extension: .jsonl/.json (one object a line), .tsv, .csv."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return read_jsonl(p)
    if suffix == ".tsv":
        return read_tsv(p, quote_none=tsv_quote_none)
    if suffix == ".csv":
        return read_csv(p)
    raise DataError(f"cannot tell the format of {p} from its extension {suffix!r}; use .csv, .tsv or .jsonl")
