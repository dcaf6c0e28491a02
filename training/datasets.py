"""Named datasets and paths -> ``Interactions`` with contiguous ids and a recorded split."""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.interactions import Interactions
from training.loaders import DatasetFormatError, read_adjacency_lists, read_pairs, read_table
from training.splits import random_split, temporal_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Official:
    """A dataset shipped with its own train/test files."""

    train: str
    test: str
    one_based_pairs: bool = False  # False: adjacency lists; True: 1-based ``user item weight`` pairs


NAMED_DATASETS: dict[str, _Official | None] = {
    "ml-100k": None,  # embedded default, from the recbole wheel
    "gowalla": _Official("gowalla/train.txt", "gowalla/test.txt"),
    "movielens1m": _Official("movielens1m/train.txt", "movielens1m/test.txt"),
    "lastfm": _Official("lastfm/data1.txt", "lastfm/test1.txt", one_based_pairs=True),
}


def default_data_dir() -> Path:
    """``GNAQ_DATA_DIR``, else ``../shared/datasets`` beside the working directory or the repository."""
    if os.environ.get("GNAQ_DATA_DIR"):
        return Path(os.environ["GNAQ_DATA_DIR"])
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base.parent / "shared" / "datasets"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "datasets"


def embedded_ml100k() -> Path:
    """MovieLens-100K as packaged in the recbole wheel (found without importing recbole)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded ml-100k ships in recbole: pip install --no-deps recbole==1.2.1")
    path = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k" / "ml-100k.inter"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed recbole package")
    return path


def _split_name(kind: str, test_fraction: float, seed: int | None) -> str:
    shares = f"{round(100 * (1 - test_fraction))}/{round(100 * test_fraction)}"
    return f"{kind}-{shares}" + (f" seed={seed}" if seed is not None else "")


def _dedupe(pairs: np.ndarray) -> tuple[np.ndarray, int]:
    unique = np.unique(pairs, axis=0)
    return unique, len(pairs) - len(unique)


def _clean_test(train: np.ndarray, test: np.ndarray, source: str, warnings: dict[str, int]) -> np.ndarray:
    """Drop (and count) test pairs the model cannot be judged on: unseen user/item, or already in train."""
    seen_users, seen_items = np.unique(train[:, 0]), np.unique(train[:, 1])
    unseen = ~(np.isin(test[:, 0], seen_users) & np.isin(test[:, 1], seen_items))
    n_items = int(max(train[:, 1].max(), test[:, 1].max())) + 1
    in_train = np.isin(test[:, 0] * n_items + test[:, 1], train[:, 0] * n_items + train[:, 1])
    for key, mask in (("test_pairs_unseen_in_train", unseen), ("test_pairs_in_train", in_train & ~unseen)):
        if mask.any():
            warnings[key] = int(mask.sum())
            log.warning("%s: dropped %d test pairs (%s)", source, int(mask.sum()), key.replace("_", " "))
    return test[~(unseen | in_train)]


def _official(train_path: Path, test_path: Path, one_based: bool) -> tuple[np.ndarray, np.ndarray]:
    if one_based:
        return read_pairs(train_path, one_based=True), read_pairs(test_path, one_based=True)
    return read_adjacency_lists(train_path), read_adjacency_lists(test_path)


def load_dataset(name_or_path: str, *, data_dir: str | None = None, split: str = "auto",
                 test_fraction: float = 0.2, seed: int = 0) -> Interactions:
    """Load a named dataset or a path and split it (``auto``: official split if any, else random)."""
    if split not in ("auto", "random", "temporal"):
        raise ValueError(f"split must be auto, random or temporal, got {split!r}")
    warnings: dict[str, int] = {}
    official = NAMED_DATASETS.get(name_or_path)
    path = Path(name_or_path)
    if name_or_path in NAMED_DATASETS and official is not None:
        root = Path(data_dir) if data_dir else default_data_dir()
        files = root / official.train, root / official.test
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"{file} not found (set GNAQ_DATA_DIR or --data-dir to the datasets dir)")
        train, test = _official(*files, official.one_based_pairs)
        one_based, source = official.one_based_pairs, str(files[1])
    elif path.is_dir():
        files = path / "train.txt", path / "test.txt"
        train, test = _official(*files, False)
        one_based, source = False, str(files[1])
    else:
        table_path = embedded_ml100k() if name_or_path == "ml-100k" else path
        if not table_path.is_file():
            raise FileNotFoundError(f"{name_or_path!r} is neither a dataset name ({', '.join(NAMED_DATASETS)}) "
                                    f"nor an existing file or directory")
        return _from_table(name_or_path, table_path, split, test_fraction, seed)
    train, warnings["duplicate_pairs"] = _dedupe(train)
    test, duplicates = _dedupe(test)
    warnings["duplicate_pairs"] += duplicates
    n_users = int(max(train[:, 0].max(), test[:, 0].max(initial=0))) + 1
    n_items = int(max(train[:, 1].max(), test[:, 1].max(initial=0))) + 1
    if split == "temporal":
        raise ValueError(f"{name_or_path}: a temporal split needs timestamps, which this format lacks")
    if split == "random":
        train, test = random_split(np.unique(np.concatenate([train, test]), axis=0),
                                   test_fraction=test_fraction, seed=seed)
        split_name = _split_name("random", test_fraction, seed)
    else:
        test = _clean_test(train, test, source, warnings)
        split_name = "official"
    ids = [str(i + one_based) for i in range(max(n_users, n_items))]
    return Interactions(path.name if official is None else name_or_path, n_users, n_items, train, test,
                        ids[:n_users], ids[:n_items], split_name, {k: v for k, v in warnings.items() if v})


def _from_table(name: str, path: Path, split: str, test_fraction: float, seed: int) -> Interactions:
    """String-id tables: ids mapped to indices in order of first appearance; no official split."""
    table = read_table(path)
    user_ids, users = np.unique(np.asarray(table.users), return_inverse=True)
    item_ids, items = np.unique(np.asarray(table.items), return_inverse=True)
    first_user, first_item = _first_appearance(users), _first_appearance(items)
    pairs = np.stack([first_user[users], first_item[items]], axis=1).astype(np.int64)
    order_users, order_items = np.argsort(first_user), np.argsort(first_item)
    unique, index = np.unique(pairs, axis=0, return_index=True)
    warnings = {"duplicate_pairs": len(pairs) - len(unique)} if len(unique) < len(pairs) else {}
    if split == "temporal":
        if table.timestamps is None:
            raise ValueError(f"{path}: a temporal split needs a timestamp column")
        train, test = temporal_split(unique, table.timestamps[index], test_fraction=test_fraction)
        split_name = _split_name("temporal", test_fraction, None)
    else:
        train, test = random_split(unique, test_fraction=test_fraction, seed=seed)
        split_name = _split_name("random", test_fraction, seed)
    if len(train) == 0:
        raise DatasetFormatError(path, None, "no training interactions")
    return Interactions(name if name == "ml-100k" else path.stem, len(user_ids), len(item_ids), train, test,
                        [str(x) for x in user_ids[order_users]], [str(x) for x in item_ids[order_items]],
                        split_name, warnings)


def _first_appearance(inverse: np.ndarray) -> np.ndarray:
    """Map sorted-unique codes to indices ranked by first appearance in the file."""
    first = np.full(inverse.max() + 1, len(inverse))
    np.minimum.at(first, inverse, np.arange(len(inverse)))
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank


def dataset_stats(data: Interactions) -> dict:
    """The figures ``gnaq data stats`` prints."""
    return {"dataset": data.name, "users": data.n_users, "items": data.n_items, "train": len(data.train),
            "test": len(data.test), "interactions": data.n_interactions, "density": round(data.density, 6),
            "split": data.split, "warnings": data.warnings}
