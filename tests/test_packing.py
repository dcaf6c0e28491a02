"""Bit packing must round-trip exactly and really store b bits per value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.packing import pack_codes, packed_size, unpack_codes


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("shape", [(7, 5), (1, 1), (13, 64), (0, 8)])
def test_round_trip_and_exact_size(bits: int, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(bits * 100 + shape[0])
    codes = rng.integers(0, 2**bits, size=shape, dtype=np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8
    assert packed.ndim == 1
    assert packed.size == math.ceil(shape[0] * shape[1] * bits / 8) == packed_size(codes.size, bits)
    restored = unpack_codes(packed, bits, shape)
    assert restored.dtype == np.uint8
    assert restored.shape == shape
    np.testing.assert_array_equal(restored, codes)


def test_extreme_values_round_trip() -> None:
    for bits in (1, 2, 3, 4, 8):
        codes = np.full((7, 5), 2**bits - 1, dtype=np.uint8)
        codes[::2] = 0
        np.testing.assert_array_equal(unpack_codes(pack_codes(codes, bits), bits, (7, 5)), codes)


def test_bit_layout_is_msb_first() -> None:
    # 2-bit values 1, 2, 3, 0 -> 01 10 11 00; 3-bit values 5, 3, 7 -> 101 011 11|1 0000000.
    assert pack_codes(np.array([[1, 2, 3, 0]], dtype=np.uint8), 2).tolist() == [0b01101100]
    assert pack_codes(np.array([[5, 3, 7]], dtype=np.uint8), 3).tolist() == [0b10101111, 0b10000000]


def test_large_table_is_fast_enough() -> None:
    codes = np.random.default_rng(0).integers(0, 8, size=(100_000, 64), dtype=np.uint8)
    packed = pack_codes(codes, 3)
    assert packed.size == 100_000 * 64 * 3 // 8
    np.testing.assert_array_equal(unpack_codes(packed, 3, codes.shape), codes)


@pytest.mark.parametrize("bits", [0, 9, -1, 2.0, True])
def test_rejects_bad_bits(bits: object) -> None:
    codes = np.zeros((2, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match="bits"):
        pack_codes(codes, bits)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bits"):
        unpack_codes(np.zeros(1, dtype=np.uint8), bits, (2, 2))  # type: ignore[arg-type]


def test_rejects_out_of_range_value_naming_max() -> None:
    codes = np.array([[0, 1], [9, 3]], dtype=np.uint8)
    with pytest.raises(ValueError, match="max value 9"):
        pack_codes(codes, 3)


def test_rejects_wrong_dtype_and_rank() -> None:
    with pytest.raises(TypeError, match="uint8"):
        pack_codes(np.zeros((2, 2), dtype=np.int64), 2)
    with pytest.raises(ValueError, match="2-D"):
        pack_codes(np.zeros(4, dtype=np.uint8), 2)
    with pytest.raises(TypeError, match="uint8"):
        unpack_codes(np.zeros(1, dtype=np.int8), 2, (2, 2))


def test_rejects_wrong_packed_length() -> None:
    packed = pack_codes(np.ones((7, 5), dtype=np.uint8), 3)
    with pytest.raises(ValueError, match="expected 14"):
        unpack_codes(packed[:-1], 3, (7, 5))
    with pytest.raises(ValueError, match="expected 14"):
        unpack_codes(np.concatenate([packed, packed[:1]]), 3, (7, 5))
