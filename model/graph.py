"""Sparse operators of the user-item bipartite graph (never a dense N x N matrix)."""

from __future__ import annotations

import warnings

import numpy as np
import torch


class _SparseMatmul(torch.autograd.Function):
    """``matrix @ x`` for a constant symmetric sparse ``matrix``, whose backward multiplies by the matrix itself.

    PyTorch's own backward of ``torch.sparse.mm`` rebuilds the CSR transpose (a COO sort of every edge) on each
    step, which was 55% of a Gowalla training step; the graph never changes and is its own transpose.
    """

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.matrix = matrix
        return torch.sparse.mm(matrix, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, torch.sparse.mm(ctx.matrix, grad)


def sparse_matmul(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``matrix @ x`` for a constant symmetric sparse ``matrix`` (as ``normalized_adjacency`` is)."""
    return _SparseMatmul.apply(matrix, x)


def propagate_layers(adjacency: torch.Tensor, x: torch.Tensor, layers: int) -> list[torch.Tensor]:
    """``[x, A x, ..., A^L x]`` for the symmetric ``adjacency``."""
    out = [x]
    for _ in range(layers):
        out.append(sparse_matmul(adjacency, out[-1]))
    return out


def layer_mean(adjacency: torch.Tensor, x: torch.Tensor, layers: int) -> torch.Tensor:
    """``1/(L+1) * sum_k A^k x``: LightGCN's propagation, of embeddings or of any per-node signal."""
    out = propagate_layers(adjacency, x, layers)
    total = out[0]
    for h in out[1:]:
        total = total + h
    return total / (layers + 1)


def _coo_to_csr(matrix: torch.Tensor) -> torch.Tensor:
    """CSR with int32 indices where they fit: with int64 ones, every product first copies the column indices to
    int32 for MKL (a pass over every edge, twice per layer and step)."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta": spmm with CSR is what we rely on
        warnings.simplefilter("ignore", UserWarning)
        csr = matrix.coalesce().to_sparse_csr()
    if max(csr._nnz(), *csr.shape) >= 2**31:
        return csr
    return torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape,
                                   check_invariants=True)


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
