"""w4a8_pc (QoQ per channel): grid round trip, error bound, odd K, the exact z * xsum correction."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowc.quant import W4A8Channel, quantize_activation, sqnr_db


def _codes(packed):
    p = packed.qweight.long()
    return torch.stack((p & 15, p >> 4), dim=-1).flatten(-2)


def test_round_trip_is_exact_on_the_grid():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (5, 33), generator=g)
    q[:, 0], q[:, 1] = 0, 15
    z = torch.randint(0, 16, (5, 1), generator=g)
    step = 2.0 ** torch.randint(-10, 0, (5, 1), generator=g).float()
    packed = W4A8Channel.from_float((q - z).float() * step)
    assert torch.equal(_codes(packed)[:, :33], q) and torch.equal(packed.zero.long()[:, None], z)
    assert torch.equal(packed.scale.float()[:, None], step)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 200), st.floats(-4, 2), st.integers(0, 2**31 - 1))
def test_error_within_half_a_step_and_odd_k_pads_with_zero(n, k, log_scale, seed):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 10.0**log_scale
    packed = W4A8Channel.from_float(w)
    assert packed.qweight.shape == (n, (k + 1) // 2)
    s = packed.scale.float()[:, None]
    assert bool(((w - packed.dequantize()).abs() <= 0.5 * s + 2**-20 * w.abs()).all())
    if k % 2:
        assert torch.equal(_codes(packed)[:, k], packed.zero.long())  # the pad nibble is z: exact 0


def test_reference_gemm_integer_part_is_exact():
    g = torch.Generator().manual_seed(3)
    packed = W4A8Channel.from_float(torch.randn(7, 101, generator=g))
    x_q, x_s = quantize_activation(torch.randn(4, 101, generator=g), "w4a8_pc")
    y = packed.linear(x_q, x_s, None, torch.float32)
    acc = x_q.long() @ _codes(packed)[:, :101].T  # int64, q in 0..15 as the INT8 GEMM sees it
    corrected = acc - packed.zero.long()[None, :] * x_q.long().sum(1, keepdim=True)
    assert torch.equal(corrected, x_q.long() @ (_codes(packed)[:, :101] - packed.zero.long()[:, None]).T)
    assert torch.equal(y, corrected.float() * x_s * packed.scale.float()[None, :])


def test_sqnr_on_gaussian_weights():
    w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))
    assert sqnr_db(w, W4A8Channel.from_float(w).dequantize()) > 17.7
