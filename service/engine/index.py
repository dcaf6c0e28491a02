"""Item indexes the service searches: exact inner product over every item, seen items excluded inside.

Two interchangeable kinds (``GNAQ_INDEX``), with the same ranking:

* ``float``: FAISS ``IndexIDMap2(IndexFlatIP)`` over the dequantized item vectors. Memory per item:
  ``4 d`` bytes of vector + 8 bytes of id + about 16 bytes for IDMap2's reverse map (d=64: ~280 B).
* ``codes``: scores straight from the item codes with per-query lookup tables (asymmetric distance
  computation, as product quantization does): the ``m = 8 // bits`` codes of consecutive dimensions
  form one byte-sized key, so ``q . c_i = sum_j LUT_j[key_ij]`` and
  ``x_u . x_i = o_i sum(q) + s_i (q . c_i) + x_u . mu`` with ``q = x_u * dim_scale`` and ``mu`` the
  table's mean vector (``dim_center``, zero if absent), accumulated in float64.
  Memory per item: ``ceil(d / m)`` key bytes + 4 bytes of float16 scale and offset (2 bits, d=64:
  20 B), and a lookup table of ``ceil(d / m) x 256`` floats per query.

Both exclude items by id during the search (a FAISS ``IDSelector``, or ``-inf`` before selection)
rather than over-fetching and filtering.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from model.tables import EmbeddingTable, QuantizedTable
from service.engine.faiss_build import faiss


class ItemIndex(Protocol):
    """What the recommender needs from an index."""

    kind: str
    n_items: int

    def search(self, query: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item rows by inner product with ``query`` (d,), skipping rows in ``exclude``."""
        ...

    def bytes_per_item(self) -> float:
        """Resident bytes per item of the index structures."""
        ...

    def add(self, extra: EmbeddingTable) -> None:
        """Append ``extra``'s rows in place, as rows ``n_items, n_items + 1, ...`` (items folded in later)."""
        ...


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the ``k`` largest finite scores, best first (ties by row id, as FAISS breaks them)."""
    k = min(k, int(np.isfinite(scores).sum()))
    if k == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    part = np.argpartition(-scores, k - 1)[:k]
    order = np.lexsort((part, -scores[part]))
    rows = part[order]
    return rows.astype(np.int64), scores[rows].astype(np.float32)


class FloatIndex:
    """FAISS exact inner-product index over the dequantized item vectors, ids = item rows."""

    kind = "float"

    def __init__(self, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.n_items, self.dim = vectors.shape
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        self._index.add_with_ids(vectors, np.arange(self.n_items, dtype=np.int64))

    def search(self, query: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.n_items - len(np.unique(exclude)))
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        params = None
        if len(exclude):
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.asarray(exclude, dtype=np.int64)))
            params = faiss.SearchParameters(sel=selector)
        scores, rows = self._index.search(np.asarray(query, dtype=np.float32).reshape(1, -1), k, params=params)
        keep = rows[0] >= 0
        return rows[0][keep], scores[0][keep]

    def add(self, extra: EmbeddingTable) -> None:
        vectors = np.ascontiguousarray(extra.dequantize(), dtype=np.float32)
        self._index.add_with_ids(vectors, np.arange(self.n_items, self.n_items + len(vectors), dtype=np.int64))
        self.n_items += len(vectors)

    def bytes_per_item(self) -> float:
        return 4 * self.dim + 8 + 16


class CodeIndex:
    """Lookup-table scoring from the item codes and their per-node (or per-table) scale and offset."""

    kind = "codes"

    @staticmethod
    def supports(table: EmbeddingTable) -> bool:
        """Quantized with one scale and offset per row (or per table); not fp32, not segmented rows."""
        return isinstance(table, QuantizedTable) and table.segments == 1

    def __init__(self, table: QuantizedTable) -> None:
        if not self.supports(table):
            raise TypeError("the codes index needs a quantized item table with one scale and offset per row "
                            "(use GNAQ_INDEX=float for this model)")
        bits, (self.n_items, self.dim) = int(table.bits), table.codes.shape
        self._bits, self._per_key = bits, 8 // bits  # dimensions whose codes share one byte-sized key
        self._n_keys = -(-self.dim // self._per_key)
        self._keys = self._pack(table.codes)  # (n_keys, n_items): one row per table
        shifts = bits * np.arange(self._per_key - 1, -1, -1, dtype=np.int64)
        digits = (np.arange(256)[:, None] >> shifts) & ((1 << bits) - 1)
        self._digits = digits.T.astype(np.float64)  # (per_key, 256): the code of each dim in each key
        self._scale, self._offset = table.scale, table.offset  # float16, widened exactly when scoring
        self._dim_scale = None if table.dim_scale is None else table.dim_scale.astype(np.float64)
        self._dim_center = None if table.dim_center is None else table.dim_center.astype(np.float64)

    def _pack(self, codes: np.ndarray) -> np.ndarray:
        """``(n_keys, n)`` uint8 keys of ``(n, dim)`` codes: ``per_key`` consecutive codes per byte."""
        padded = np.zeros((len(codes), self._n_keys * self._per_key), dtype=np.uint16)
        padded[:, :self.dim] = codes
        shifts = self._bits * np.arange(self._per_key - 1, -1, -1, dtype=np.uint16)
        keys = (padded.reshape(len(codes), self._n_keys, self._per_key) << shifts).sum(axis=2)
        return np.ascontiguousarray(keys.T.astype(np.uint8))

    def add(self, extra: EmbeddingTable) -> None:
        if not (self.supports(extra) and extra.bits == self._bits and extra.dim == self.dim):
            raise TypeError(f"rows added to a {self._bits}-bit codes index must be {self._bits}-bit codes of width "
                            f"{self.dim} with one scale and offset each")
        n, old = extra.n_rows, (self.n_items,)  # per-table parameters become per-row ones
        self._keys = np.ascontiguousarray(np.concatenate([self._keys, self._pack(extra.codes)], axis=1))
        self._scale = np.concatenate([np.broadcast_to(self._scale, old), np.broadcast_to(extra.scale, (n,))])
        self._offset = np.concatenate([np.broadcast_to(self._offset, old), np.broadcast_to(extra.offset, (n,))])
        self.n_items += n

    def scores(self, query: np.ndarray) -> np.ndarray:
        """float64 inner products of ``query`` with every decoded item vector."""
        x = q = np.asarray(query, dtype=np.float64)
        if self._dim_scale is not None:
            q = q * self._dim_scale
        padded = np.zeros(self._n_keys * self._per_key)
        padded[:self.dim] = q
        lut = padded.reshape(self._n_keys, self._per_key) @ self._digits  # (n_keys, 256)
        dot, gathered = np.zeros(self.n_items), np.empty(self.n_items)
        for table, keys in zip(lut, self._keys, strict=True):
            np.add(dot, np.take(table, keys, out=gathered), out=dot)  # take: ~1.5x faster than table[keys]
        scores = np.multiply(self._offset, q.sum(), dtype=np.float64) + np.multiply(self._scale, dot, dtype=np.float64)
        return scores if self._dim_center is None else scores + x @ self._dim_center  # the same for every item

    def search(self, query: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = self.scores(query)
        scores[np.asarray(exclude, dtype=np.int64)] = -np.inf
        return _top_k(scores, k)

    def bytes_per_item(self) -> float:
        return self._n_keys + (self._scale.nbytes + self._offset.nbytes) / self.n_items


def build_index(kind: str, items: EmbeddingTable) -> ItemIndex:
    """The configured index over an artifact's item table (``codes`` needs a quantized table)."""
    if kind == "codes":
        return CodeIndex(items)
    return FloatIndex(items.dequantize())
