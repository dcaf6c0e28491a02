"""Requantizing a newly interacting user from the artifact alone."""

import numpy as np
import pytest
import torch

from contracts.versions import read_current
from model.foldin import FoldIn, fold_in, requantize
from model.item_foldin import norm_fit
from model.tables import FloatTable
from training.datasets import load_dataset
from training.evaluate import evaluate_ranking, pairs_to_csr


def test_folded_in_users_rank_their_held_out_items(trained):
    artifact = read_current(trained)
    items, foldin = artifact.item.dequantize(), artifact.foldin()
    data = load_dataset("ml-100k")
    n_users, n_items = len(artifact.user_ids), len(artifact.item_ids)
    seen = pairs_to_csr(artifact.train.pairs(), n_users, n_items)
    assert foldin.item_theta is not None and foldin.item_table.bits == artifact.manifest.bits
    folded = np.stack([foldin.user(seen[u].indices).dequantize()[0] for u in range(n_users)])
    relevant = pairs_to_csr(data.test, n_users, n_items)
    served = evaluate_ranking(torch.from_numpy(artifact.user.dequantize()), torch.from_numpy(items), seen, relevant)
    refolded = evaluate_ranking(torch.from_numpy(folded), torch.from_numpy(items), seen, relevant)
    # Users rebuilt only from their training items rank about as well as their trained codes, and far
    # better than chance (20 of ~1,600 unseen items: recall@20 ~ 0.012).
    assert refolded["recall@20"] > 0.6 * served["recall@20"] > 0.05


def test_requantized_node_uses_the_models_grid():
    vector = np.linspace(-1, 1, 16).astype(np.float32)
    table = requantize(vector, bits=2, clip=0.8, dim_scale=np.full(16, 2.0, dtype=np.float16))
    assert table.codes.shape == (1, 16) and table.codes.max() <= 3 and table.scale.dtype == np.float16
    assert np.corrcoef(table.dequantize()[0], vector)[0, 1] > 0.9


def test_neighbour_theta_moves_the_grid_like_training_does():
    vector = np.linspace(-1, 1, 16).astype(np.float32)
    plain = requantize(vector, bits=2, clip=0.8, dim_scale=None)
    wider = requantize(vector, bits=2, clip=0.8, dim_scale=None, theta=np.array([np.log(2.0), 0.0]))
    assert float(wider.scale[0]) == pytest.approx(2 * float(plain.scale[0]), rel=1e-3)
    foldin = FoldIn(FloatTable(np.eye(3, 16, dtype=np.float32)), np.ones(3),
                    item_theta=np.array([[0.3, 0.0], [0.1, 0.2], [9, 9]], np.float16), layers=3)
    assert foldin.neighbour_theta(np.array([0, 1, 1])) == pytest.approx([0.15, 0.075], rel=1e-3)


def test_full_precision_models_fold_in_to_float_rows():
    foldin = FoldIn(FloatTable(np.eye(3, 4, dtype=np.float32)), np.array([1.0, 4.0, 1.0]))
    row = foldin.user(np.array([1]))
    assert isinstance(row, FloatTable) and row.n_rows == 1 and row.dequantize()[0, 1] == pytest.approx(0.5)
    assert foldin.decode_user(row.row_bytes()).dequantize().tolist() == row.dequantize().tolist()


def test_fold_in_needs_known_items():
    with pytest.raises(ValueError, match="at least one"):
        fold_in(np.zeros((3, 4), np.float32), np.ones(3), np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="out of range"):
        fold_in(np.zeros((3, 4), np.float32), np.ones(3), np.array([3]))


def test_a_trained_user_is_updated_from_its_trained_vector_not_rebuilt(trained):
    artifact = read_current(trained)
    foldin, users = artifact.foldin(), artifact.user.dequantize()
    for user in range(200):
        items = artifact.train.of(user)
        new = np.setdiff1d(np.arange(5), items)[:1]
        updated = foldin.update(users[user], items, new).dequantize()[0]
        # One post nudges the trained vector (direction and scale kept), as opposed to replacing it.
        cosine = float(updated @ users[user]) / (np.linalg.norm(updated) * np.linalg.norm(users[user]))
        assert cosine > 0.9 and 0.7 < np.linalg.norm(updated) / np.linalg.norm(users[user]) < 1.3


def test_an_update_adds_the_new_items_by_the_propagation_rule():
    items = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]], np.float32)
    foldin = FoldIn(FloatTable(items), np.array([1.0, 1.0, 4.0]))
    trained = np.array([2.0, 0.0, 0.0, 1.0], np.float32)  # training learned more than the first hop (dim 3)
    updated = foldin.update(trained, np.array([0]), np.array([1, 0])).dequantize()[0]
    # n = 1 trained item, m = 1 new: (sqrt(1) * trained + s * x_1 / sqrt(1)) / sqrt(2), s = |trained| / |x_0|
    s = np.linalg.norm(trained)
    np.testing.assert_allclose(updated, (trained + s * items[1]) / np.sqrt(2), rtol=1e-6)
    unchanged = foldin.update(trained, np.array([0]), np.array([0])).dequantize()[0]
    np.testing.assert_allclose(unchanged, trained)  # nothing new: the trained vector itself


def test_a_new_item_is_folded_in_from_its_users_in_the_item_tables_form(trained):
    """Issue 20: the symmetric rule over the item's users, on the trained items' scale, quantized like them."""
    from model.tables import QuantizedTable

    artifact = read_current(trained)
    foldin = artifact.item_foldin()
    pairs = artifact.train.pairs()
    item = np.bincount(pairs[:, 1]).argmax()
    users = pairs[pairs[:, 1] == item, 0]
    direction = fold_in(artifact.user.dequantize(), artifact.arrays["user_degree"], users)
    vector = foldin.vector(users)
    assert np.dot(vector, direction) / np.linalg.norm(vector) / np.linalg.norm(direction) > 0.9999
    trained_vector = artifact.item.dequantize(np.array([item]))[0]
    assert np.dot(vector, trained_vector) / np.linalg.norm(vector) / np.linalg.norm(trained_vector) > 0.8
    assert 0.5 < np.linalg.norm(vector) / np.linalg.norm(trained_vector) < 2  # the trained items' scale
    row = foldin.item(users)
    assert isinstance(row, QuantizedTable) and row.bits == artifact.item.bits and row.scale.shape == (1,)
    assert row.dim_center is artifact.item.dim_center
    assert foldin.decode(row.row_bytes()).dequantize().tobytes() == row.dequantize().tobytes()
    assert "user_theta" in artifact.arrays  # neighbours' refined parameters correct the grid
    plain = type(foldin)(foldin.user_table, foldin.user_degree, foldin.item_table, foldin.fit, foldin.clip)
    assert plain.item(users).row_bytes() != row.row_bytes()
    with pytest.raises(ValueError, match="user index out of range"):
        foldin.vector(np.array([len(artifact.user_ids)]))


def test_the_norm_fit_is_the_same_whatever_the_slice_of_items():
    """Items are folded a slice at a time (bounded memory at a million items); the ratios must not depend on it."""
    rng = np.random.default_rng(0)
    users, items = FloatTable(rng.normal(size=(50, 8)).astype(np.float32)), \
        FloatTable(rng.normal(size=(37, 8)).astype(np.float32))
    pairs = np.unique(np.stack([rng.integers(0, 50, 400), rng.integers(0, 30, 400)], axis=1), axis=0)
    degree = np.bincount(pairs[:, 0], minlength=50).astype(np.float64)
    indptr = np.concatenate([[0], np.cumsum(degree)]).astype(np.int64)  # pairs are sorted by user
    whole = norm_fit(users, degree, indptr, pairs[:, 1], items)
    assert len(whole) > 2
    for slice_rows in (1, 5, 36):
        np.testing.assert_array_equal(norm_fit(users, degree, indptr, pairs[:, 1], items, slice_rows=slice_rows),
                                      whole)
