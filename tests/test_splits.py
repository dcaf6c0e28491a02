"""Per-user splits: seeded, proportional, disjoint, and every user keeps a training interaction."""

from __future__ import annotations

import numpy as np
import pytest

from training.splits import random_split, temporal_split, validation_split


def _interactions(seed: int = 1, n: int = 4000, n_users: int = 60, n_items: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pairs = np.unique(np.stack([rng.integers(0, n_users, n), rng.integers(0, n_items, n)], axis=1), axis=0)
    pairs = np.r_[pairs, [[n_users, 0], [n_users + 1, 0], [n_users + 1, 1]]]  # users with 1 and 2 interactions
    return pairs[rng.permutation(len(pairs))]


def _rows(pairs: np.ndarray) -> set[tuple[int, int]]:
    return set(map(tuple, pairs.tolist()))


def _check_partition(pairs: np.ndarray, train: np.ndarray, test: np.ndarray, fraction: float) -> None:
    for part in (train, test):
        assert part.dtype == np.int64 and part.shape[1] == 2
        assert np.array_equal(part, part[np.lexsort((part[:, 1], part[:, 0]))])  # sorted by (user, item)
    assert not _rows(train) & _rows(test)
    assert _rows(train) | _rows(test) == _rows(pairs) and len(train) + len(test) == len(pairs)
    assert set(train[:, 0].tolist()) == set(pairs[:, 0].tolist())  # every user keeps a training item
    counts = np.bincount(pairs[:, 0])
    expected = np.minimum(np.floor(counts * fraction + 0.5), np.maximum(counts - 1, 0))
    np.testing.assert_array_equal(np.bincount(test[:, 0], minlength=len(counts)), expected)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.1])
def test_random_split_is_per_user_and_proportional(fraction):
    pairs = _interactions()
    train, test = random_split(pairs, test_fraction=fraction, seed=3)
    _check_partition(pairs, train, test, fraction)


def test_random_split_is_deterministic_given_the_seed():
    pairs = _interactions()
    train, test = random_split(pairs, seed=7)
    again_train, again_test = random_split(pairs, seed=7)
    other_train, _ = random_split(pairs, seed=8)
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)
    assert not np.array_equal(train, other_train)


def test_small_users_keep_their_interactions_in_train():
    pairs = np.array([[0, 4], [1, 2], [1, 3], [2, 0], [2, 1], [2, 2], [2, 3], [2, 4]])
    _, test = random_split(pairs, test_fraction=0.2)
    assert test[:, 0].tolist() == [2]  # 1 * 0.2 and 2 * 0.2 round to 0; 5 * 0.2 = 1
    _, test = random_split(pairs, test_fraction=0.5)
    assert sorted(test[:, 0].tolist()) == [1, 2, 2, 2]  # half-up rounding, user 0 keeps its single item


def test_temporal_split_puts_each_users_latest_interactions_in_test():
    pairs = np.array([[0, 10], [1, 20], [0, 11], [1, 21], [0, 12], [1, 22], [0, 13], [1, 23], [0, 14]])
    stamps = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 3.0, 2.0, 4.0, 1.0])
    train, test = temporal_split(pairs, stamps, test_fraction=0.4)
    assert test.tolist() == [[0, 10], [0, 11], [1, 22], [1, 23]]
    _check_partition(pairs, train, test, 0.4)


def test_temporal_ties_are_broken_by_original_order():
    pairs = np.array([[0, 3], [0, 1], [0, 2], [0, 0]])
    _, test = temporal_split(pairs, np.array([1.0, 2.0, 2.0, 0.0]), test_fraction=0.25)
    assert test.tolist() == [[0, 2]]  # items 1 and 2 share the latest time; item 2 comes later in the input


def test_temporal_split_needs_one_timestamp_per_pair():
    with pytest.raises(ValueError, match="one timestamp per pair"):
        temporal_split(np.array([[0, 1], [0, 2]]), np.array([1.0]))


def test_validation_split_is_the_same_random_carve():
    train, _ = random_split(_interactions(), seed=2)
    fit, valid = validation_split(train, fraction=0.1, seed=5)
    expected_fit, expected_valid = random_split(train, test_fraction=0.1, seed=5)
    assert np.array_equal(fit, expected_fit) and np.array_equal(valid, expected_valid)
    _check_partition(train, fit, valid, 0.1)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_fraction_out_of_range(fraction):
    with pytest.raises(ValueError, match="test fraction"):
        random_split(_interactions(), test_fraction=fraction)


def test_empty_input_gives_empty_splits():
    train, test = random_split(np.zeros((0, 2), dtype=np.int64))
    assert train.shape == test.shape == (0, 2)
