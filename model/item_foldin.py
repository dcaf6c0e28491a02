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
from scipy import sparse

from model.foldin import fold_in, neighbour_theta, requantize
from model.tables import EmbeddingTable, FloatTable, QuantizedTable


def norm_fit(user_table: EmbeddingTable, user_degree: np.ndarray, indptr: np.ndarray, items: np.ndarray,
             item_table: EmbeddingTable, *, slice_rows: int = 1 << 16) -> np.ndarray:
    """Median ``(x_i . f_i) / |f_i|^2`` of the trained items by ``floor(log2 |U_i|)`` (training items per user in
    CSR form: user ``u``'s are ``items[indptr[u]:indptr[u + 1]]``); a bucket with no item takes its nearest filled
    one's, and 1 when nothing is known.

    Runs at every model load, so its memory is bounded: the graph is transposed once in CSR form (8 bytes an
    interaction, not the 40 of sorted int64 pairs), and items are folded and decoded ``slice_rows`` at a time
    (at a million items each whole-table temporary would be as large as a float32 item table)."""
    n_items = item_table.n_rows
    if not len(items):
        return np.ones(1)
    count = np.bincount(items, minlength=n_items)
    user_weight = (1.0 / np.sqrt(np.maximum(user_degree, 1.0))).astype(np.float32)
    weight = np.repeat(user_weight, np.diff(indptr)) / np.sqrt(count[items]).astype(np.float32)
    by_item = sparse.csr_matrix((weight, items, indptr), shape=(len(indptr) - 1, n_items)).T.tocsr()
    del weight
    users = np.ascontiguousarray(user_table.dequantize(), np.float32)
    ratio_of = np.empty(n_items)
    for start in range(0, n_items, slice_rows):
        stop = min(start + slice_rows, n_items)
        folded = by_item[start:stop] @ users
        decoded = item_table.dequantize(np.arange(start, stop))
        ratio_of[start:stop] = (decoded * folded).sum(axis=1) / np.maximum((folded * folded).sum(axis=1), 1e-24)
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
