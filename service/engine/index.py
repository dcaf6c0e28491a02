"""Item indexes the service searches: exact inner product over every item, seen items excluded inside.

Two interchangeable kinds (``GNAQ_INDEX``), with the same ranking:

* ``float``: FAISS ``IndexIDMap2(IndexFlatIP)`` over the dequantized item vectors. Memory per item:
  ``4 d`` bytes of vector + 8 bytes of id + about 16 bytes for IDMap2's reverse map (d=64: ~280 B).
* ``codes``: scores straight from the item codes with per-query lookup tables (asymmetric distance
  computation, as product quantization does): the ``m = 8 // bits`` codes of consecutive dimensions
  form one byte-sized key, so ``q . c_i = sum_j LUT_j[key_ij]`` and
  ``x_u . x_i = o_i sum(q) + s_i (q . c_i) + x_u . mu`` with ``q = x_u * dim_scale`` and ``mu`` the
  table's mean vector (``dim_center``, zero if absent), accumulated in float64 by a compiled scan that
  keeps the top k as it goes (``code_kernel``; why numba and not FAISS fast-scan: docs/method.md).
  Memory per item: ``ceil(d / m)`` key bytes + 4 bytes of float16 scale and offset (2 bits, d=64:
  20 B), and a lookup table of ``ceil(d / m) x 256`` float64 per query.

Both exclude items by id during the search (a FAISS ``IDSelector``, or ``-inf`` before selection)
rather than over-fetching and filtering.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from model.tables import EmbeddingTable, QuantizedTable
from service.engine.code_kernel import build_keys, scan_top_k
from service.engine.faiss_build import faiss


class ItemIndex(Protocol):
    """What the recommender needs from an index."""

    kind: str
    n_items: int

    def search(self, query: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item rows by inner product with ``query`` (d,), skipping rows in ``exclude``."""
        ...

    def add(self, extra: EmbeddingTable) -> None:
        """Append ``extra``'s rows in place as items ``n_items, n_items + 1, ...``, in order."""
        ...

    def bytes_per_item(self) -> float:
        """Resident bytes per item of the index structures."""
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
        """Append ``extra``'s decoded rows as items ``n_items ..`` (FAISS adds in place)."""
        if extra.dim != self.dim:
            raise ValueError(f"cannot add items of width {extra.dim} to an index of width {self.dim}")
        vectors = np.ascontiguousarray(extra.dequantize(), dtype=np.float32)
        self._index.add_with_ids(vectors, np.arange(self.n_items, self.n_items + len(vectors), dtype=np.int64))
        self.n_items += len(vectors)

    def bytes_per_item(self) -> float:
        return 4 * self.dim + 8 + 16


class CodeIndex:
    """Compiled lookup-table scoring from the item keys and their per-node (or per-table) scale and offset."""

    kind = "codes"

    @staticmethod
    def supports(table: EmbeddingTable) -> bool:
        """Quantized with one scale and offset per row (or per table); not fp32, not segmented rows."""
        return isinstance(table, QuantizedTable) and table.segments == 1

    def __init__(self, table: QuantizedTable) -> None:
        if not self.supports(table):
            raise TypeError("the codes index needs a quantized item table with one scale and offset per row "
                            "(use GNAQ_INDEX=float for this model)")
        self.bits, self.dim = int(table.bits), table.dim
        self._per_key = 8 // self.bits  # dimensions whose codes share one byte-sized key
        self._n_keys = -(-self.dim // self._per_key)
        self._width = -(-self._n_keys // 8) * 8  # keys stored per row: whole uint64 words for the kernel
        shifts = self.bits * np.arange(self._per_key - 1, -1, -1)
        digits = (np.arange(256)[:, None] >> shifts) & ((1 << self.bits) - 1)
        self._digits = digits.T.astype(np.float64)  # (per_key, 256): the code of each dim in each key
        self._dim_scale, self._dim_center = table.dim_scale, table.dim_center
        self._ds = None if table.dim_scale is None else table.dim_scale.astype(np.float64)
        self._dc = None if table.dim_center is None else table.dim_center.astype(np.float64)
        self._rows = self._encode(table)  # (keys, scale bits, offset bits): swapped as one by ``add``

    @property
    def n_items(self) -> int:
        return int(self._rows[0].shape[0])

    def _encode(self, table: QuantizedTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keys ``(n, width)`` uint8 (zero past ``n_keys``) and float16 scale and offset as bit patterns."""
        keys = np.zeros((table.n_rows, self._width), dtype=np.uint8)
        build_keys(table.codes, self.bits, self._per_key, keys)
        scale, offset = (np.broadcast_to(p, (table.n_rows,)) if p.shape == (1,) else p
                         for p in (table.scale, table.offset))
        return keys, np.ascontiguousarray(scale).view(np.uint16), np.ascontiguousarray(offset).view(np.uint16)

    def add(self, extra: EmbeddingTable) -> None:
        """Append ``extra``'s rows (new items, rows continuing from ``n_items``): same bits and shared vectors."""
        problem = self._incompatible(extra)
        if problem:
            raise ValueError(f"cannot add these items to the codes index: {problem}")
        old, new = self._rows, self._encode(extra)
        self._rows = tuple(np.concatenate([a, b]) for a, b in zip(old, new, strict=True))

    def _incompatible(self, extra: EmbeddingTable) -> str | None:
        if not self.supports(extra):
            return "they are not a quantized table with one scale and offset per row"
        if int(extra.bits) != self.bits or extra.dim != self.dim:
            return f"they have {extra.bits} bits and width {extra.dim}, the index {self.bits} and {self.dim}"
        for name in ("dim_scale", "dim_center"):
            mine, theirs = getattr(self, f"_{name}"), getattr(extra, name)
            if (mine is None) != (theirs is None) or (mine is not None and not np.array_equal(mine, theirs)):
                return f"their {name} differs from the index's"
        return None

    def _lookup(self, query: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Per-query lookup tables ``(n_keys, 256)``, ``sum(q)`` and the centre's constant ``x . mu``."""
        x = q = np.asarray(query, dtype=np.float64)
        if self._ds is not None:
            q = q * self._ds
        padded = np.zeros(self._width * self._per_key)
        padded[:self.dim] = q
        lut = padded.reshape(self._width, self._per_key) @ self._digits  # padding keys: all-zero tables
        return lut, float(q.sum()), 0.0 if self._dc is None else float(x @ self._dc)

    def scores(self, query: np.ndarray) -> np.ndarray:
        """float64 inner products of ``query`` with every decoded item vector (numpy; for tests and tools)."""
        keys, scale, offset = self._rows
        lut, q_sum, bias = self._lookup(query)
        dot = lut[np.arange(self._width), keys].sum(axis=1)
        widen = np.float64
        return offset.view(np.float16).astype(widen) * q_sum + scale.view(np.float16).astype(widen) * dot + bias

    def search(self, query: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys, scale, offset = self._rows
        lut, q_sum, bias = self._lookup(query)
        exclude = np.unique(np.asarray(exclude, dtype=np.int64))
        k = max(0, min(k, len(keys)))
        rows, scores = np.empty(k, np.int64), np.empty(k, np.float64)
        found = scan_top_k(keys.view(np.uint64), lut.ravel(), scale, offset, q_sum, bias, exclude, k, rows,
                           scores) if k else 0
        return rows[:found], scores[:found].astype(np.float32)

    def bytes_per_item(self) -> float:
        keys, scale, offset = self._rows
        return (keys.nbytes + scale.nbytes + offset.nbytes) / max(1, len(keys))


def build_index(kind: str, items: EmbeddingTable) -> ItemIndex:
    """The configured index over an artifact's item table (``codes`` needs a quantized table)."""
    if kind == "codes":
        return CodeIndex(items)
    return FloatIndex(items.dequantize())
