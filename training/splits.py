"""Per-user train/test splits (random with a seed, or temporal) and the validation carve-out.

Every split is per user so that each user is evaluated in proportion to their history, and every user keeps at
least one training interaction so that their embedding is trained at all.
"""

from __future__ import annotations

import numpy as np


def _sorted(pairs: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))], dtype=np.int64)


def _split_last(pairs: np.ndarray, order: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Within each user, in ``order`` (which must group rows by user), the last ``round(n*f)`` rows go to test.

    ``round`` is half-up; at most ``n - 1`` rows go to test so that every user keeps a training interaction.
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test fraction must be in [0, 1), got {test_fraction}")
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)[order]
    users = pairs[:, 0]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, len(users)])
    n_test = np.minimum(np.floor(counts * test_fraction + 0.5).astype(np.int64), counts - 1)
    rank = np.arange(len(users)) - np.repeat(starts, counts)
    is_test = rank >= np.repeat(counts - n_test, counts)
    return _sorted(pairs[~is_test]), _sorted(pairs[is_test])


def random_split(pairs: np.ndarray, *, test_fraction: float = 0.2,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-user random ``(train, test)``, deterministic given ``seed``; both sorted by (user, item)."""
    keys = np.random.default_rng(seed).random(len(pairs))
    return _split_last(pairs, np.lexsort((keys, np.asarray(pairs)[:, 0])), test_fraction)


def temporal_split(pairs: np.ndarray, timestamps: np.ndarray, *,
                   test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Per-user ``(train, test)`` where each user's latest interactions are the test set (ties: later row is later)."""
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if timestamps.shape != (len(pairs),):
        raise ValueError(f"need one timestamp per pair, got {timestamps.shape} for {len(pairs)} pairs")
    order = np.lexsort((np.arange(len(pairs)), timestamps, np.asarray(pairs)[:, 0]))
    return _split_last(pairs, order, test_fraction)


def validation_split(train: np.ndarray, *, fraction: float = 0.1,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, valid)``: a per-user random carve of the training pairs, for early stopping and model selection."""
    return random_split(train, test_fraction=fraction, seed=seed)


def without_pairs(pairs: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """``pairs`` minus every ``(user, item)`` pair that occurs in ``removed``, order kept."""
    if len(pairs) == 0 or len(removed) == 0:
        return pairs
    width = int(max(pairs[:, 1].max(), removed[:, 1].max())) + 1
    keys = pairs[:, 0].astype(np.int64) * width + pairs[:, 1]
    return pairs[~np.isin(keys, removed[:, 0].astype(np.int64) * width + removed[:, 1])]
