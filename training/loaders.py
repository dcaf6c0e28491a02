"""Parsers for the on-disk interaction formats; every problem names the file and line so data can be fixed.

Choosing a parser from a file name is done by ``training.datasets``; these functions only read.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Header names recognised for each column, compared lower-case with everything but letters and digits removed
# (``userId``, ``user_id`` and ``User ID`` are all ``userid``) and any RecBole ``:type`` suffix dropped.
KNOWN_COLUMNS = {
    "user": ("user", "userid", "uid", "customerid", "visitorid"),
    "item": ("item", "itemid", "iid", "movie", "movieid", "product", "productid", "song", "songid", "track",
             "trackid", "artist", "artistid", "book", "bookid", "venue", "venueid", "location", "locationid", "poi"),
    "time": ("timestamp", "time", "ts", "unixtime"),
    "rating": ("rating", "score", "stars"),
}
_FLAG = {"user": "--user-col", "item": "--item-col", "time": "--time-col", "rating": "--rating-col"}
_HINT = {"user": "user, user_id or userId", "item": "item, item_id, itemId or movieId"}


class DatasetFormatError(ValueError):
    """A data file that cannot be read as its format says; ``line`` is 1-based, or None for the whole file."""

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        self.path = Path(path)
        self.line = line
        where = str(path) if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Columns:
    """Which columns of a table file hold what: header names, or 0-based positions in a file without a header.

    Unset columns are found by name in the header (``KNOWN_COLUMNS``); rows whose rating is below ``min_rating``
    are skipped (it needs a rating column). Without a header the columns are user, item and, if present, a
    timestamp.
    """

    user: str | None = None
    item: str | None = None
    time: str | None = None
    rating: str | None = None
    min_rating: float | None = None


DEFAULT_COLUMNS = Columns()


@dataclass(frozen=True)
class RawTable:
    """Rows of a table with string ids, in file order; ``timestamps`` is float64, or None without that column.

    ``below_min_rating`` counts the rows skipped for a rating under ``Columns.min_rating``.
    """

    users: list[str]
    items: list[str]
    timestamps: np.ndarray | None
    below_min_rating: int = 0


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


def _normalized(field: str) -> str:
    return re.sub(r"[^a-z0-9]", "", field.split(":", 1)[0].lower())


def _positions(path: str | Path, line: int, row: list[str], columns: Columns) -> tuple[dict[str, int | None], bool]:
    """Where each column is, and whether ``row`` is a header (columns by name) or data (columns by position)."""
    names = [_normalized(field) for field in row]
    asked = {role: getattr(columns, role) for role in _FLAG}
    named = {role: value for role, value in asked.items() if value is not None and not value.isdigit()}
    is_header = any(name in KNOWN_COLUMNS[role] for role in KNOWN_COLUMNS for name in names) \
        or any(_normalized(value) in names for value in named.values())
    if not is_header:
        if path_is_atomic(path):
            raise DatasetFormatError(path, line, "expected a header naming user_id and item_id")
        if named:
            role, value = next(iter(named.items()))
            raise DatasetFormatError(path, line, f"{_FLAG[role]} {value!r} names a column, but the file has no "
                                                 "header row; give a 0-based position instead")
        given = {role: int(value) for role, value in asked.items() if value is not None}
        if not given and len(row) > 3:
            raise DatasetFormatError(path, line, f"{len(row)} fields and no header row: name the columns in a "
                                                 "header (user,item,timestamp,...) or give their positions with "
                                                 "--user-col, --item-col, --time-col")
        defaults = {"user": 0, "item": 1, "time": 2 if len(row) > 2 and not given else None, "rating": None}
        return {**defaults, **given}, False
    found: dict[str, int | None] = {}
    for role in _FLAG:
        wanted = asked[role]
        if wanted is not None:
            position = int(wanted) if wanted.isdigit() else next(
                (k for k, name in enumerate(names) if name == _normalized(wanted)), None)
            if position is None or position >= len(row):
                raise DatasetFormatError(path, line, f"{_FLAG[role]} {wanted!r}: no such column "
                                                     f"(columns: {', '.join(row)})")
        else:
            position = next((k for k, name in enumerate(names) if name in KNOWN_COLUMNS[role]), None)
        found[role] = position
    for role in ("user", "item"):
        if found[role] is None:
            raise DatasetFormatError(path, line, f"the header names no {role} column (columns: {', '.join(row)}); "
                                                 f"name it {_HINT[role]} or pass "
                                                 f"{_FLAG[role]} NAME")
    return found, True


def path_is_atomic(path: str | Path) -> bool:
    """A RecBole atomic ``.inter`` file: tab-separated, with a typed header."""
    return Path(path).suffix == ".inter"


def _number(path: str | Path, line: int, value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise DatasetFormatError(path, line, f"{what} {value!r} is not a finite number")
    return number


def read_table(path: str | Path, columns: Columns = DEFAULT_COLUMNS) -> RawTable:
    """String-id rows of a RecBole atomic ``.inter`` file or of a ``user,item[,timestamp]`` CSV/TSV.

    ``.inter`` files are tab-separated and need their typed header (``user_id:token ...``). Other files use tab
    when the first line holds one, else comma, and may start with a header: a first row naming any known column
    (``KNOWN_COLUMNS``) or one given in ``columns``. Columns are then found by name; a header without a user or
    an item column is refused, naming the flag that fixes it.
    """
    text = _read_text(path)
    atomic = path_is_atomic(path)
    first_line = next((line for line in text.split("\n") if line.strip()), "")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if atomic or "\t" in first_line else ",")
    users: list[str] = []
    items: list[str] = []
    stamps: list[float] = []
    below = 0
    found: dict[str, int | None] | None = None
    for row in reader:
        if not any(field.strip() for field in row):
            continue
        if found is None:
            found, is_header = _positions(path, reader.line_num, row, columns)
            if columns.min_rating is not None and found["rating"] is None:
                raise DatasetFormatError(path, reader.line_num, "--min-rating needs a rating column: name it "
                                                                "rating/score in the header or pass --rating-col")
            if is_header:
                continue
        needed = max(position for position in found.values() if position is not None) + 1
        if len(row) < needed:
            raise DatasetFormatError(path, reader.line_num, f"expected at least {needed} fields, found {len(row)}")
        user_id, item_id = row[found["user"]].strip(), row[found["item"]].strip()
        if not user_id or not item_id:
            raise DatasetFormatError(path, reader.line_num, "empty user or item id")
        if columns.min_rating is not None and \
                _number(path, reader.line_num, row[found["rating"]], "rating") < columns.min_rating:
            below += 1
            continue
        users.append(user_id)
        items.append(item_id)
        if found["time"] is not None:
            stamps.append(_number(path, reader.line_num, row[found["time"]], "timestamp"))
    if found is None or (not users and not below):
        raise DatasetFormatError(path, None, "empty file: no interactions")
    if not users:
        raise DatasetFormatError(path, None, f"every row has a rating below --min-rating {columns.min_rating}")
    return RawTable(users, items, None if found["time"] is None else np.array(stamps, dtype=np.float64), below)
