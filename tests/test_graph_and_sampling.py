"""Sparse graph operators against their dense definitions; negatives never hit training items."""

import numpy as np
import torch

from model.graph import csr_transpose, mean_adjacency, node_degrees, normalized_adjacency, sparse_matmul
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
    np.testing.assert_allclose(sparse.to_dense().numpy(), expected, rtol=1e-6)


def test_mean_operator_is_row_stochastic_on_connected_nodes():
    dense = mean_adjacency(PAIRS, 3, 4).to_dense().numpy()
    sums = dense.sum(1)
    connected = node_degrees(PAIRS, 3, 4) > 0
    np.testing.assert_allclose(sums[connected], 1.0, rtol=1e-6)
    assert sums[~connected].tolist() == [0.0]


def test_sparse_matmul_gradients_match_dense_autograd():
    """The hand-written backward (prebuilt transpose) equals autograd through the dense matrix."""
    x = torch.randn(7, 5, dtype=torch.float32)
    weights = torch.randn(7, 5)
    for matrix, transpose in ((normalized_adjacency(PAIRS, 3, 4), None),
                              (mean_adjacency(PAIRS, 3, 4), csr_transpose(mean_adjacency(PAIRS, 3, 4)))):
        ours = x.clone().requires_grad_()
        (sparse_matmul(matrix, ours, transpose) * weights).sum().backward()
        dense = x.clone().requires_grad_()
        (matrix.to_dense() @ dense * weights).sum().backward()
        np.testing.assert_allclose(ours.grad.numpy(), dense.grad.numpy(), rtol=1e-5, atol=1e-6)
    assert csr_transpose(mean_adjacency(PAIRS, 3, 4)).layout == torch.sparse_csr


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
