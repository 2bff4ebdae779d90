"""Nibble packing: bit order, signed/unsigned round trips, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowc.errors import QuantizationError
from lowc.quant.packing import pack_int4, unpack_int4, unpack_uint4


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
