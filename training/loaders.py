"""Parsers for the interaction file formats; every error names the file and the line."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DatasetFormatError(ValueError):
    """A dataset file is missing, empty or malformed; ``str()`` reads ``path:line: what is wrong``."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        self.path, self.line = Path(path), line
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


@dataclass(frozen=True)
class RawTable:
    """Rows of a table with string ids, before they are mapped to contiguous indices."""

    users: list[str]
    items: list[str]
    timestamps: np.ndarray | None


def _read_lines(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(path, None, "file not found")
    lines = path.read_text(encoding="utf-8", errors="strict").splitlines()
    if not any(line.strip() for line in lines):
        raise DatasetFormatError(path, None, "file is empty")
    return lines


def _int_id(token: str, path: Path, line: int) -> int:
    try:
        value = int(token)
    except ValueError:
        raise DatasetFormatError(path, line, f"id {token!r} is not an integer") from None
    if value < 0:
        raise DatasetFormatError(path, line, f"id {value} is negative")
    return value


def read_adjacency_lists(path: Path | str) -> np.ndarray:
    """LightGCN/NGCF ``user item item ...`` lines (0-based, items unsorted, a lone user id allowed)."""
    path = Path(path)
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    for number, line in enumerate(_read_lines(path), start=1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            ids = np.array(tokens, dtype=np.int64)
        except ValueError:
            bad = next(t for t in tokens if not t.lstrip("-").isdigit())
            raise DatasetFormatError(path, number, f"id {bad!r} is not an integer") from None
        if (ids < 0).any():
            raise DatasetFormatError(path, number, f"id {int(ids[ids < 0][0])} is negative")
        users.append(np.full(len(ids) - 1, ids[0]))
        items.append(ids[1:])
    return np.stack([np.concatenate(users), np.concatenate(items)], axis=1)


def read_pairs(path: Path | str, *, one_based: bool) -> np.ndarray:
    """``user item [weight]`` rows separated by tabs or spaces (Last.fm: 1-based ids)."""
    path = Path(path)
    rows = []
    for number, line in enumerate(_read_lines(path), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < 2:
            raise DatasetFormatError(path, number, f"expected 'user item [weight]', got {line.strip()!r}")
        user, item = (_int_id(t, path, number) for t in tokens[:2])
        if one_based and (user < 1 or item < 1):
            raise DatasetFormatError(path, number, "ids are 1-based in this format, found 0")
        rows.append((user - one_based, item - one_based))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


_USER_HEADERS = {"user", "user_id", "userid", "uid"}
_ITEM_HEADERS = {"item", "item_id", "itemid", "iid", "movie_id", "artist_id"}


def read_table(path: Path | str) -> RawTable:
    """RecBole ``.inter`` (``name:type`` header) or a CSV/TSV of ``user,item[,timestamp]`` string ids."""
    path = Path(path)
    lines = _read_lines(path)
    delimiter = "\t" if "\t" in lines[0] else ","
    rows = list(csv.reader(lines, delimiter=delimiter))
    header = [field.split(":")[0].strip().lower() for field in rows[0]]
    user_col, item_col, time_col, start = 0, 1, 2, 1
    if header[0] in _USER_HEADERS or ":" in lines[0]:
        if "user_id" not in header and header[0] not in _USER_HEADERS:
            raise DatasetFormatError(path, 1, f"header has no user column: {rows[0]}")
        user_col = header.index("user_id") if "user_id" in header else 0
        item_col = next((header.index(h) for h in header if h in _ITEM_HEADERS), -1)
        if item_col < 0:
            raise DatasetFormatError(path, 1, f"header has no item column: {rows[0]}")
        time_col = header.index("timestamp") if "timestamp" in header else -1
    else:
        start = 0
        time_col = 2 if len(rows[0]) > 2 else -1
    users, items, times = [], [], []
    need = max(user_col, item_col, time_col) + 1
    for number, row in enumerate(rows[start:], start=start + 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < need:
            raise DatasetFormatError(path, number, f"expected at least {need} fields, got {len(row)}")
        users.append(row[user_col].strip())
        items.append(row[item_col].strip())
        if time_col >= 0:
            try:
                times.append(float(row[time_col]))
            except ValueError:
                raise DatasetFormatError(path, number, f"timestamp {row[time_col]!r} is not a number") from None
    if not users:
        raise DatasetFormatError(path, None, "no interaction rows")
    return RawTable(users, items, np.asarray(times, dtype=np.float64) if time_col >= 0 else None)
