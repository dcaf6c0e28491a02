"""Named datasets and paths -> ``Interactions`` with contiguous ids, a recorded split and counted skips.

Data are read where they lie (``GNAQ_DATA_DIR`` or ``../shared/datasets``) and never copied into the repository;
MovieLens-100K is taken from the recbole wheel so that the default needs no download.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.interactions import Interactions
from training.loaders import DEFAULT_COLUMNS, Columns, DatasetFormatError, read_adjacency_lists, read_pairs, read_table
from training.splits import random_split, temporal_split

log = logging.getLogger(__name__)

_TABLE_SUFFIXES = (".inter", ".csv", ".tsv", ".txt")


@dataclass(frozen=True)
class NamedDataset:
    """Where a registered dataset's files lie and how they are read.

    ``files`` is ``(train, test)`` for an official split, or one file to split ourselves; paths are relative to
    the data directory, or to the installed recbole package when ``embedded``.  ``fmt`` is ``"adjacency"``,
    ``"pairs"`` or ``"table"``.
    """

    files: tuple[str, ...]
    fmt: str
    one_based: bool = False
    embedded: bool = False


NAMED_DATASETS: dict[str, NamedDataset] = {
    "ml-100k": NamedDataset(("dataset_example/ml-100k/ml-100k.inter",), "table", embedded=True),
    "gowalla": NamedDataset(("gowalla/train.txt", "gowalla/test.txt"), "adjacency"),
    "movielens1m": NamedDataset(("movielens1m/train.txt", "movielens1m/test.txt"), "adjacency"),
    "lastfm": NamedDataset(("lastfm/data1.txt", "lastfm/test1.txt"), "pairs", one_based=True),
}


def default_data_dir() -> Path:
    """``$GNAQ_DATA_DIR``, else ``../shared/datasets`` from the working directory if it exists, else from the repo."""
    if os.environ.get("GNAQ_DATA_DIR"):
        return Path(os.environ["GNAQ_DATA_DIR"])
    beside_cwd = Path.cwd().parent / "shared" / "datasets"
    return beside_cwd if beside_cwd.is_dir() else Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _recbole_dir() -> Path:
    """The installed recbole package directory, found without importing recbole (slow, with missing deps)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("ml-100k is read from the recbole wheel, which is not installed: "
                                "pip install --no-deps recbole==1.2.1")
    return Path(next(iter(spec.submodule_search_locations)))


def _named_files(name: str, spec: NamedDataset, data_dir: str | None) -> list[Path]:
    root = _recbole_dir() if spec.embedded else Path(data_dir) if data_dir else default_data_dir()
    hint = ("reinstall it: pip install --no-deps recbole==1.2.1" if spec.embedded
            else "set GNAQ_DATA_DIR (or --data-dir) to the directory holding the shared datasets")
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} for dataset {name!r} not found; {hint}")
    files = [root / file for file in spec.files]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{file} (dataset {name!r}) not found; {hint}")
    return files


def _path_spec(name_or_path: str) -> tuple[NamedDataset, list[Path]]:
    path = Path(name_or_path)
    if path.is_dir():
        files = [path / "train.txt", path / "test.txt"]
        missing = [str(file) for file in files if not file.is_file()]
        if missing:
            raise FileNotFoundError(f"{path} is a directory without {' and '.join(missing)} (adjacency lists)")
        return NamedDataset(("train.txt", "test.txt"), "adjacency"), files
    if not path.is_file():
        raise FileNotFoundError(f"{name_or_path!r} is neither a dataset name ({', '.join(NAMED_DATASETS)}) "
                                f"nor an existing file or directory")
    if path.suffix.lower() not in _TABLE_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected one of {_TABLE_SUFFIXES}")
    return NamedDataset((path.name,), "table"), [path]


def _split_label(kind: str, test_fraction: float) -> str:
    return f"{kind}-{round(100 * (1 - test_fraction))}/{round(100 * test_fraction)}"


def _first_occurrences(pairs: np.ndarray, n_items: int) -> np.ndarray:
    """Positions of the first occurrence of each distinct pair, ordered by (user, item)."""
    return np.unique(pairs[:, 0] * n_items + pairs[:, 1], return_index=True)[1]


def _count(warnings: dict[str, int], key: str, n: int, source: str | Path, what: str) -> None:
    if n:
        warnings[key] = warnings.get(key, 0) + n
        log.warning("%s: skipped %d %s", source, n, what)


def _clean_official(train: np.ndarray, test: np.ndarray, n_users: int, n_items: int, test_file: Path,
                    warnings: dict[str, int]) -> np.ndarray:
    """Drop the test pairs a model cannot be judged on: already in train, or with a user/item absent from train."""
    train_codes = train[:, 0] * n_items + train[:, 1]  # sorted: train is ordered by (user, item)
    test_codes = test[:, 0] * n_items + test[:, 1]
    at = np.minimum(np.searchsorted(train_codes, test_codes), len(train_codes) - 1)
    in_train = train_codes[at] == test_codes
    _count(warnings, "test_pairs_in_train", int(in_train.sum()), test_file, "test pairs that are also in train")
    test = test[~in_train]
    seen_users = np.bincount(train[:, 0], minlength=n_users) > 0
    seen_items = np.bincount(train[:, 1], minlength=n_items) > 0
    unseen = ~(seen_users[test[:, 0]] & seen_items[test[:, 1]])
    n_new_items = len(np.unique(test[unseen & ~seen_items[test[:, 1]], 1]))
    n_new_users = len(np.unique(test[unseen & ~seen_users[test[:, 0]], 0]))
    _count(warnings, "test_pairs_unseen_in_train", int(unseen.sum()), test_file,
           f"test pairs whose user or item never appears in train ({n_new_users} users, {n_new_items} items)")
    return test[~unseen]


def _from_official(name: str, spec: NamedDataset, files: list[Path], split: str, test_fraction: float,
                   seed: int) -> Interactions:
    """Integer-id train/test files: indices are the file's ids (minus 1 when 1-based); n = max id + 1."""
    if split == "temporal":
        raise ValueError(f"{files[0]}: a temporal split needs a timestamp column, which this format lacks")
    if spec.fmt == "pairs":
        train, test = (read_pairs(file, one_based=spec.one_based) for file in files)
    else:
        train, test = (read_adjacency_lists(file) for file in files)
    if not len(train):
        raise DatasetFormatError(files[0], None, "no training interactions")
    n_users = int(max(train[:, 0].max(), test[:, 0].max(initial=0))) + 1
    n_items = int(max(train[:, 1].max(), test[:, 1].max(initial=0))) + 1
    warnings: dict[str, int] = {}
    if split == "random":
        everything = np.concatenate([train, test])
        unique = everything[_first_occurrences(everything, n_items)]
        _count(warnings, "duplicate_pairs", len(everything) - len(unique), " + ".join(map(str, files)),
               "duplicate pairs")
        train, test = random_split(unique, test_fraction=test_fraction, seed=seed)
        label = f"{_split_label('random', test_fraction)} seed={seed}"
    else:
        unique = []
        for file, pairs in zip(files, (train, test), strict=True):
            unique.append(pairs[_first_occurrences(pairs, n_items)])
            _count(warnings, "duplicate_pairs", len(pairs) - len(unique[-1]), file, "duplicate pairs")
        test = _clean_official(unique[0], unique[1], n_users, n_items, files[1], warnings)
        train, label = unique[0], "official"
    offset = int(spec.one_based)
    return Interactions(name, n_users, n_items, train, test, [str(i + offset) for i in range(n_users)],
                        [str(i + offset) for i in range(n_items)], label, warnings)


def _from_table(name: str, file: Path, split: str, test_fraction: float, seed: int,
                columns: Columns) -> Interactions:
    """String-id rows: indices in order of first appearance; split here (no official split exists)."""
    table = read_table(file, columns)
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    users = np.fromiter((user_index.setdefault(u, len(user_index)) for u in table.users), np.int64, len(table.users))
    items = np.fromiter((item_index.setdefault(i, len(item_index)) for i in table.items), np.int64, len(table.items))
    first = np.sort(_first_occurrences(np.stack([users, items], axis=1), len(item_index)))  # file order
    pairs = np.stack([users[first], items[first]], axis=1)
    warnings: dict[str, int] = {}
    _count(warnings, "below_min_rating", table.below_min_rating, file,
           f"rows with a rating below {columns.min_rating}")
    _count(warnings, "duplicate_pairs", len(users) - len(pairs), file, "duplicate pairs (kept the first)")
    _warn_if_items_look_unique(file, len(item_index), len(pairs), warnings)
    if split == "temporal":
        if table.timestamps is None:
            raise ValueError(f"{file}: a temporal split needs a timestamp column, which this file lacks")
        train, test = temporal_split(pairs, table.timestamps[first], test_fraction=test_fraction)
        label = _split_label("temporal", test_fraction)
    else:
        train, test = random_split(pairs, test_fraction=test_fraction, seed=seed)
        label = f"{_split_label('random', test_fraction)} seed={seed}"
    return Interactions(name, len(user_index), len(item_index), train, test, list(user_index), list(item_index),
                        label, warnings)


def _warn_if_items_look_unique(file: Path, n_items: int, n_pairs: int, warnings: dict[str, int]) -> None:
    """Nearly one item per interaction is what a timestamp or row-id column read as items looks like."""
    if n_pairs >= 100 and n_items >= 0.9 * n_pairs:
        warnings["items_nearly_one_per_interaction"] = n_items
        log.warning("%s: %d distinct items in %d interactions: nearly every interaction has an item of its own, "
                    "which is what timestamps or row ids read as items look like. Check the item column: name it "
                    "in a header row (item, item_id, movieId, ...) or pass --item-col NAME.", file, n_items, n_pairs)


def load_dataset(name_or_path: str, *, data_dir: str | None = None, split: str = "auto",
                 test_fraction: float = 0.2, seed: int = 0, columns: Columns = DEFAULT_COLUMNS) -> Interactions:
    """Load a registered dataset or a path and split it.

    ``split``: ``"auto"`` keeps an official train/test split where the dataset has one, else splits at random;
    ``"random"`` splits per user at random (official datasets are re-split from train + test together);
    ``"temporal"`` puts each user's latest interactions in test and needs timestamps.  Duplicate pairs are
    dropped; of an official test set, pairs already in train or with a user/item never seen in train are
    dropped as well.  Each skip is counted in ``warnings`` and logged. ``columns`` says how a table file's
    columns are read (named datasets and adjacency lists have fixed formats and refuse it).
    """
    if split not in ("auto", "random", "temporal"):
        raise ValueError(f"split must be 'auto', 'random' or 'temporal', got {split!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if name_or_path in NAMED_DATASETS:
        spec = NAMED_DATASETS[name_or_path]
        files = _named_files(name_or_path, spec, data_dir)
    else:
        spec, files = _path_spec(name_or_path)
    if spec.fmt == "table":
        return _from_table(name_or_path, files[0], split, test_fraction, seed, columns)
    if columns != DEFAULT_COLUMNS:
        raise ValueError(f"{name_or_path!r} has a fixed format: column settings (--user-col, --item-col, --time-col, "
                         "--rating-col, --min-rating) apply to CSV/TSV/.inter files only")
    return _from_official(name_or_path, spec, files, split, test_fraction, seed)


def dataset_stats(data: Interactions) -> dict:
    """Sizes, density, split and skip counts of a loaded dataset, JSON-ready (``gnaq data``)."""
    return {"dataset": data.name, "users": data.n_users, "items": data.n_items, "train": len(data.train),
            "test": len(data.test), "interactions": data.n_interactions, "density": data.density,
            "split": data.split, "warnings": dict(data.warnings)}
