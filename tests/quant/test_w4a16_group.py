"""w4a16_g{G}: grid round trip, error bound, odd tails, float reference GEMM, SQNR."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowc.errors import QuantizationError
from lowc.quant import W4A16Grouped, sqnr_db


def _codes(packed):
    p = packed.qweight.long()
    return torch.stack((p & 15, p >> 4), dim=-1).flatten(-2)


def test_round_trip_is_exact_on_the_grid():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (3, 4, 32), generator=g)
    q[..., 0], q[..., 1] = 0, 15
    z = torch.randint(0, 16, (3, 4, 1), generator=g)
    step = 2.0 ** torch.randint(-10, 0, (3, 4, 1), generator=g).float()
    packed = W4A16Grouped.from_float(((q - z) * step).flatten(1), "w4a16_g32")
    assert torch.equal(_codes(packed), q.flatten(1))
    assert torch.equal(packed.zero.long(), z.squeeze(-1)) and torch.equal(packed.scale.float(), step.squeeze(-1))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 300), st.sampled_from([16, 32, 128]), st.floats(-4, 2), st.integers(0, 2**31))
def test_error_within_half_a_step_with_odd_tails(n, k, group, log_scale, seed):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 10.0**log_scale
    packed = W4A16Grouped.from_float(w, f"w4a16_g{group}")
    kp = -(-k // group) * group
    assert packed.qweight.shape == (n, kp // 2) and packed.scale.shape == (n, kp // group)
    step = packed.scale.float().repeat_interleave(group, dim=1)[:, :k]
    assert bool(((w - packed.dequantize()).abs() <= 0.5 * step + 2**-20 * w.abs()).all())
    pad_codes = _codes(packed)[:, k:]
    pad_zero = packed.zero.long().repeat_interleave(group, dim=1)[:, k:]
    assert torch.equal(pad_codes, pad_zero)  # padded columns encode exact 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_reference_gemm_matches_dequantized_matmul(dtype):
    g = torch.Generator().manual_seed(1)
    packed = W4A16Grouped.from_float(torch.randn(7, 576, generator=g), "w4a16_g128")
    x = torch.randn(2, 3, 576, generator=g).to(dtype)
    bias = torch.randn(7, generator=g)
    y = packed.linear(x, None, bias, dtype)
    assert y.dtype == dtype and y.shape == (2, 3, 7)
    expected = (x.float() @ packed.dequantize().T + bias).to(dtype)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(QuantizationError, match="x_scale=None"):
        packed.linear(x, torch.ones(2, 3, 1), None, dtype)


def test_sqnr_on_gaussian_weights():
    w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))
    assert sqnr_db(w, W4A16Grouped.from_float(w, "w4a16_g128").dequantize()) > 19.7
    assert sqnr_db(w, W4A16Grouped.from_float(w, "w4a16_g32").dequantize()) > 21.5
