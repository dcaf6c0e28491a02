"""Loaders, splits and named datasets, on real files and on malformed ones."""

import logging

import numpy as np
import pytest

from training.datasets import dataset_stats, default_data_dir, load_dataset
from training.loaders import DatasetFormatError, read_adjacency_lists, read_pairs, read_table
from training.splits import random_split, temporal_split, validation_split

SHARED = default_data_dir()
needs_shared = pytest.mark.skipif(not (SHARED / "gowalla").is_dir(), reason="shared datasets not present")


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_adjacency_lists_accept_unsorted_items_and_lone_users(tmp_path):
    pairs = read_adjacency_lists(_write(tmp_path, "train.txt", "0 5 2 9\n1\n\n2 3\n"))
    assert pairs.tolist() == [[0, 5], [0, 2], [0, 9], [2, 3]]


@pytest.mark.parametrize(("reader", "text", "line", "fragment"), [
    (read_adjacency_lists, "0 1 2\n1 x 3\n", 2, "'x' is not an integer"),
    (read_adjacency_lists, "0 1\n1 -3\n", 2, "negative"),
    (lambda p: read_pairs(p, one_based=True), "1\t2\t1\n3\n", 2, "expected 'user item"),
    (lambda p: read_pairs(p, one_based=True), "1\t2\n0\t4\n", 2, "1-based"),
    (read_table, "user,item,timestamp\nu1,i1,5\nu2,i2,yesterday\n", 3, "timestamp 'yesterday'"),
    (read_table, "user,item\nu1,i1\nu2\n", 3, "expected at least 2 fields"),
])
def test_malformed_lines_name_file_and_line(tmp_path, reader, text, line, fragment):
    path = _write(tmp_path, "data.txt", text)
    with pytest.raises(DatasetFormatError, match=fragment) as error:
        reader(path)
    assert error.value.line == line and str(error.value).startswith(f"{path}:{line}:")


@pytest.mark.parametrize("reader", [read_adjacency_lists, read_table, lambda p: read_pairs(p, one_based=False)])
def test_missing_and_empty_files(tmp_path, reader):
    with pytest.raises(DatasetFormatError, match="file not found"):
        reader(tmp_path / "absent.txt")
    with pytest.raises(DatasetFormatError, match="empty"):
        reader(_write(tmp_path, "empty.txt", "\n\n"))


def test_csv_with_string_ids_is_mapped_in_order_of_first_appearance(tmp_path):
    path = _write(tmp_path, "log.csv", "user,item,timestamp\nalice,b42,3\nbob,a7,1\nalice,a7,2\n" +
                  "".join(f"carol,x{k},{k}\n" for k in range(5)))
    data = load_dataset(str(path), split="temporal", test_fraction=0.2)
    assert data.user_ids == ["alice", "bob", "carol"] and data.item_ids[:2] == ["b42", "a7"]
    assert data.split == "temporal-80/20"
    # carol's latest interaction (x4) is her test item; bob keeps his only one in train.
    test = {(data.user_ids[u], data.item_ids[i]) for u, i in data.test}
    assert ("carol", "x4") in test and not any(u == "bob" for u, _ in test)


def test_temporal_split_needs_timestamps(tmp_path):
    path = _write(tmp_path, "log.csv", "a,b\nc,d\n")
    with pytest.raises(ValueError, match="needs a timestamp"):
        load_dataset(str(path), split="temporal")


def test_unseen_test_items_are_dropped_with_a_counted_warning(tmp_path, caplog):
    (tmp_path / "d").mkdir()
    _write(tmp_path, "d/train.txt", "0 0 1\n1 1 2\n")
    _write(tmp_path, "d/test.txt", "0 2 7\n1 0\n")
    with caplog.at_level(logging.WARNING):
        data = load_dataset(str(tmp_path / "d"))
    assert data.warnings == {"test_pairs_unseen_in_train": 1}
    assert "test.txt" in caplog.text and data.test.tolist() == [[0, 2], [1, 0]]


def test_random_split_is_per_user_seeded_and_keeps_a_training_item():
    rng = np.random.default_rng(1)
    pairs = np.unique(np.stack([rng.integers(0, 50, 3000), rng.integers(0, 200, 3000)], 1), axis=0)
    pairs = np.r_[pairs, [[50, 0]]]  # a user with a single interaction
    train, test = random_split(pairs, test_fraction=0.2, seed=3)
    again, _ = random_split(pairs, test_fraction=0.2, seed=3)
    other, _ = random_split(pairs, test_fraction=0.2, seed=4)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    assert len(np.unique(np.r_[train, test], axis=0)) == len(pairs) == len(train) + len(test)
    assert set(np.unique(train[:, 0])) == set(np.unique(pairs[:, 0]))
    counts = np.bincount(pairs[:, 0])
    test_counts = np.bincount(test[:, 0], minlength=len(counts))
    np.testing.assert_array_equal(test_counts[:50], np.floor(counts[:50] * 0.2 + 0.5))
    fit, valid = validation_split(train, fraction=0.1, seed=3)
    assert len(fit) + len(valid) == len(train)


def test_temporal_split_puts_latest_last():
    pairs = np.array([[0, i] for i in range(10)])
    train, test = temporal_split(pairs, np.arange(10)[::-1].astype(float), test_fraction=0.3)
    assert sorted(test[:, 1].tolist()) == [0, 1, 2]


def test_embedded_ml100k():
    data = load_dataset("ml-100k")
    stats = dataset_stats(data)
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100000)
    assert data.split == "random-80/20 seed=0" and len(data.test) == 20000


@needs_shared
@pytest.mark.parametrize(("name", "expected"), [
    ("gowalla", (29858, 40981, 810128, 217242)),
    ("movielens1m", (6022, 3043, 796244, 99455)),
    ("lastfm", (1892, 4489, 42135, 10533 - 44)),
])
def test_shared_datasets_match_provenance(name, expected):
    data = load_dataset(name)
    assert (data.n_users, data.n_items, len(data.train), len(data.test)) == expected
    if name == "lastfm":  # 13 test items never appear in train: their 44 test pairs are dropped
        assert data.warnings == {"test_pairs_unseen_in_train": 44} and data.user_ids[0] == "1"


def test_unknown_dataset_name():
    with pytest.raises(FileNotFoundError, match="neither a dataset name"):
        load_dataset("no-such-dataset")
