"""Fold in an item that first interacts after training: its vector from its users, quantized like its peers.

The propagation rule is symmetric: an item's first-hop view is ``z_i = sum_u x_u / sqrt(|U_i| d_u)`` over the
users who interacted with it (``model.foldin.fold_in`` with the roles swapped), built from the users' served
vectors. Unlike a user's vector (a query, where only the direction matters), an item's norm competes with every
trained item's in other users' rankings, so the vector is put on the trained items' scale: the same rule applied
to every trained item gives ``f_i``, and a new item's vector is scaled by the median least-squares scale
``(x_i . f_i) / |f_i|^2`` (the ``s`` minimising ``|x_i - s f_i|``) of the trained items with about as many users
(same ``floor(log2 |U_i|)``; the relation is far from a power law: it falls, then rises again, as the model fits
rare items more loosely). Matching the norm instead over-promotes new items: a fold-in is more aligned with its
users than a trained vector is (docs/method.md, "Items that interact after training").

The row is quantized node-aware exactly as the trained item rows are stored, so it can be appended to the item
index (float or codes): the item table's bits, per-dimension scale and mean vector; a grid from the row's own mean
and spread (a), corrected by its neighbours' refined parameters (b): ``L/(L+1)`` times the mean refined ``theta``
of its users (``user_theta``, stored by GNAQ training; without it, no correction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.foldin import fold_in, neighbour_theta, requantize
from model.tables import EmbeddingTable, FloatTable, QuantizedTable


def norm_fit(user_vectors: np.ndarray, user_degree: np.ndarray, pairs: np.ndarray,
             item_vectors: np.ndarray) -> np.ndarray:
    """Median ``(x_i . f_i) / |f_i|^2`` of the trained items by ``floor(log2 |U_i|)`` (``pairs``: (user, item)); a
    bucket with no item takes its nearest filled one's, and 1 when nothing is known."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    n_items = len(item_vectors)
    count = np.bincount(pairs[:, 1], minlength=n_items).astype(np.float64)
    if not len(pairs):
        return np.ones(1)
    weight = 1.0 / np.sqrt(count[pairs[:, 1]] * np.maximum(user_degree[pairs[:, 0]], 1.0))
    adjacency = torch.sparse_coo_tensor(torch.from_numpy(pairs[:, ::-1].T.copy()),
                                        torch.from_numpy(weight.astype(np.float32)), (n_items, len(user_vectors)),
                                        check_invariants=False)
    folded = torch.sparse.mm(adjacency, torch.from_numpy(np.ascontiguousarray(user_vectors, np.float32))).numpy()
    ratio_of = (item_vectors * folded).sum(axis=1) / np.maximum((folded * folded).sum(axis=1), 1e-24)
    keep = (count > 0) & np.isfinite(ratio_of)
    if not keep.any():
        return np.ones(1)
    bucket = np.floor(np.log2(count[keep])).astype(np.int64)
    filled = np.unique(bucket)
    medians = {b: max(float(np.median(ratio_of[keep][bucket == b])), 1e-6) for b in filled}
    return np.array([medians[filled[np.abs(filled - b).argmin()]] for b in range(int(filled.max()) + 1)])


@dataclass(frozen=True, eq=False)
class ItemFoldIn:
    """Everything needed to build one new item's served row from the users who interacted with it.

    ``user_table``: the served users; ``user_degree``: their degrees in the training graph; ``item_table``: the
    served items (the new row takes their form); ``fit``: ``norm_fit``'s ratios; ``user_theta``: GNAQ's
    refined ``(rho, delta)`` per user, if stored; ``clip``, ``layers``: the quantizer's step and ``L``.
    """

    user_table: EmbeddingTable
    user_degree: np.ndarray
    item_table: EmbeddingTable
    fit: np.ndarray | None = None
    clip: float = 0.8
    user_theta: np.ndarray | None = None
    layers: int = 0

    def vector(self, users: np.ndarray) -> np.ndarray:
        """float32 vector of an item that ``users`` (rows of the user table) interacted with, on the items' scale."""
        users = np.unique(np.asarray(users, dtype=np.int64))
        if users.size and (users.min() < 0 or users.max() >= len(self.user_degree)):
            raise ValueError(f"user index out of range 0..{len(self.user_degree) - 1}")
        folded = fold_in(self.user_table.dequantize(users), self.user_degree[users], np.arange(len(users)))
        scale = 1.0 if self.fit is None else self.fit[min(int(np.log2(len(users))), len(self.fit) - 1)]
        return (folded * scale).astype(np.float32)

    def item(self, users: np.ndarray) -> EmbeddingTable:
        """The item's one-row table in the item table's stored form (float32 for fp32 or segmented rows)."""
        vector, table = self.vector(users), self.item_table
        if not isinstance(table, QuantizedTable) or table.segments != 1:
            return FloatTable(vector.reshape(1, -1))
        center = table.dim_center
        own = vector if center is None else vector - center.astype(np.float32)
        row = requantize(own, bits=int(table.bits), clip=self.clip, dim_scale=table.dim_scale,
                         theta=neighbour_theta(self.user_theta, users, self.layers))
        return QuantizedTable(row.codes, row.scale, row.offset, row.bits, row.dim_scale, center)

    def decode(self, payload: bytes) -> EmbeddingTable:
        """An item row from the bytes of ``item(...).row_bytes()``: the table's shared vectors are added back."""
        table = self.item_table
        if not isinstance(table, QuantizedTable) or table.segments != 1:
            return FloatTable.from_row_bytes(payload, table.dim)
        row = QuantizedTable.from_row_bytes(payload, bits=int(table.bits), dim=table.dim, dim_scale=table.dim_scale)
        return QuantizedTable(row.codes, row.scale, row.offset, row.bits, row.dim_scale, table.dim_center)
