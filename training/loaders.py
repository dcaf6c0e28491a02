"""Parsers for the on-disk interaction formats; every problem names the file and line so data can be fixed.

Choosing a parser from a file name is done by ``training.datasets``; these functions only read.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_USER_COLUMNS = ("user_id", "user")
_ITEM_COLUMNS = ("item_id", "item")
_TIME_COLUMNS = ("timestamp", "time")


class DatasetFormatError(ValueError):
    """A data file that cannot be read as its format says; ``line`` is 1-based, or None for the whole file."""

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        self.path = Path(path)
        self.line = line
        where = str(path) if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class RawTable:
    """Rows of a table with string ids, in file order; ``timestamps`` is float64, or None without that column."""

    users: list[str]
    items: list[str]
    timestamps: np.ndarray | None


def _read_text(path: str | Path) -> str:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DatasetFormatError(path, None, "file not found") from None
    except IsADirectoryError:
        raise DatasetFormatError(path, None, "is a directory, expected a file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DatasetFormatError(path, data.count(b"\n", 0, error.start) + 1, "not UTF-8 text") from None


def _split_lines(path: str | Path) -> list[list[str]]:
    """Whitespace-split fields of every physical line (index + 1 is the line number); no fields at all is an error."""
    rows = [line.split() for line in _read_text(path).split("\n")]
    if not any(rows):
        raise DatasetFormatError(path, None, "empty file: no interactions")
    return rows


def _to_ids(path: str | Path, tokens: list[str], lines: np.ndarray, *, one_based: bool) -> np.ndarray:
    """Integer ids of ``tokens`` (``lines[k]`` is the line of token k), converted in one call for speed.

    Only when that fails are the tokens checked one by one, to report the first bad one with its line.
    """
    try:
        ids = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        for token, line in zip(tokens, lines, strict=True):
            try:
                np.int64(int(token))
            except (ValueError, OverflowError):
                raise DatasetFormatError(path, int(line), f"id {token!r} is not an integer") from None
        raise
    bad = np.flatnonzero(ids < int(one_based))
    if len(bad):
        value, line = int(ids[bad[0]]), int(lines[bad[0]])
        raise DatasetFormatError(path, line, f"id {value} < 1 in a 1-based file" if one_based
                                 else f"id {value} is negative")
    return ids


def read_adjacency_lists(path: str | Path) -> np.ndarray:
    """``(n, 2)`` int64 pairs of a LightGCN/NGCF ``user item item ...`` file (0-based, items in any order).

    A line holding only a user id is a user without items; blank lines are skipped.
    """
    rows = _split_lines(path)
    counts = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    lines = np.repeat(np.arange(1, len(rows) + 1), counts)
    ids = _to_ids(path, [token for row in rows for token in row], lines, one_based=False)
    counts = counts[counts > 0]
    starts = np.cumsum(counts) - counts
    is_user = np.zeros(len(ids), dtype=bool)
    is_user[starts] = True
    return np.stack([np.repeat(ids[starts], counts - 1), ids[~is_user]], axis=1)


def read_pairs(path: str | Path, *, one_based: bool) -> np.ndarray:
    """``(n, 2)`` int64 pairs of ``user item [weight]`` rows (tab or whitespace separated); the weight is unused.

    With ``one_based`` the ids are shifted to 0-based, and an id below 1 is an error.
    """
    line_numbers: list[int] = []
    tokens: list[str] = []
    for number, row in enumerate(_split_lines(path), start=1):
        if not row:
            continue
        if len(row) not in (2, 3):
            raise DatasetFormatError(path, number, f"expected 'user item [weight]', found {len(row)} fields")
        line_numbers.append(number)
        tokens += row[:2]
    ids = _to_ids(path, tokens, np.repeat(line_numbers, 2), one_based=one_based)
    return ids.reshape(-1, 2) - int(one_based)


def _header_columns(row: list[str]) -> tuple[int, int, int | None] | None:
    """Positions of the user, item and timestamp columns when ``row`` is a header (names before any ``:type``)."""
    names = [field.split(":", 1)[0].strip().lower() for field in row]

    def find(candidates: tuple[str, ...]) -> int | None:
        return next((k for k, name in enumerate(names) if name in candidates), None)

    user, item = find(_USER_COLUMNS), find(_ITEM_COLUMNS)
    if user is None or item is None:
        return None
    return user, item, find(_TIME_COLUMNS)


def read_table(path: str | Path) -> RawTable:
    """String-id rows of a RecBole atomic ``.inter`` file or of a ``user,item[,timestamp]`` CSV/TSV.

    ``.inter`` files are tab-separated and need their typed header (``user_id:token ...``).  Other files use tab
    when the first line holds one, else comma, and may start with a header.  A header is a row naming
    ``user``/``user_id`` and ``item``/``item_id``; columns are then found by name, the timestamp (``timestamp`` or
    ``time``) being optional.  Without a header the columns are user, item and, if present, a timestamp.
    """
    text = _read_text(path)
    atomic = Path(path).suffix == ".inter"
    first_line = next((line for line in text.split("\n") if line.strip()), "")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if atomic or "\t" in first_line else ",")
    users: list[str] = []
    items: list[str] = []
    stamps: list[float] = []
    columns: tuple[int, int, int | None] | None = None
    for row in reader:
        if not any(field.strip() for field in row):
            continue
        if columns is None:
            columns = _header_columns(row)
            if columns is not None:
                continue
            if atomic:
                raise DatasetFormatError(path, reader.line_num, "expected a header naming user_id and item_id")
            columns = (0, 1, 2 if len(row) > 2 else None)
        user, item, stamp = columns
        needed = max(user, item, -1 if stamp is None else stamp) + 1
        if len(row) < needed:
            raise DatasetFormatError(path, reader.line_num, f"expected at least {needed} fields, found {len(row)}")
        user_id, item_id = row[user].strip(), row[item].strip()
        if not user_id or not item_id:
            raise DatasetFormatError(path, reader.line_num, "empty user or item id")
        users.append(user_id)
        items.append(item_id)
        if stamp is not None:
            try:
                value = float(row[stamp])
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise DatasetFormatError(path, reader.line_num, f"timestamp {row[stamp]!r} is not a finite number")
            stamps.append(value)
    if columns is None or not users:
        raise DatasetFormatError(path, None, "empty file: no interactions")
    return RawTable(users, items, None if columns[2] is None else np.array(stamps, dtype=np.float64))
