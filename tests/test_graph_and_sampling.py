"""Sparse graph operators against their dense definitions; negatives never hit training items."""

import numpy as np
import torch

from model.graph import layer_mean, normalized_adjacency, sparse_matmul
from training.sampling import NegativeSampler

PAIRS = np.array([[0, 0], [0, 1], [1, 1], [2, 2]])  # 3 users, 4 items (item 3 isolated)


def _dense_adjacency() -> np.ndarray:
    a = np.zeros((7, 7))
    for u, i in PAIRS:
        a[u, 3 + i] = a[3 + i, u] = 1
    return a


def test_symmetric_normalisation_matches_dense_formula():
    a = _dense_adjacency()
    degree = a.sum(1)
    inv = np.zeros_like(degree)
    inv[degree > 0] = degree[degree > 0] ** -0.5
    expected = inv[:, None] * a * inv[None, :]
    sparse = normalized_adjacency(PAIRS, 3, 4)
    assert sparse.layout == torch.sparse_csr
    assert sparse.crow_indices().dtype == sparse.col_indices().dtype == torch.int32  # no int64 -> int32 copy a product
    np.testing.assert_allclose(sparse.to_dense().numpy(), expected, rtol=1e-6)


def test_sparse_matmul_and_layer_mean_gradients_match_dense_autograd():
    """The hand-written backward (the symmetric matrix as its own transpose) equals autograd through the dense
    matrix, for one product and for LightGCN's layer mean."""
    matrix = normalized_adjacency(PAIRS, 3, 4)
    dense_matrix = matrix.to_dense()
    x = torch.randn(7, 5, dtype=torch.float32)
    weights = torch.randn(7, 5)
    for ours_fn, dense_fn in ((lambda v: sparse_matmul(matrix, v), lambda v: dense_matrix @ v),
                              (lambda v: layer_mean(matrix, v, 3),
                               lambda v: sum(torch.linalg.matrix_power(dense_matrix, k) @ v for k in range(4)) / 4)):
        ours = x.clone().requires_grad_()
        (ours_fn(ours) * weights).sum().backward()
        dense = x.clone().requires_grad_()
        (dense_fn(dense) * weights).sum().backward()
        np.testing.assert_allclose(ours.grad.numpy(), dense.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_negative_sampler_avoids_training_items():
    rng = np.random.default_rng(0)
    pairs = np.stack([rng.integers(0, 20, 400), rng.integers(0, 15, 400)], 1)
    sampler = NegativeSampler(pairs, 15, rng)
    users = np.repeat(np.arange(20), 50)
    seen = set(map(tuple, pairs.tolist()))
    for per_user in (1, 4):
        negatives = sampler.sample(users, per_user)
        assert negatives.shape == (len(users), per_user)
        assert not any((u, i) in seen for u, row in zip(users.tolist(), negatives.tolist(), strict=True) for i in row)
