"""Named datasets and paths load into ``Interactions`` with the documented sizes, ids, splits and skips."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from training import datasets
from training.datasets import NAMED_DATASETS, dataset_stats, default_data_dir, load_dataset
from training.loaders import Columns, DatasetFormatError, read_pairs

SHARED = default_data_dir()


def _shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"shared datasets not present ({path})")
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _adjacency_dir(tmp_path: Path, train: str, test: str) -> Path:
    _write(tmp_path / "d" / "train.txt", train)
    _write(tmp_path / "d" / "test.txt", test)
    return tmp_path / "d"


def test_registry_names():
    assert set(NAMED_DATASETS) == {"ml-100k", "gowalla", "movielens1m", "lastfm"}


def test_embedded_ml100k_is_split_at_random():
    data = load_dataset("ml-100k")
    assert (data.n_users, data.n_items, data.n_interactions) == (943, 1682, 100_000)
    assert (len(data.train), len(data.test)) == (80_000, 20_000)
    assert data.split == "random-80/20 seed=0" and data.warnings == {}
    assert data.user_ids[:2] == ["196", "186"] and data.item_ids[:2] == ["242", "302"]  # order of first appearance
    assert data.fingerprint() == load_dataset("ml-100k").fingerprint()
    assert data.fingerprint() != load_dataset("ml-100k", seed=1).fingerprint()


def test_embedded_ml100k_temporal_split():
    data = load_dataset("ml-100k", split="temporal", test_fraction=0.1)
    assert data.split == "temporal-90/10" and len(data.train) + len(data.test) == 100_000


def test_missing_recbole_tells_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps recbole==1\.2\.1"):
        load_dataset("ml-100k")


def test_adjacency_directory_keeps_the_official_split(tmp_path):
    data = load_dataset(str(_adjacency_dir(tmp_path, "0 3 1\n1 2 0\n2\n", "0 2\n1 1\n3\n")))
    assert data.split == "official" and data.warnings == {}
    assert data.train.tolist() == [[0, 1], [0, 3], [1, 0], [1, 2]] and data.test.tolist() == [[0, 2], [1, 1]]
    assert (data.n_users, data.n_items) == (2, 4)  # max id + 1 over the pairs; lone user ids hold no pair
    assert data.user_ids == ["0", "1"] and data.item_ids == ["0", "1", "2", "3"]
    assert data.name == str(tmp_path / "d")


def test_duplicates_and_test_pairs_in_train_are_dropped_and_counted(tmp_path):
    data = load_dataset(str(_adjacency_dir(tmp_path, "0 1 1 2\n1 0 3\n0 2\n", "0 3 1\n1 2 2\n")))
    assert data.train.tolist() == [[0, 1], [0, 2], [1, 0], [1, 3]] and data.test.tolist() == [[0, 3], [1, 2]]
    assert data.warnings == {"duplicate_pairs": 3, "test_pairs_in_train": 1}


def test_unseen_test_pairs_are_dropped_with_a_logged_warning(tmp_path, caplog):
    directory = _adjacency_dir(tmp_path, "0 0 1\n1 1 2\n", "0 2 7\n1 0\n4 1\n")
    with caplog.at_level(logging.WARNING, logger="training.datasets"):
        data = load_dataset(str(directory))
    assert data.test.tolist() == [[0, 2], [1, 0]] and (data.n_users, data.n_items) == (5, 8)
    assert data.warnings == {"test_pairs_unseen_in_train": 2}
    assert str(directory / "test.txt") in caplog.text and "1 users, 1 items" in caplog.text


def test_random_resplit_of_an_official_dataset(tmp_path):
    train = "".join(f"{u} " + " ".join(str((u * 7 + k) % 40) for k in range(10)) + "\n" for u in range(20))
    test = "".join(f"{u} " + " ".join(str((u * 7 + k) % 40) for k in range(10, 13)) + "\n" for u in range(20))
    directory = str(_adjacency_dir(tmp_path, train, test))
    data = load_dataset(directory, split="random", test_fraction=0.25, seed=4)
    assert data.split == "random-75/25 seed=4" and (len(data.train), len(data.test)) == (200, 60)
    official = load_dataset(directory)
    both = np.r_[official.train, official.test]
    assert {tuple(p) for p in np.r_[data.train, data.test].tolist()} == {tuple(p) for p in both.tolist()}
    assert not np.array_equal(data.test, official.test)
    assert np.array_equal(data.test, load_dataset(directory, split="random", test_fraction=0.25, seed=4).test)


def test_csv_string_ids_follow_first_appearance_and_duplicates_are_counted(tmp_path):
    rows = "user,item,timestamp\nalice,b42,3\nbob,a7,1\nalice,a7,2\nalice,b42,9\n"
    rows += "".join(f"carol,x{k},{k}\n" for k in range(5))
    data = load_dataset(str(_write(tmp_path / "log.csv", rows)), split="temporal", test_fraction=0.2)
    assert data.user_ids == ["alice", "bob", "carol"] and data.item_ids == ["b42", "a7", "x0", "x1", "x2", "x3", "x4"]
    assert data.split == "temporal-80/20" and data.warnings == {"duplicate_pairs": 1}
    test = {(data.user_ids[u], data.item_ids[i]) for u, i in data.test.tolist()}
    assert test == {("carol", "x4")}  # alice's 2 pairs round to 0 test items, bob keeps his only one


def test_tsv_and_inter_paths(tmp_path):
    tsv = load_dataset(str(_write(tmp_path / "log.tsv", "u1\ti1\nu1\ti2\nu2\ti1\n")))
    assert (tsv.n_users, tsv.n_items, tsv.n_interactions) == (2, 2, 3) and tsv.split == "random-80/20 seed=0"
    inter = load_dataset(str(_write(tmp_path / "x.inter", "item_id:token\tuser_id:token\nb\ta\nc\ta\n")))
    assert inter.user_ids == ["a"] and inter.item_ids == ["b", "c"]


def test_temporal_split_needs_timestamps(tmp_path):
    with pytest.raises(ValueError, match="needs a timestamp"):
        load_dataset(str(_write(tmp_path / "log.csv", "a,b\nc,d\n")), split="temporal")
    with pytest.raises(ValueError, match="needs a timestamp"):
        load_dataset(str(_adjacency_dir(tmp_path, "0 1\n", "0 2\n")), split="temporal")


def test_malformed_file_inside_a_dataset_names_file_and_line(tmp_path):
    directory = _adjacency_dir(tmp_path, "0 1\n", "0 2\n1 two\n")
    with pytest.raises(DatasetFormatError, match=r"test\.txt:2: id 'two' is not an integer"):
        load_dataset(str(directory))


def test_no_training_pairs_is_an_error(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"train\.txt: no training interactions"):
        load_dataset(str(_adjacency_dir(tmp_path, "0\n1\n", "0 1\n")))


@pytest.mark.parametrize(("name_or_path", "fragment"), [
    ("no-such-dataset", "neither a dataset name"),
    ("missing.csv", "nor an existing file or directory"),
])
def test_unknown_names_and_paths(name_or_path, fragment):
    with pytest.raises(FileNotFoundError, match=fragment):
        load_dataset(name_or_path)


def test_directory_without_adjacency_files(tmp_path):
    _write(tmp_path / "d" / "train.txt", "0 1\n")
    with pytest.raises(FileNotFoundError, match=r"test\.txt"):
        load_dataset(str(tmp_path / "d"))


def test_unsupported_suffix(tmp_path):
    with pytest.raises(ValueError, match="unsupported file type"):
        load_dataset(str(_write(tmp_path / "log.json", "{}")))


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"split": "chronological"}, "split must be"),
    ({"test_fraction": 1.0}, "test_fraction"),
])
def test_bad_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        load_dataset("ml-100k", **kwargs)


def test_data_dir_comes_from_the_environment_then_beside_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("GNAQ_DATA_DIR", str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"
    monkeypatch.delenv("GNAQ_DATA_DIR")
    (tmp_path / "shared" / "datasets").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert default_data_dir() == Path("..").resolve() / "shared" / "datasets"
    monkeypatch.chdir(tmp_path)
    repo = Path(datasets.__file__).resolve().parents[1]
    assert default_data_dir() == repo.parent / "shared" / "datasets"


def test_missing_data_dir_or_file_mentions_the_path_and_gnaq_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GNAQ_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="GNAQ_DATA_DIR") as error:
        load_dataset("gowalla")
    assert str(tmp_path / "nowhere") in str(error.value)
    (tmp_path / "here" / "gowalla").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="GNAQ_DATA_DIR") as error:
        load_dataset("gowalla", data_dir=str(tmp_path / "here"))
    assert str(tmp_path / "here" / "gowalla" / "train.txt") in str(error.value)


def test_named_dataset_read_from_an_explicit_data_dir(tmp_path):
    _write(tmp_path / "lastfm" / "data1.txt", "1\t1\t5\r\n1\t2\t3\r\n2\t1\t1\r\n")
    _write(tmp_path / "lastfm" / "test1.txt", "2\t2\t4\r\n3\t1\t1\r\n")
    data = load_dataset("lastfm", data_dir=str(tmp_path))
    assert data.name == "lastfm" and (data.n_users, data.n_items) == (3, 2)
    assert data.user_ids == ["1", "2", "3"] and data.item_ids == ["1", "2"]  # external ids stay 1-based
    assert data.test.tolist() == [[1, 1]] and data.warnings == {"test_pairs_unseen_in_train": 1}


def test_stats_are_json_ready():
    stats = dataset_stats(load_dataset("ml-100k"))
    assert json.loads(json.dumps(stats)) == stats
    assert stats["users"] == 943 and stats["items"] == 1682 and stats["interactions"] == 100_000
    assert (stats["train"], stats["test"], stats["split"]) == (80_000, 20_000, "random-80/20 seed=0")
    assert stats["density"] == pytest.approx(100_000 / (943 * 1682))


@pytest.mark.parametrize(("name", "expected"), [
    ("gowalla", (29_858, 40_981, 810_128, 217_242)),
    ("movielens1m", (6_022, 3_043, 796_244, 99_455)),
])
def test_shared_adjacency_datasets_match_provenance(name, expected):
    _shared(name)
    data = load_dataset(name)
    assert (data.n_users, data.n_items, len(data.train), len(data.test)) == expected
    assert data.split == "official" and data.warnings == {}
    assert data.density == pytest.approx(sum(expected[2:]) / (expected[0] * expected[1]))


def test_shared_lastfm_drops_the_test_pairs_of_items_unseen_in_train():
    directory = _shared("lastfm")
    train = read_pairs(directory / "data1.txt", one_based=True)
    test = read_pairs(directory / "test1.txt", one_based=True)
    unseen = ~(np.isin(test[:, 0], train[:, 0]) & np.isin(test[:, 1], train[:, 1]))
    assert len(np.setdiff1d(test[:, 1], train[:, 1])) == 13  # PROVENANCE.md: 13 test items never in train
    data = load_dataset("lastfm")
    assert (data.n_users, data.n_items, len(data.train)) == (1_892, 4_489, 42_135)
    assert len(data.test) == 10_533 - int(unseen.sum())
    assert data.warnings == {"test_pairs_unseen_in_train": int(unseen.sum())}
    assert data.user_ids[0] == "1" and data.item_ids[-1] == "4489"


def test_timestamps_read_as_items_are_warned_about_loudly_and_recorded(tmp_path, caplog):
    path = tmp_path / "log.csv"
    path.write_text("".join(f"u{k % 7},{1_700_000_000 + k}\n" for k in range(300)))
    with caplog.at_level(logging.WARNING, logger="training.datasets"):
        data = load_dataset(str(path))
    assert data.warnings["items_nearly_one_per_interaction"] == 300
    assert "Check the item column" in caplog.text and "--item-col" in caplog.text


def test_a_minimum_rating_keeps_only_liked_rows_and_counts_the_rest(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating\n" + "".join(f"{u},{i},{(u + i) % 5 + 1}\n"
                                                        for u in range(20) for i in range(10)))
    data = load_dataset(str(path), columns=Columns(min_rating=4))
    assert data.warnings["below_min_rating"] == 120 and len(data.train) + len(data.test) == 80


def test_column_settings_are_refused_for_fixed_formats(tmp_path):
    with pytest.raises(ValueError, match="fixed format"):
        load_dataset(str(_adjacency_dir(tmp_path, "0 1\n", "0 1\n")), columns=Columns(item="x"))
