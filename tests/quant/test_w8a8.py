"""w8a8: grid round trip, error bound, exact integer GEMM, SQNR."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowc.quant import W8A8, quantize_activation, sqnr_db


def test_round_trip_is_exact_on_the_grid():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-127, 128, (4, 50), generator=g, dtype=torch.int8)
    q[:, 7] = -127
    step = 2.0 ** torch.randint(-12, 0, (4, 1), generator=g).float()
    packed = W8A8.from_float(q.float() * step)
    assert torch.equal(packed.qweight, q) and torch.equal(packed.scale.float()[:, None], step)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 200), st.floats(-4, 2), st.integers(0, 2**31 - 1))
def test_error_within_half_a_step(n, k, log_scale, seed):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 10.0**log_scale
    packed = W8A8.from_float(w.to(torch.bfloat16))
    w = w.to(torch.bfloat16).float()
    s = packed.scale.float()[:, None]
    assert bool(((w - packed.dequantize()).abs() <= 0.5 * s + 2**-20 * w.abs()).all())


def test_reference_gemm_integer_part_is_exact():
    g = torch.Generator().manual_seed(2)
    packed = W8A8.from_float(torch.randn(7, 2000, generator=g))  # K large: fp32 sums would round
    x_q, x_s = quantize_activation(torch.randn(3, 2000, generator=g), "w8a8")
    y = packed.linear(x_q, x_s, torch.ones(7), torch.float32)
    acc = x_q.long() @ packed.qweight.long().T
    assert torch.equal(y, acc.float() * x_s * packed.scale.float()[None, :] + 1)


def test_sqnr_on_gaussian_weights():
    w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))
    assert sqnr_db(w, W8A8.from_float(w).dequantize()) > 41.5
