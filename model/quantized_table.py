"""A quantized embedding table as it is stored and served: uint8 codes plus float16 scale/offset.

``dequantize`` is the single decoding function shared by offline evaluation and the service, so
that the scores a model was selected on are exactly the scores it serves.

Parameters are per node ``(N,)``, per table ``(1,)``, or per node and segment ``(N, S)``: the row is
then ``S`` equal consecutive segments, each with its own scale and offset (BiGeaR-style per-layer
codes, where a served row is the concatenation of ``S = L + 1`` layers' binarized vectors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.packing import MAX_BITS, packed_size


@dataclass(frozen=True, eq=False)
class QuantizedTable:
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
        """Number of nodes (rows) in the table."""
        return int(self.codes.shape[0])

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.codes.shape[1])

    @property
    def segments(self) -> int:
        """Number of equal row segments with their own parameters (1 unless parameters are ``(N, S)``)."""
        return int(self.scale.shape[1]) if self.scale.ndim == 2 else 1

    @property
    def nbytes_packed(self) -> int:
        """Stored size: codes at ``bits`` bits per value plus the float16 parameters."""
        extra = sum(v.nbytes for v in (self.dim_scale, self.dim_center) if v is not None)
        return packed_size(self.codes.size, int(self.bits)) + self.scale.nbytes + self.offset.nbytes + extra

    def dequantize(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Float32 embeddings of ``rows`` (all rows if None), decoded in float32.

        The float16 parameters are widened to float32 first and the product and sum are separate
        float32 operations, so the result is bit-for-bit reproducible wherever it is computed.
        """
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


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
