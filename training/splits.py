"""Per-user train/test splits (random with a seed, or temporal) and the validation carve-out."""

from __future__ import annotations

import numpy as np


def _per_user_tail(pairs: np.ndarray, order_key: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Sort each user's rows by ``order_key``; the last ``round(n*f)`` go to test, >= 1 stays in train."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test fraction must lie in (0, 1), got {test_fraction}")
    order = np.lexsort((order_key, pairs[:, 0]))
    users = pairs[order, 0]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, len(users)])
    n_test = np.minimum(np.floor(counts * test_fraction + 0.5).astype(np.int64), counts - 1)
    rank = np.arange(len(users)) - np.repeat(starts, counts)
    is_test = rank >= np.repeat(counts - n_test, counts)
    ordered = pairs[order]
    return _sorted(ordered[~is_test]), _sorted(ordered[is_test])


def _sorted(pairs: np.ndarray) -> np.ndarray:
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))].astype(np.int64)


def random_split(pairs: np.ndarray, *, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-user random split, deterministic given ``seed``."""
    key = np.random.default_rng(seed).random(len(pairs))
    return _per_user_tail(pairs, key, test_fraction)


def temporal_split(pairs: np.ndarray, timestamps: np.ndarray, *,
                   test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Per-user split by time: each user's latest interactions are the test set."""
    order = np.lexsort((np.arange(len(pairs)), np.asarray(timestamps, dtype=np.float64)))  # ties: file order
    rank = np.empty(len(pairs))
    rank[order] = np.arange(len(pairs))
    return _per_user_tail(pairs, rank, test_fraction)


def validation_split(train: np.ndarray, *, fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Carve a per-user random validation set out of the training pairs (early stopping, selection)."""
    return random_split(train, test_fraction=fraction, seed=seed + 7919)
