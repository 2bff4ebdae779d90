"""weight_grid: every format's element grid reproduces its packing and dequantization exactly."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from lowc.errors import PassError
from lowc.passes.weight_grid import codes, element_grid, with_codes
from lowc.quant import quantize_weight

FORMATS = ["w8a8", "w4a8_pc", "w4a16_g32", "w4a16_g128", "w4a8_g32", "w4a8_g128", "w4a4_g32_o16", "w4a4_g128_o128"]


@settings(max_examples=40, deadline=None)
@given(fmt=st.sampled_from(FORMATS), n=st.integers(1, 9), k=st.integers(128, 300), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_codes_round_trip_bit_for_bit(fmt, n, k, seed, scale):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * scale
    p = quantize_weight(w, fmt)
    grid, q = element_grid(p), codes(p)
    rebuilt = with_codes(p, q)
    assert all(torch.equal(a, b) for a, b in zip(p.tensors(), rebuilt.tensors()))
    assert torch.equal(grid.dequantize(q), p.dequantize())
    assert torch.equal(grid.quantize(p.dequantize()), q)  # the dequantized weight sits on the grid


@settings(max_examples=20, deadline=None)
@given(fmt=st.sampled_from(FORMATS), seed=st.integers(0, 2**16))
def test_any_codes_in_range_pack_and_dequantize_as_the_grid_says(fmt, seed):
    g = torch.Generator().manual_seed(seed)
    p = quantize_weight(torch.randn(6, 160, generator=g), fmt)
    grid = element_grid(p)
    q = grid.qmin + torch.floor(torch.rand(grid.qmin.shape, generator=g) * (grid.qmax - grid.qmin + 1))
    q = torch.minimum(q, grid.qmax)
    rebuilt = with_codes(p, q)
    assert torch.equal(rebuilt.dequantize(), grid.dequantize(q))
    assert torch.equal(codes(rebuilt), q)


def test_w4a8_group_codes_keep_the_level1_integer_in_int8():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=g)
    w[:, 0] = 10.0  # every row's maximum sits in this group: level-1 spans near 238, s1 near 16
    w[:, 1] = -torch.rand(64, generator=g) * 10
    p = quantize_weight(w, "w4a8_g128")
    grid = element_grid(p)
    s1 = p.s1.float().repeat_interleave(128, dim=1)
    assert bool(((grid.qmax - grid.zero) * s1 <= 127).all() and ((grid.zero - grid.qmin) * s1 <= 127).all())
    assert bool((grid.qmax < 15).any() or (grid.qmin > 0).any())  # the limit does bite somewhere


def test_codes_outside_the_grid_are_refused():
    p = quantize_weight(torch.randn(2, 64), "w4a16_g32")
    with pytest.raises(PassError, match="outside"):
        with_codes(p, codes(p) + 16)
    with pytest.raises(PassError, match="outside"):
        with_codes(p, codes(p) + 0.5)
