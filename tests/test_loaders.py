"""The format parsers read every documented variant and name file and line for anything they cannot read."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from training.datasets import default_data_dir
from training.loaders import Columns, DatasetFormatError, read_adjacency_lists, read_pairs, read_table

GOWALLA_TRAIN = default_data_dir() / "gowalla" / "train.txt"


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode())
    return path


def _pairs(reader, path: Path) -> list[list[int]]:
    pairs = reader(path)
    assert pairs.dtype == np.int64 and pairs.ndim == 2 and pairs.shape[1] == 2
    return pairs.tolist()


def test_adjacency_lists_keep_item_order_and_accept_lone_users_blank_lines_and_crlf(tmp_path):
    path = _write(tmp_path, "train.txt", "0 5 2 9\r\n1\r\n\r\n2\t3  4\n  \n7 1\n")
    assert _pairs(read_adjacency_lists, path) == [[0, 5], [0, 2], [0, 9], [2, 3], [2, 4], [7, 1]]


def test_adjacency_lists_of_users_without_items_give_no_pairs(tmp_path):
    assert read_adjacency_lists(_write(tmp_path, "test.txt", "0\n1\n")).shape == (0, 2)


def test_pairs_shift_one_based_ids_and_ignore_the_weight(tmp_path):
    path = _write(tmp_path, "data1.txt", "1\t2\t10\r\n3 4\r\n\r\n2\t1\t7\r\n")
    assert _pairs(lambda p: read_pairs(p, one_based=True), path) == [[0, 1], [2, 3], [1, 0]]
    assert _pairs(lambda p: read_pairs(p, one_based=False), path) == [[1, 2], [3, 4], [2, 1]]


def test_zero_is_a_valid_id_when_zero_based(tmp_path):
    assert read_pairs(_write(tmp_path, "p.txt", "0 0\n"), one_based=False).tolist() == [[0, 0]]


def test_recbole_atomic_file_columns_are_found_by_name(tmp_path):
    path = _write(tmp_path, "x.inter", "rating:float\titem_id:token\ttimestamp:float\tuser_id:token\n"
                                       "4\tb\t20\ta\n3\tc\t10\ta\n")
    table = read_table(path)
    assert (table.users, table.items) == (["a", "a"], ["b", "c"])
    assert table.timestamps.dtype == np.float64 and table.timestamps.tolist() == [20.0, 10.0]


def test_atomic_file_without_timestamp_column(tmp_path):
    table = read_table(_write(tmp_path, "x.inter", "user_id:token\titem_id:token\n1\t2\n"))
    assert (table.users, table.items, table.timestamps) == (["1"], ["2"], None)


@pytest.mark.parametrize(("name", "text"), [
    ("log.csv", "user,item,timestamp\nalice,x 1,5\nbob,\"y,2\",6\n"),
    ("log.csv", "user_id,item_id,timestamp\r\nalice,x 1,5\r\nbob,\"y,2\",6\r\n"),
    ("log.tsv", "alice\tx 1\t5\nbob\ty,2\t6\n"),
    ("log.txt", "alice,x 1,5\n\nbob,\"y,2\",6\n"),
])
def test_generic_tables_sniff_the_delimiter_and_an_optional_header(tmp_path, name, text):
    table = read_table(_write(tmp_path, name, text))
    assert (table.users, table.items) == (["alice", "bob"], ["x 1", "y,2"])
    assert table.timestamps.tolist() == [5.0, 6.0]


def test_generic_table_without_timestamps(tmp_path):
    table = read_table(_write(tmp_path, "log.csv", "u1,i1\nu2,i2\n"))
    assert (table.users, table.items, table.timestamps) == (["u1", "u2"], ["i1", "i2"], None)


@pytest.mark.parametrize(("reader", "name", "text", "line", "fragment"), [
    (read_adjacency_lists, "train.txt", "0 1 2\n1 x 3\n", 2, "id 'x' is not an integer"),
    (read_adjacency_lists, "train.txt", "0 1 2\n\n1 3 2.5\n", 3, "id '2.5' is not an integer"),
    (read_adjacency_lists, "train.txt", "0 1\n1 -3\n", 2, "negative"),
    (read_adjacency_lists, "train.txt", "0 1\n1 99999999999999999999999\n", 2, "not an integer"),
    (read_adjacency_lists, "train.txt", b"0 1\n1 \xff\n", 2, "not UTF-8"),
    (lambda p: read_pairs(p, one_based=True), "data1.txt", "1\t2\t1\n3\n", 2, "user item .weight.', found 1 fields"),
    (lambda p: read_pairs(p, one_based=True), "data1.txt", "1\t2\t1\n3\t4\t5\t6\n", 2, "found 4 fields"),
    (lambda p: read_pairs(p, one_based=True), "data1.txt", "1\t2\n4\t0\n", 2, "1-based"),
    (lambda p: read_pairs(p, one_based=False), "data1.txt", "1\t2\nu3\t4\n", 2, "id 'u3' is not an integer"),
    (read_table, "log.csv", "user,item,timestamp\nu1,i1,5\nu2,i2,yesterday\n", 3, "timestamp 'yesterday'"),
    (read_table, "log.csv", "u1,i1,5\nu2,i2,nan\n", 2, "timestamp 'nan'"),
    (read_table, "log.csv", "user,item\nu1,i1\n\nu2\n", 4, "expected at least 2 fields"),
    (read_table, "log.csv", "u1,i1,5\nu2,i2\n", 2, "expected at least 3 fields"),
    (read_table, "log.csv", "u1,i1\n ,i2\n", 2, "empty user or item id"),
    (read_table, "x.inter", "1\t2\t3\n", 1, "expected a header naming user_id and item_id"),
])
def test_malformed_lines_name_file_and_line(tmp_path, reader, name, text, line, fragment):
    path = _write(tmp_path, name, text)
    with pytest.raises(DatasetFormatError, match=fragment) as error:
        reader(path)
    assert error.value.line == line and error.value.path == path
    assert str(error.value).startswith(f"{path}:{line}: ")


READERS = [read_adjacency_lists, lambda p: read_pairs(p, one_based=True), read_table]


@pytest.mark.parametrize("reader", READERS)
def test_missing_file(tmp_path, reader):
    path = tmp_path / "absent.csv"
    with pytest.raises(DatasetFormatError, match="file not found") as error:
        reader(path)
    assert error.value.line is None and str(error.value).startswith(f"{path}: ")


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("text", ["", "\n \n\t\n"])
def test_empty_file(tmp_path, reader, text):
    path = _write(tmp_path, "empty.csv", text)
    with pytest.raises(DatasetFormatError, match="empty file") as error:
        reader(path)
    assert str(error.value).startswith(f"{path}: ")


def test_table_with_only_a_header_is_empty(tmp_path):
    with pytest.raises(DatasetFormatError, match="empty file"):
        read_table(_write(tmp_path, "log.csv", "user,item,timestamp\n"))


def test_format_error_is_a_value_error():
    assert issubclass(DatasetFormatError, ValueError)


def test_embedded_ml100k_atomic_file():
    package = Path(next(iter(importlib.util.find_spec("recbole").submodule_search_locations)))
    table = read_table(package / "dataset_example" / "ml-100k" / "ml-100k.inter")
    assert len(table.users) == len(table.items) == len(table.timestamps) == 100_000
    assert (table.users[0], table.items[0], table.timestamps[0]) == ("196", "242", 881250949.0)


def test_gowalla_train_is_read_whole():
    if not GOWALLA_TRAIN.is_file():
        pytest.skip(f"shared datasets not present ({GOWALLA_TRAIN})")
    pairs = read_adjacency_lists(GOWALLA_TRAIN)
    assert pairs.shape == (810_128, 2) and pairs.max(axis=0).tolist() == [29_857, 40_980]


def test_a_movielens_style_header_is_read_by_name_and_its_rating_kept_out_of_the_timestamps(tmp_path):
    path = _write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,100\n1,11,2.5,101\n2,10,5,99\n")
    table = read_table(path)
    assert (table.users, table.items, table.timestamps.tolist()) == (["1", "1", "2"], ["10", "11", "10"],
                                                                      [100.0, 101.0, 99.0])
    liked = read_table(path, Columns(min_rating=3.5))
    assert (liked.users, liked.items, liked.below_min_rating) == (["1", "2"], ["10", "10"], 1)


def test_a_header_without_an_item_column_is_refused_with_the_flag_that_fixes_it(tmp_path):
    path = _write(tmp_path, "log.csv", "user,timestamp\n1,1700000000\n2,1700000001\n")
    with pytest.raises(DatasetFormatError, match=r"header names no item column \(columns: user, timestamp\).*"
                                                 r"--item-col") as error:
        read_table(path)
    assert error.value.line == 1


@pytest.mark.parametrize(("text", "columns", "expected"), [
    ("who,what,when\na,x,5\n", Columns(user="who", item="what", time="when"), (["a"], ["x"], [5.0])),
    ("a;1,x,5,9\n", Columns(user="0", item="1", time="3"), (["a;1"], ["x"], [9.0])),
    ("x,a,3\n", Columns(user="1", item="0"), (["a"], ["x"], None)),
])
def test_columns_are_taken_from_the_settings_by_name_or_position(tmp_path, text, columns, expected):
    table = read_table(_write(tmp_path, "log.csv", text), columns)
    stamps = None if table.timestamps is None else table.timestamps.tolist()
    assert (table.users, table.items, stamps) == expected


@pytest.mark.parametrize(("text", "columns", "fragment"), [
    ("a,x,4,100\n", Columns(), r"4 fields and no header row.*--user-col, --item-col, --time-col"),
    ("a,x\n", Columns(item="movieId"), r"--item-col 'movieId' names a column, but the file has no header"),
    ("user,item\na,x\n", Columns(item="movieId"), r"--item-col 'movieId': no such column \(columns: user, item\)"),
    ("user,item\na,x\n", Columns(min_rating=3), r"--min-rating needs a rating column"),
    ("user,item,rating\na,x,good\n", Columns(min_rating=3), r"rating 'good' is not a finite number"),
])
def test_column_settings_that_cannot_apply_are_refused(tmp_path, text, columns, fragment):
    with pytest.raises(DatasetFormatError, match=fragment):
        read_table(_write(tmp_path, "log.csv", text), columns)
