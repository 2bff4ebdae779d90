"""Dynamic activation quantization: INT8 per token and INT4 per group with an INT8 outlier tail."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowc.errors import QuantizationError
from lowc.quant.activations import dequantize_activation, quantize_activation
from lowc.quant.numerics import sqnr_db

lead_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3)
seeds = st.integers(0, 2**31 - 1)


@settings(max_examples=30, deadline=None)
@given(lead_shapes, st.integers(1, 300), st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), seeds)
def test_int8_per_token_properties(lead, k, dtype, seed):
    x = (torch.randn(*lead, k, generator=torch.Generator().manual_seed(seed)) * 3).to(dtype)
    q, scale = quantize_activation(x, "w4a8_g128")
    assert q.dtype == torch.int8 and q.shape == x.shape
    assert scale.dtype == torch.float32 and scale.shape == (*lead, 1)
    x32 = x.float()
    absmax = x32.abs().amax(-1, keepdim=True)
    assert torch.equal(scale, torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax)))
    assert bool((q.abs() <= 127).all())
    assert bool(((x32 - q.float() * scale).abs() <= 0.5 * scale + 2**-20 * x32.abs()).all())  # + fp32 rounding
    assert torch.equal(dequantize_activation(q, scale, "w8a8"), q.float() * scale)


def test_int8_round_trip_is_exact_on_the_grid():
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-127, 128, (6, 40), generator=g, dtype=torch.int8)
    q[:, 3] = 127
    step = 2.0 ** torch.randint(-10, 4, (6, 1), generator=g).float()
    q2, scale = quantize_activation(q.float() * step, "w8a8")
    assert torch.equal(q2, q) and torch.equal(scale, step)


def test_all_zero_tokens_get_scale_one():
    x = torch.zeros(2, 3, 16)
    x[0, 0, 5] = 2.0
    q, scale = quantize_activation(x, "w8a8")
    assert scale[0, 0, 0] == 2.0 / 127 and bool((scale[0, 1:] == 1).all()) and bool((scale[1] == 1).all())
    assert bool((q[1] == 0).all())
    q4, s4 = quantize_activation(x, "w4a4_g8_o4")
    assert bool((s4[1] == 1).all()) and bool((q4[1] == 0).all())


@settings(max_examples=30, deadline=None)
@given(lead_shapes, st.integers(0, 40), st.sampled_from([8, 16, 32]), st.integers(0, 100), seeds)
def test_int4_groups_with_int8_tail(lead, outliers, group, normal, seed):
    k = normal + outliers
    if k == 0:
        return
    fmt = f"w4a4_g{group}_o{outliers}"
    x = torch.randn(*lead, k, generator=torch.Generator().manual_seed(seed))
    x[..., normal:] *= 20  # outliers are large: they must not inflate the INT4 scales
    q, scale = quantize_activation(x, fmt)
    n_groups = -(-normal // group)
    assert q.shape == x.shape and q.dtype == torch.int8
    assert scale.shape == (*lead, n_groups + (1 if outliers else 0))
    assert bool((q[..., :normal].abs() <= 7).all()) and bool((q[..., normal:].abs() <= 127).all())
    for g in range(n_groups):
        # a partial last group's scale uses only its real channels
        cols = x[..., g * group : min((g + 1) * group, normal)]
        absmax = cols.abs().amax(-1)
        assert torch.equal(scale[..., g], torch.where(absmax > 0, absmax / 7, torch.ones_like(absmax)))
    if outliers:
        absmax = x[..., normal:].abs().amax(-1)
        assert torch.equal(scale[..., -1], torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax)))
    step = dequantize_activation(torch.ones_like(q), scale, fmt)  # each channel's scale
    assert bool(((x - dequantize_activation(q, scale, fmt)).abs() <= 0.5 * step + 2**-20 * x.abs()).all())


def test_activation_sqnr_on_gaussian_tokens():
    x = torch.randn(64, 1024, generator=torch.Generator().manual_seed(0))
    for fmt, bound in [("w8a8", 41.5), ("w4a4_g128_o128", 18.9)]:
        q, s = quantize_activation(x, fmt)
        assert sqnr_db(x, dequantize_activation(q, s, fmt)) > bound, fmt


def test_bad_activations_raise():
    with pytest.raises(QuantizationError, match="NaN or Inf"):
        quantize_activation(torch.tensor([[1.0, float("nan")]]), "w8a8")
    with pytest.raises(QuantizationError, match="NaN or Inf"):
        quantize_activation(torch.tensor([[1.0, float("inf")]]), "w4a4_g2_o0")
    with pytest.raises(QuantizationError, match="floating dtype"):
        quantize_activation(torch.ones(2, 4, dtype=torch.int32), "w8a8")
    with pytest.raises(QuantizationError, match="floating point"):
        quantize_activation(torch.ones(2, 4), "w4a16_g128")
    with pytest.raises(QuantizationError, match="outlier channels"):
        quantize_activation(torch.ones(2, 4), "w4a4_g128_o8")
    with pytest.raises(QuantizationError, match="unknown format"):
        quantize_activation(torch.ones(2, 4), "w4a2")
    q, s = quantize_activation(torch.ones(2, 40), "w4a4_g16_o8")
    with pytest.raises(QuantizationError, match="expected"):
        dequantize_activation(q, s[..., :1], "w4a4_g16_o8")
