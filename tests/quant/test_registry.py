"""The format registry: names map to types, and tensors() / from_tensors() round trip for each."""

import pytest
import torch

from lowc.errors import QuantizationError
from lowc.quant import (
    W4A4Outlier, W4A8Channel, W4A8Grouped, W4A16Grouped, W8A8, format_type, quantize_weight, weight_from_tensors,
)

ALL_FORMATS = ["w4a8_g128", "w4a8_g32", "w4a8_pc", "w8a8", "w4a16_g128", "w4a16_g64", "w4a4_g128_o128", "w4a4_g32_o0"]


@pytest.mark.parametrize(
    "name, cls",
    [("w4a8_g128", W4A8Grouped), ("w4a8_pc", W4A8Channel), ("w8a8", W8A8), ("w4a16_g32", W4A16Grouped),
     ("w4a4_g128_o128", W4A4Outlier)],
)
def test_name_maps_to_type(name, cls):
    assert format_type(name) is cls


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_from_tensors_rebuilds_the_same_weight(fmt):
    w = torch.randn(9, 300, generator=torch.Generator().manual_seed(0))
    packed = quantize_weight(w, fmt)
    again = weight_from_tensors(fmt, packed.tensors(), 300)
    assert type(again) is type(packed) and again.in_features == 300
    assert all(a is b for a, b in zip(again.tensors(), packed.tensors()))
    assert torch.equal(again.dequantize(), packed.dequantize())
    assert packed.dequantize().shape == (9, 300)
    assert packed.nbytes == sum(t.numel() * t.element_size() for t in packed.tensors())
    text = repr(packed)
    assert fmt in text and "bits/weight" in text and "out=9" in text and "in=300" in text


def test_from_tensors_names_the_bad_tensor():
    packed = quantize_weight(torch.randn(4, 256), "w4a8_g128")
    tensors = packed.tensors()
    with pytest.raises(QuantizationError, match="expected 4 weight tensors"):
        weight_from_tensors("w4a8_g128", tensors[:3], 256)
    with pytest.raises(QuantizationError, match="'s0'"):
        weight_from_tensors("w4a8_g128", tensors[:3] + [tensors[3].float()], 256)
    with pytest.raises(QuantizationError, match="'qweight'"):
        weight_from_tensors("w4a8_g128", tensors, 512)  # packed for another in_features
    with pytest.raises(QuantizationError, match="holds w4a8_g formats"):
        W4A8Grouped.from_float(torch.randn(4, 256), "w8a8")


def test_nbytes_of_a_small_tail_layer():
    # N=7, K=100, g128: K pads to 128 -> qweight 7x64 bytes, s1 and zs1 7x1, s0 7 fp16.
    packed = quantize_weight(torch.randn(7, 100), "w4a8_g128")
    assert packed.nbytes == 7 * 64 + 7 + 7 + 7 * 2
