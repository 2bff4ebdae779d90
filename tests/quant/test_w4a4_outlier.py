"""w4a4_g{G}_o{O} (Atom): layout, odd tails, outliers kept INT8, exact per-group integer GEMM, SQNR."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowc.errors import QuantizationError
from lowc.quant import W4A4Outlier, quantize_activation, sqnr_db


def _signed_codes(packed):
    p = packed.qweight.long()
    nib = torch.stack((p & 15, p >> 4), dim=-1).flatten(-2)
    return torch.where(nib >= 8, nib - 16, nib)


def test_round_trip_is_exact_on_the_grid():
    g = torch.Generator().manual_seed(0)
    q4 = torch.randint(-7, 8, (3, 64), generator=g)
    q4[:, 0], q4[:, 32] = 7, -7  # both groups reach +-7
    q8 = torch.randint(-127, 128, (3, 16), generator=g)
    q8[:, 0] = 127
    step = 2.0 ** torch.randint(-10, 0, (3, 1), generator=g).float()
    packed = W4A4Outlier.from_float(torch.cat((q4, q8), 1).float() * step, "w4a4_g32_o16")
    assert torch.equal(_signed_codes(packed), q4) and torch.equal(packed.outlier_weight.long(), q8)
    assert torch.equal(packed.scale.float(), step.expand(3, 2))
    assert torch.equal(packed.outlier_scale.float(), step[:, 0])


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 7), st.integers(0, 200), st.integers(0, 40), st.sampled_from([16, 32, 128]), st.integers(0, 2**31))
def test_error_bound_and_odd_tails(n, normal, outliers, group, seed):
    k = normal + outliers
    if k == 0:
        return
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    w[:, normal:] *= 30  # outlier columns: must not inflate the INT4 scales
    packed = W4A4Outlier.from_float(w, f"w4a4_g{group}_o{outliers}")
    knp = -(-normal // group) * group
    assert packed.qweight.shape == (n, knp // 2) and packed.outlier_weight.shape == (n, outliers)
    codes = _signed_codes(packed)
    assert bool((codes.abs() <= 7).all()) and bool((codes[:, normal:] == 0).all())  # pad encodes 0
    step4 = packed.scale.float().repeat_interleave(group, dim=1)[:, :normal]
    step = torch.cat((step4, packed.outlier_scale.float()[:, None].expand(n, outliers)), 1)
    assert bool(((w - packed.dequantize()).abs() <= 0.5 * step + 2**-20 * w.abs()).all())
    if normal:  # the partial last group's scale comes from its real columns
        last = w[:, (knp // group - 1) * group : normal].abs().amax(1) / 7
        assert bool((packed.scale[:, -1].float() >= last).all())
        assert bool((packed.scale[:, -1].float() <= last * (1 + 2**-10) + 2**-24).all())


@pytest.mark.parametrize("k, outliers", [(576, 128), (100, 4), (40, 0), (16, 16)])
def test_reference_gemm_integer_parts_are_exact(k, outliers):
    fmt = f"w4a4_g32_o{outliers}"
    g = torch.Generator().manual_seed(k)
    packed = W4A4Outlier.from_float(torch.randn(7, k, generator=g), fmt)
    x_q, x_s = quantize_activation(torch.randn(2, 3, k, generator=g), fmt)
    x2, s2 = x_q.reshape(6, k).long(), x_s.reshape(6, -1)
    normal = k - outliers
    acc_g, acc_o = packed.int_accumulators(x_q.reshape(6, k))
    codes = _signed_codes(packed)
    x4 = torch.nn.functional.pad(x2[:, :normal], (0, codes.shape[1] - normal)).unflatten(-1, (-1, 32))
    expected_g = torch.einsum("mgk,ngk->mng", x4, codes.unflatten(-1, (-1, 32)))  # int64
    expected_o = x2[:, normal:] @ packed.outlier_weight.long().T
    assert torch.equal(acc_g.long(), expected_g) and torch.equal(acc_o.long(), expected_o)
    y = packed.linear(x_q, x_s, None, torch.float32).reshape(6, 7)
    n_groups = expected_g.shape[-1]
    y_ref = (expected_g.float() * s2[:, None, :n_groups] * packed.scale.float()[None]).sum(-1)
    if outliers:
        y_ref = y_ref + expected_o.float() * s2[:, -1:] * packed.outlier_scale.float()[None, :]
    assert torch.equal(y, y_ref)


def test_activations_out_of_int4_range_are_rejected():
    packed = W4A4Outlier.from_float(torch.randn(3, 48), "w4a4_g16_o16")
    x_q, x_s = quantize_activation(torch.randn(2, 48), "w4a4_g16_o16")
    x_q[0, 0] = 9
    with pytest.raises(QuantizationError, match="must be INT4"):
        packed.linear(x_q, x_s, None, torch.float32)


def test_too_few_channels_and_padding_disabled_raise():
    with pytest.raises(QuantizationError, match="smaller than the 128 outlier channels"):
        W4A4Outlier.from_float(torch.randn(3, 100), "w4a4_g128_o128")
    with pytest.raises(QuantizationError, match="padding is disabled"):
        W4A4Outlier.from_float(torch.randn(3, 576), "w4a4_g128_o128", pad=False)


def test_sqnr_on_gaussian_weights():
    w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))
    assert sqnr_db(w, W4A4Outlier.from_float(w, "w4a4_g128_o128").dequantize()) > 18.9
