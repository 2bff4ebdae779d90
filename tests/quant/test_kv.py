"""KV-cache formats: shapes for any leading dims, grid round trips, the half-step bound, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowc.errors import QuantizationError
from lowc.quant import KV4, KV8, dequantize_kv, quantize_kv, sqnr_db
from lowc.quant.kv import dequantize_kv4, quantize_kv4, quantize_kv8

lead_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=3)


@settings(max_examples=30, deadline=None)
@given(lead_shapes, st.integers(1, 4), st.sampled_from([2, 8, 64, 128]), st.floats(-3, 2),
       st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), st.integers(0, 2**31 - 1))
def test_kv4_shapes_and_error_bound(lead, heads, dim, log_scale, dtype, seed):
    x = (torch.randn(*lead, heads, dim, generator=torch.Generator().manual_seed(seed)) * 10.0**log_scale).to(dtype)
    kv = quantize_kv(x, "kv4")
    assert isinstance(kv, KV4)
    assert kv.packed.shape == (*lead, heads, dim // 2) and kv.packed.dtype == torch.uint8
    assert kv.scale.shape == kv.zero.shape == (*lead, heads)
    assert kv.scale.dtype == kv.zero.dtype == torch.float16
    assert bool(((kv.zero >= 0) & (kv.zero <= 15)).all())
    back = dequantize_kv(kv, dtype=torch.float32)
    x32 = x.float()
    assert bool(((x32 - back).abs() <= 0.5 * kv.scale.float()[..., None] + 2**-20 * x32.abs()).all())
    # The fractional zero puts each vector's minimum (when negative) on the grid, up to the fp16
    # rounding of the zero itself (half an ulp of a value <= 15: 2**-8 of a step).
    vmin = x32.amin(dim=-1).clamp(max=0)
    assert bool(((back.amin(dim=-1).clamp(max=0) - vmin).abs() <= 2**-8 * kv.scale.float() + 2**-20 * vmin.abs()).all())
    assert dequantize_kv(kv, dtype=dtype).dtype == dtype


@settings(max_examples=30, deadline=None)
@given(lead_shapes, st.integers(1, 4), st.integers(1, 80), st.floats(-3, 2), st.integers(0, 2**31 - 1))
def test_kv8_shapes_and_error_bound(lead, heads, dim, log_scale, seed):
    x = torch.randn(*lead, heads, dim, generator=torch.Generator().manual_seed(seed)) * 10.0**log_scale
    kv = quantize_kv(x, "kv8")
    assert isinstance(kv, KV8) and kv.q.shape == x.shape and kv.q.dtype == torch.int8
    assert kv.scale.shape == (*lead, heads) and kv.scale.dtype == torch.float16
    assert bool(((x - dequantize_kv(kv)).abs() <= 0.5 * kv.scale.float()[..., None] + 2**-20 * x.abs()).all())


def test_kv4_round_trip_is_exact_on_the_grid():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (2, 5, 3, 64), generator=g)
    q[..., 0], q[..., 1] = 0, 15
    z = torch.randint(0, 16, (2, 5, 3, 1), generator=g)
    step = 2.0 ** torch.randint(-8, 2, (2, 5, 3, 1), generator=g).float()
    x = (q - z) * step
    kv = quantize_kv4(x)
    assert torch.equal(dequantize_kv4(kv), x)
    lo, hi = kv.packed & 15, kv.packed >> 4  # low nibble = even head_dim index
    assert torch.equal(lo.long(), q[..., 0::2]) and torch.equal(hi.long(), q[..., 1::2])


def test_kv8_round_trip_is_exact_on_the_grid():
    q = torch.randint(-127, 128, (4, 2, 16), generator=torch.Generator().manual_seed(1), dtype=torch.int8)
    q[..., 0] = 127
    kv = quantize_kv8(q.float() * 0.25)
    assert torch.equal(kv.q, q) and bool((kv.scale == 0.25).all())


def test_kv_sqnr_on_gaussian_heads():
    x = torch.randn(4, 9, 64, generator=torch.Generator().manual_seed(0))
    assert sqnr_db(x, dequantize_kv(quantize_kv(x, "kv4"))) > 20.3
    assert sqnr_db(x, dequantize_kv(quantize_kv(x, "kv8"))) > 44.0


def test_bad_kv_input_raises():
    with pytest.raises(QuantizationError, match="head_dim divisible by 2"):
        quantize_kv(torch.randn(2, 3, 5), "kv4")
    with pytest.raises(QuantizationError, match="head_dim divisible by 4"):
        quantize_kv4(torch.randn(2, 3, 6), groups=2)
    with pytest.raises(QuantizationError, match="NaN or Inf"):
        quantize_kv(torch.tensor([[1.0, float("nan")]]), "kv8")
    with pytest.raises(QuantizationError, match=r"\[..., heads, head_dim\]"):
        quantize_kv(torch.randn(8), "kv8")
    with pytest.raises(QuantizationError, match="unknown KV format"):
        quantize_kv(torch.randn(2, 8), "kv2")
    with pytest.raises(QuantizationError, match="floating dtype"):
        quantize_kv(torch.ones(2, 8, dtype=torch.int8), "kv4")


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([2, 4]), st.sampled_from([8, 64, 128]), st.integers(0, 2**31 - 1))
def test_kv4_groups_are_independent_head_vectors(groups, dim, seed):
    """Grouped KV4 = plain KV4 of each contiguous piece of the head vector: same codes, same scales."""
    x = torch.randn(2, 3, dim, generator=torch.Generator().manual_seed(seed)) * 3
    x[..., 0] += 20.0  # an outlier in the first group only: the other groups keep their fine steps
    kv = quantize_kv4(x, groups)
    assert kv.scale.shape == kv.zero.shape == (2, 3, groups)
    plain = quantize_kv4(x.reshape(2, 3 * groups, dim // groups))
    assert torch.equal(kv.packed.reshape(-1), plain.packed.reshape(-1))
    assert torch.equal(kv.scale.reshape(-1), plain.scale.reshape(-1))
    assert torch.equal(dequantize_kv4(kv), dequantize_kv4(plain).reshape(x.shape))
    assert float((x - dequantize_kv4(kv)).square().mean()) < float((x - dequantize_kv4(quantize_kv4(x))).square().mean())
