"""A user subsample is a dataset of its own: the chosen users' every interaction, read back by the CSV loader."""

import sys
from pathlib import Path

import numpy as np
import pytest

from training.datasets import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from subsample import subsample  # noqa: E402


def test_half_the_users_keep_all_their_interactions_and_the_csv_loads(tmp_path):
    out = tmp_path / "half.csv"
    users, rows = subsample("ml-100k", out, 0.5, seed=0, data_dir=None)
    full = load_dataset("ml-100k")
    assert 400 < users < 543 and not out.with_suffix(".tmp").exists()
    half = load_dataset(str(out))
    assert half.n_users == users and half.n_interactions == rows
    per_user = np.bincount(np.concatenate([full.train, full.test])[:, 0], minlength=full.n_users)
    counts = {full.user_ids[u]: int(c) for u, c in enumerate(per_user)}
    kept = np.bincount(np.concatenate([half.train, half.test])[:, 0], minlength=half.n_users)
    assert all(counts[half.user_ids[u]] == kept[u] for u in range(half.n_users))
    assert subsample("ml-100k", tmp_path / "again.csv", 0.5, seed=0, data_dir=None) == (users, rows)


def test_a_fraction_outside_zero_to_one_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="--fraction must be in"):
        subsample("ml-100k", tmp_path / "none.csv", 0.0, seed=0, data_dir=None)
