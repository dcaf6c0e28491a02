"""Embedding tables as they are stored and served: float32 rows, or uint8 codes plus float16 scale/offset.

Both kinds offer the same surface (``EmbeddingTable``): their size, the float32 vectors they decode to, the
bytes they occupy once stored, and the byte form of one row (what the service keeps per requantized user).
``QuantizedTable.dequantize`` is the single decoding function shared by offline evaluation and the service,
so that the scores a model was selected on are exactly the scores it serves.

Quantized parameters are per node ``(N,)``, per table ``(1,)``, or per node and segment ``(N, S)``: the row is
then ``S`` equal consecutive segments, each with its own scale and offset (BiGeaR-style per-layer codes, where a
served row is the concatenation of ``S = L + 1`` layers' binarized vectors).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from model.packing import MAX_BITS, pack_codes, packed_size, unpack_codes


class EmbeddingTable(ABC):
    """One side (users or items) of a served model: ``n_rows`` vectors of width ``dim``."""

    kind: ClassVar[str]  # "float32" or "quantized": how the artifact stores it

    @property
    @abstractmethod
    def n_rows(self) -> int:
        """Number of nodes (rows) in the table."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Width of a served row."""

    @property
    @abstractmethod
    def stored_bytes(self) -> int:
        """Bytes the table's values and parameters occupy in an artifact."""

    @abstractmethod
    def dequantize(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Float32 vectors of ``rows`` (all rows if None), exactly as the service scores them."""

    @abstractmethod
    def row_bytes(self) -> bytes:
        """The compact byte form of a one-row table (a requantized node, kept by the service)."""


@dataclass(frozen=True, eq=False)
class FloatTable(EmbeddingTable):
    """Full-precision rows (the fp32 model), ``(N, d)`` float32. Not copied; callers must not mutate it."""

    vectors: np.ndarray
    kind: ClassVar[str] = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.vectors, np.ndarray) or self.vectors.dtype != np.float32 or self.vectors.ndim != 2:
            raise TypeError(f"embeddings must be a 2-D float32 array, got {_describe(self.vectors)}")

    @property
    def n_rows(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def stored_bytes(self) -> int:
        return int(self.vectors.nbytes)

    def dequantize(self, rows: np.ndarray | None = None) -> np.ndarray:
        return self.vectors if rows is None else self.vectors[rows]

    def row_bytes(self) -> bytes:
        _check_one_row(self.n_rows)
        return self.vectors.tobytes()

    @classmethod
    def from_row_bytes(cls, payload: bytes, dim: int) -> FloatTable:
        """Inverse of ``row_bytes`` for rows of width ``dim``."""
        if len(payload) != 4 * dim:
            raise ValueError(f"a float32 row of width {dim} takes {4 * dim} bytes, got {len(payload)}")
        return cls(np.frombuffer(payload, dtype=np.float32).reshape(1, dim).copy())


@dataclass(frozen=True, eq=False)
class QuantizedTable(EmbeddingTable):
    """``x_hat[v] = (offset[v] + scale[v] * codes[v]) * dim_scale + dim_center``; parameters ``(N,)``, ``(1,)``
    or ``(N, S)``.

    With ``(N, S)`` parameters, segment ``j`` of row ``v`` (columns ``j*d/S .. (j+1)*d/S - 1``) uses
    ``scale[v, j]`` and ``offset[v, j]``. ``dim_scale`` (float16 ``(d,)``, optional) is a per-dimension
    scale shared by all rows, ``dim_center`` (float16 ``(d,)``, optional) the table's mean vector.

    Arrays are not copied; callers must not mutate them after construction.
    """

    codes: np.ndarray
    scale: np.ndarray
    offset: np.ndarray
    bits: int
    dim_scale: np.ndarray | None = None
    dim_center: np.ndarray | None = None
    kind: ClassVar[str] = "quantized"

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, np.integer)) \
                or not 1 <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be an integer in 1..{MAX_BITS}, got {self.bits!r}")
        if not isinstance(self.codes, np.ndarray) or self.codes.dtype != np.uint8 or self.codes.ndim != 2:
            raise TypeError(f"codes must be a 2-D uint8 array, got {_describe(self.codes)}")
        max_code = (1 << int(self.bits)) - 1
        found = int(self.codes.max()) if self.codes.size else 0
        if found > max_code:
            raise ValueError(f"codes must be <= {max_code} for {self.bits} bits, found max value {found}")
        for name in ("scale", "offset"):
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.dtype != np.float16:
                raise TypeError(f"{name} must be a float16 array, got {_describe(value)}")
            segmented = value.ndim == 2 and value.shape[0] == self.n_rows and value.shape[1] >= 1 \
                and self.dim % value.shape[1] == 0
            if value.shape not in ((self.n_rows,), (1,)) and not segmented:
                raise ValueError(f"{name} must have shape ({self.n_rows},) per node, (1,) per tensor or "
                                 f"({self.n_rows}, S) per node and segment with S dividing {self.dim}, "
                                 f"got {value.shape}")
            if not np.isfinite(value).all():
                raise ValueError(f"{name} contains non-finite values")
        for name in ("dim_scale", "dim_center"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, np.ndarray) or value.dtype != np.float16
                                      or value.shape != (self.dim,) or not np.isfinite(value).all()):
                raise ValueError(f"{name} must be a finite float16 array of shape ({self.dim},), "
                                 f"got {_describe(value)}")
        if self.scale.shape != self.offset.shape:
            raise ValueError(f"scale {self.scale.shape} and offset {self.offset.shape} shapes differ")

    @property
    def n_rows(self) -> int:
        return int(self.codes.shape[0])

    @property
    def dim(self) -> int:
        return int(self.codes.shape[1])

    @property
    def segments(self) -> int:
        """Number of equal row segments with their own parameters (1 unless parameters are ``(N, S)``)."""
        return int(self.scale.shape[1]) if self.scale.ndim == 2 else 1

    @property
    def stored_bytes(self) -> int:
        """Codes at ``bits`` bits per value plus the float16 parameters."""
        extra = sum(v.nbytes for v in (self.dim_scale, self.dim_center) if v is not None)
        return packed_size(self.codes.size, int(self.bits)) + self.scale.nbytes + self.offset.nbytes + extra

    def dequantize(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Decoded in float32: the float16 parameters are widened first and the product and sum are separate
        float32 operations, so the result is bit-for-bit reproducible wherever it is computed."""
        codes = self.codes if rows is None else self.codes[rows]
        scale, offset = self.scale, self.offset
        if rows is not None and self.scale.shape[0] != 1:
            scale, offset = scale[rows], offset[rows]
        # Each row as (segments, width): one (scale, offset) pair per segment, broadcast over its width.
        segments = self.segments
        shaped = codes.reshape(len(codes), segments, self.dim // segments).astype(np.float32)
        scale32 = scale.astype(np.float32).reshape(len(scale), segments)[:, :, None]
        offset32 = offset.astype(np.float32).reshape(len(offset), segments)[:, :, None]
        decoded = (offset32 + scale32 * shaped).reshape(codes.shape)
        decoded = decoded if self.dim_scale is None else decoded * self.dim_scale.astype(np.float32)
        return decoded if self.dim_center is None else decoded + self.dim_center.astype(np.float32)

    def row_bytes(self) -> bytes:
        """float16 scale and offset, then the packed codes; the shared vectors are the reader's to supply."""
        _check_one_row(self.n_rows)
        if self.scale.shape != (1,):
            raise ValueError(f"a row's byte form holds one scale and offset, this row has {self.scale.shape}")
        params = np.array([self.scale[0], self.offset[0]], dtype=np.float16).tobytes()
        return params + pack_codes(self.codes, int(self.bits)).tobytes()

    @classmethod
    def from_row_bytes(cls, payload: bytes, *, bits: int, dim: int,
                       dim_scale: np.ndarray | None = None) -> QuantizedTable:
        """Inverse of ``row_bytes``: a one-row table of ``dim`` codes of ``bits`` bits, with ``dim_scale``."""
        expected = 4 + packed_size(dim, bits)
        if len(payload) != expected:
            raise ValueError(f"a {bits}-bit row of width {dim} takes {expected} bytes, got {len(payload)}")
        params = np.frombuffer(payload[:4], dtype=np.float16)
        codes = unpack_codes(np.frombuffer(payload[4:], dtype=np.uint8), bits, (1, dim))
        return cls(codes, params[:1].copy(), params[1:].copy(), bits, dim_scale)


def _check_one_row(n_rows: int) -> None:
    if n_rows != 1:
        raise ValueError(f"only a one-row table has a row byte form, this one has {n_rows} rows")


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
