"""Sparse operators of the user-item bipartite graph (never a dense N x N matrix)."""

from __future__ import annotations

import warnings

import numpy as np
import torch


class _SparseMatmul(torch.autograd.Function):
    """``matrix @ x`` whose backward multiplies by a transpose given up front.

    PyTorch's own backward of ``torch.sparse.mm`` rebuilds the CSR transpose (a COO sort of every edge) on each
    step, which was 55% of a Gowalla training step; the graph never changes, so its transpose is built once.
    """

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, transpose: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.transpose = transpose
        return torch.sparse.mm(matrix, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, torch.sparse.mm(ctx.transpose, grad)


def sparse_matmul(matrix: torch.Tensor, x: torch.Tensor, transpose: torch.Tensor | None = None) -> torch.Tensor:
    """``matrix @ x`` for a constant sparse ``matrix``; ``transpose`` defaults to ``matrix`` (symmetric)."""
    return _SparseMatmul.apply(matrix, matrix if transpose is None else transpose, x)


def _coo_to_csr(matrix: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": spmm with CSR is what we rely on
        warnings.simplefilter("ignore", UserWarning)
        return matrix.coalesce().to_sparse_csr()


def csr_transpose(matrix: torch.Tensor) -> torch.Tensor:
    """The transpose of a sparse CSR matrix, as CSR (built once for ``sparse_matmul``'s backward)."""
    return _coo_to_csr(matrix.to_sparse_coo().t())


def _bipartite_edges(train_pairs: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Both directions of every user-item edge, items offset by ``n_users``."""
    users = np.asarray(train_pairs[:, 0], dtype=np.int64)
    items = np.asarray(train_pairs[:, 1], dtype=np.int64) + n_users
    return np.concatenate([users, items]), np.concatenate([items, users])


def node_degrees(train_pairs: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
    """Degree of every node (users first, then items) in the training graph."""
    rows, _ = _bipartite_edges(train_pairs, n_users)
    return np.bincount(rows, minlength=n_users + n_items).astype(np.float64)


def _sparse(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, size: int,
            device: torch.device | str) -> torch.Tensor:
    index = torch.from_numpy(np.stack([rows, cols]))
    matrix = torch.sparse_coo_tensor(index, torch.from_numpy(values.astype(np.float32)), (size, size),
                                     check_invariants=True)
    return _coo_to_csr(matrix).to(device)


def normalized_adjacency(train_pairs: np.ndarray, n_users: int, n_items: int,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """LightGCN's symmetric normalisation ``D^-1/2 A D^-1/2`` as a sparse CSR tensor.

    Isolated nodes (no training edge) get an empty row, so their propagated embedding is zero
    beyond layer 0 instead of NaN.
    """
    rows, cols = _bipartite_edges(train_pairs, n_users)
    degree = node_degrees(train_pairs, n_users, n_items)
    inv_sqrt = np.zeros_like(degree)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    return _sparse(rows, cols, inv_sqrt[rows] * inv_sqrt[cols], n_users + n_items, device)


def mean_adjacency(train_pairs: np.ndarray, n_users: int, n_items: int,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Row-stochastic ``D^-1 A``: averages over neighbours and keeps a constant signal constant.

    GNAQ refines quantization parameters with it; unlike the symmetric operator it does not rescale
    a parameter by the degrees of the nodes it passes through.
    """
    rows, cols = _bipartite_edges(train_pairs, n_users)
    degree = node_degrees(train_pairs, n_users, n_items)
    return _sparse(rows, cols, 1.0 / degree[rows], n_users + n_items, device)
