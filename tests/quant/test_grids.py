"""The shared rounding rules: exact on-grid round trips, the 0.52-step error bound, zero handling."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowc.quant.grids import quantize_symmetric, quantize_uint4_asymmetric
from lowc.quant.numerics import FP16_TINY

shapes = st.tuples(st.integers(1, 6), st.integers(1, 70))
log_scales = st.floats(-8, 4)  # values from ~1e-9 (subnormal fp16 scales) to ~1e3
seeds = st.integers(0, 2**31 - 1)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@settings(max_examples=30, deadline=None)
@given(shapes, st.integers(-14, 6), seeds)
def test_uint4_round_trip_is_exact_on_the_grid(shape, log2_step, seed):
    rows, n = shape
    g = _gen(seed)
    n = max(n, 2)
    q = torch.randint(0, 16, (rows, n), generator=g).float()
    q[:, 0], q[:, 1] = 0, 15  # each row spans the full grid, so span / 15 is exactly the step
    z = torch.randint(0, 16, (rows, 1), generator=g).float()
    step = 2.0**log2_step  # a power of two: (q - z) * step is exact in float32 and fp16
    x = (q - z) * step
    q2, scale, zero = quantize_uint4_asymmetric(x, "t")
    assert torch.equal(scale.float(), torch.full_like(scale.float(), step))
    assert torch.equal(zero, z) and torch.equal(q2, q)


@settings(max_examples=30, deadline=None)
@given(shapes, st.integers(-14, 6), st.sampled_from([7, 127]), seeds)
def test_symmetric_round_trip_is_exact_on_the_grid(shape, log2_step, qmax, seed):
    rows, n = shape
    q = torch.randint(-qmax, qmax + 1, (rows, n), generator=_gen(seed)).float()
    q[:, 0] = qmax
    step = 2.0**log2_step
    q2, scale = quantize_symmetric(q * step, qmax, "t")
    assert torch.equal(scale.float(), torch.full_like(scale.float(), step)) and torch.equal(q2, q)


@settings(max_examples=40, deadline=None)
@given(shapes, log_scales, st.floats(-3, 3), seeds)
def test_uint4_error_is_at_most_half_a_step(shape, log_scale, shift, seed):
    x = (torch.randn(shape, generator=_gen(seed)) + shift) * 10.0**log_scale / 10
    q, scale, zero = quantize_uint4_asymmetric(x, "t")
    s = scale.float()
    assert bool(((q >= 0) & (q <= 15)).all()) and bool(((zero >= 0) & (zero <= 15)).all())
    err = (x - (q - zero) * s).abs()
    assert bool((err <= 0.5 * s + 2**-20 * x.abs()).all())  # half a step (+ fp32 rounding); no clipping


@settings(max_examples=40, deadline=None)
@given(shapes, log_scales, st.sampled_from([7, 127]), seeds)
def test_symmetric_error_is_at_most_half_a_step(shape, log_scale, qmax, seed):
    x = torch.randn(shape, generator=_gen(seed)) * 10.0**log_scale / 10
    q, scale = quantize_symmetric(x, qmax, "t")
    s = scale.float()
    assert bool((q.abs() <= qmax).all())
    assert bool(((x - q * s).abs() <= 0.5 * s + 2**-20 * x.abs()).all())


def test_all_zero_rows_quantize_to_exact_zeros():
    x = torch.zeros(2, 8)
    q, scale, zero = quantize_uint4_asymmetric(x, "t")
    assert bool((scale.float() == FP16_TINY).all()) and bool((q == zero).all())
    q, scale = quantize_symmetric(x, 7, "t")
    assert bool((q == 0).all()) and bool((scale.float() == FP16_TINY).all())


def test_one_signed_rows_keep_zero_in_range():
    # A row of positive values still has z = 0 and represents 0 exactly (range [0, max]).
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    q, scale, zero = quantize_uint4_asymmetric(x, "t")
    assert zero.item() == 0 and scale.item() >= 4.0 / 15 > scale.item() * (1 - 2**-10)
