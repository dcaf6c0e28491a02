"""Full-ranking evaluation: LightGCN-style Recall@K and NDCG@K with training items masked."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

# Upper bound on one score block (users x items, float32): 2^24 entries = 64 MiB.
SCORE_BLOCK_ENTRIES = 2**24


def pairs_to_csr(pairs: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary user x item matrix of ``(user, item)`` pairs."""
    data = np.ones(len(pairs), dtype=np.bool_)
    matrix = sp.csr_matrix((data, (pairs[:, 0], pairs[:, 1])), shape=(n_users, n_items))
    matrix.sum_duplicates()
    return matrix


def metrics_from_hits(hits: Tensor, n_relevant: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """Per-user Recall@K and NDCG@K from a ranked hit matrix.

    ``hits[u, r]`` is 1 when the item ranked ``r`` (0-based) for user u is a test item;
    ``n_relevant[u]`` is u's number of test items. Recall divides by all of them; the ideal DCG
    counts ``min(K, n_relevant)`` hits (binary relevance, log2 discount).
    """
    discount = 1.0 / torch.log2(torch.arange(2, hits.shape[1] + 2, dtype=torch.float64))
    ideal = torch.cumsum(discount, 0)
    hits = hits.double()
    out = {}
    for k in ks:
        found = hits[:, :k].sum(1)
        dcg = (hits[:, :k] * discount[:k]).sum(1)
        idcg = ideal[torch.clamp(n_relevant, max=k) - 1]
        out[f"recall@{k}"] = found / n_relevant
        out[f"ndcg@{k}"] = dcg / idcg
    return out


def _dense_rows(matrix: sp.csr_matrix, rows: np.ndarray, device: torch.device) -> Tensor:
    block = matrix[rows].tocoo()
    dense = torch.zeros(len(rows), matrix.shape[1], dtype=torch.bool, device=device)
    dense[torch.from_numpy(block.row).long(), torch.from_numpy(block.col).long()] = True
    return dense


@torch.no_grad()
def user_metrics(user_vectors: Tensor, item_vectors: Tensor, exclude: sp.csr_matrix, relevant: sp.csr_matrix,
                 ks: Sequence[int] = (10, 20), block_entries: int = SCORE_BLOCK_ENTRIES) -> dict[str, np.ndarray]:
    """Recall@K / NDCG@K of every user with at least one relevant item (float64, one value per such user).

    Scores are inner products of ``user_vectors`` and ``item_vectors`` over all items; the items in
    ``exclude`` (the user's training items) are masked out. Users are processed in blocks so that
    at most ``block_entries`` scores are alive at once, whatever the catalogue size.
    """
    ks = sorted(set(int(k) for k in ks))
    n_items = item_vectors.shape[0]
    if ks[0] < 1 or ks[-1] > n_items:
        raise ValueError(f"every K must lie in 1..{n_items} (number of items), got {ks}")
    device = item_vectors.device
    n_relevant_all = np.diff(relevant.indptr)
    users = np.flatnonzero(n_relevant_all > 0)
    if len(users) == 0:
        raise ValueError("no user has a relevant item: nothing to evaluate")
    block = max(1, block_entries // n_items)
    parts: dict[str, list[np.ndarray]] = {f"{name}@{k}": [] for k in ks for name in ("recall", "ndcg")}
    for start in range(0, len(users), block):
        rows = users[start:start + block]
        scores = user_vectors[torch.from_numpy(rows).to(device)] @ item_vectors.T
        scores.masked_fill_(_dense_rows(exclude, rows, device), float("-inf"))
        top = scores.topk(ks[-1], dim=1).indices
        hits = _dense_rows(relevant, rows, device).gather(1, top)
        n_relevant = torch.from_numpy(n_relevant_all[rows]).to(device)
        for name, values in metrics_from_hits(hits.cpu(), n_relevant.cpu(), ks).items():
            parts[name].append(values.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def evaluate_ranking(user_vectors: Tensor, item_vectors: Tensor, exclude: sp.csr_matrix,
                     relevant: sp.csr_matrix, ks: Sequence[int] = (10, 20),
                     block_entries: int = SCORE_BLOCK_ENTRIES) -> dict[str, float]:
    """Mean Recall@K / NDCG@K over users with at least one relevant item (``user_metrics``, averaged)."""
    return mean_metrics(user_metrics(user_vectors, item_vectors, exclude, relevant, ks, block_entries))


def mean_metrics(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Each metric's mean over the users of ``user_metrics``."""
    return {name: float(values.sum()) / len(values) for name, values in per_user.items()}
