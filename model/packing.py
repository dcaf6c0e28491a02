"""Bit packing of quantization codes: b bits per value on disk instead of a byte each.

A 2-bit model stored one code per byte would be 4x larger than it claims, so artifacts store the
codes densely. Layout (part of the artifact format, do not change without bumping its version):
values in row-major order, each value's low ``bits`` bits written most significant bit first, the
bit stream packed into bytes most significant bit first, the last byte padded with zero bits.
"""

from __future__ import annotations

import numpy as np

MAX_BITS = 8


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in 1..{MAX_BITS}, got {bits!r}")


def packed_size(n_values: int, bits: int) -> int:
    """Bytes that ``n_values`` codes of ``bits`` bits occupy once packed: ceil(n_values*bits/8)."""
    _check_bits(bits)
    return -(-n_values * int(bits) // 8)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes ``(N, d)`` with values < 2**bits into a 1-D uint8 array of packed bytes."""
    _check_bits(bits)
    if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8:
        raise TypeError(f"codes must be a uint8 numpy array, got {getattr(codes, 'dtype', type(codes))}")
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D (N, d), got shape {codes.shape}")
    max_code = (1 << bits) - 1
    found = int(codes.max()) if codes.size else 0
    if found > max_code:
        raise ValueError(f"codes must be <= {max_code} for {bits} bits, found max value {found}")
    flat = codes.reshape(-1)
    planes = np.empty((flat.size, bits), dtype=np.uint8)  # column k = bit (bits-1-k) of each value
    for k in range(bits):
        np.right_shift(flat, bits - 1 - k, out=planes[:, k])
    planes &= 1
    return np.packbits(planes.reshape(-1))


def unpack_codes(packed: np.ndarray, bits: int, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`pack_codes`: uint8 codes of ``shape`` from exactly the packed bytes."""
    _check_bits(bits)
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8 or packed.ndim != 1:
        raise TypeError("packed must be a 1-D uint8 numpy array")
    if len(shape) != 2 or any(int(n) < 0 for n in shape):
        raise ValueError(f"shape must be two non-negative sizes (N, d), got {shape}")
    n_values = int(shape[0]) * int(shape[1])
    expected = packed_size(n_values, bits)
    if packed.size != expected:
        raise ValueError(f"packed holds {packed.size} bytes, expected {expected} for "
                         f"{shape[0]}x{shape[1]} codes of {bits} bits")
    planes = np.unpackbits(packed, count=n_values * bits).reshape(n_values, bits)
    codes = planes[:, 0].copy()
    for k in range(1, bits):
        codes <<= 1
        codes |= planes[:, k]
    return codes.reshape(int(shape[0]), int(shape[1]))
