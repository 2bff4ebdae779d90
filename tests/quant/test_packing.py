"""Nibble packing (canonical and w4a8_g's nibble-split order): bit order, round trips, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowc.errors import QuantizationError
from lowc.quant.packing import pack_int4, pack_uint4_split, unpack_int4, unpack_uint4, unpack_uint4_split


def test_low_nibble_holds_the_even_index():
    packed = pack_int4(torch.tensor([[1, 2, 15, 0]]))
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [[0x21, 0x0F]]


def test_signed_values_are_twos_complement_nibbles():
    packed = pack_int4(torch.tensor([-1, -8, 7, 0], dtype=torch.int8))
    assert packed.tolist() == [0x8F, 0x07]
    assert unpack_int4(packed).tolist() == [-1, -8, 7, 0]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 15), min_size=0, max_size=64).filter(lambda v: len(v) % 2 == 0))
def test_unsigned_round_trip(values):
    t = torch.tensor(values, dtype=torch.uint8).reshape(1, -1)
    assert torch.equal(unpack_uint4(pack_int4(t)), t)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-8, 7), min_size=2, max_size=64).filter(lambda v: len(v) % 2 == 0))
def test_signed_round_trip(values):
    t = torch.tensor(values, dtype=torch.int8)
    t = t.reshape(2, -1) if len(values) % 4 == 0 else t  # 1-d and 2-d inputs
    assert torch.equal(unpack_int4(pack_int4(t)), t)


def test_odd_length_and_out_of_range_are_rejected():
    with pytest.raises(QuantizationError, match="even last dim"):
        pack_int4(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(QuantizationError, match="do not fit a nibble"):
        pack_int4(torch.tensor([16, 0]))
    with pytest.raises(QuantizationError, match="uint8"):
        unpack_uint4(torch.zeros(2, dtype=torch.int8))


def test_nibble_split_word_holds_codes_0_to_3_low_and_4_to_7_high():
    # eight codes 1..8 -> bytes (1 | 5<<4), (2 | 6<<4), (3 | 7<<4), (4 | 8<<4)
    packed = pack_uint4_split(torch.arange(1, 9, dtype=torch.uint8).reshape(1, 8))
    assert packed.tolist() == [[0x51, 0x62, 0x73, 0x84]]
    word = int.from_bytes(bytes(packed[0].tolist()), "little")  # what a 32-bit load sees
    assert [(word >> (8 * b)) & 0xF for b in range(4)] == [1, 2, 3, 4]
    assert [(word >> (8 * b + 4)) & 0xF for b in range(4)] == [5, 6, 7, 8]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 6), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_nibble_split_round_trip(words, rows, seed):
    t = torch.randint(0, 16, (rows, 8 * words), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = pack_uint4_split(t)
    assert packed.shape == (rows, 4 * words) and packed.dtype == torch.uint8
    assert torch.equal(unpack_uint4_split(packed), t)


def test_nibble_split_bad_input():
    with pytest.raises(QuantizationError, match="multiple of 8"):
        pack_uint4_split(torch.zeros(12, dtype=torch.uint8))
    with pytest.raises(QuantizationError, match="0..15"):
        pack_uint4_split(torch.tensor([16] + [0] * 7))
    with pytest.raises(QuantizationError, match="0..15"):
        pack_uint4_split(torch.tensor([-1] + [0] * 7))
    with pytest.raises(QuantizationError, match="multiple of 4"):
        unpack_uint4_split(torch.zeros(6, dtype=torch.uint8))
    with pytest.raises(QuantizationError, match="uint8"):
        unpack_uint4_split(torch.zeros(4, dtype=torch.int8))
