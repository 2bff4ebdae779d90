"""w4a8_g{G} (QoQ progressive): grid round trips, error rules, the int8 range guarantee, odd tails,
integer exactness of the reference GEMM, SQNR."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowc.errors import QuantizationError
from lowc.quant import W4A8Grouped, quantize_activation, sqnr_db
from lowc.quant.w4a8_group import PROTECTIVE_RANGE, _level1_error, quantize_level1

seeds = st.integers(0, 2**31 - 1)


def _nibbles(packed):
    """Independent decode (int64) of the nibble-split order: in each 4-byte word the low nibbles
    are codes 0..3 and the high nibbles codes 4..7."""
    p = packed.long().unflatten(-1, (-1, 4))
    return torch.cat((p & 15, p >> 4), dim=-1).flatten(-2)


def _w8_from(packed: W4A8Grouped):
    g = packed.spec.group
    q = _nibbles(packed.qweight).unflatten(-1, (-1, g))
    return (q * packed.s1.long()[..., None] - packed.zs1.long()[..., None]).flatten(-2)


def test_level1_round_trip_is_exact_on_the_integer_grid():
    g = torch.Generator().manual_seed(0)
    s1 = torch.randint(1, 17, (50, 1), generator=g)
    z = torch.randint(0, 16, (50, 1), generator=g)
    q = torch.randint(0, 16, (50, 32), generator=g)
    q[:, 0], q[:, 1] = 0, 15  # each group spans its whole grid
    q2, s1b, zb = quantize_level1(((q - z) * s1).float())
    assert torch.equal(q2.long(), q) and torch.equal(s1b.long(), s1) and torch.equal(zb.long(), z)


def test_level0_round_trip_is_exact_on_the_integer_grid():
    # +-119 is never on a level-1 grid (119 = 7 * 17), so level 0 is checked on its own: integer rows
    # reaching 119, times a power-of-two step, give back that step and those integers.
    g = torch.Generator().manual_seed(1)
    w8 = torch.randint(-119, 120, (6, 96), generator=g)
    w8[:, 5] = 119
    step = 2.0 ** torch.randint(-12, -2, (6, 1), generator=g).float()
    packed = W4A8Grouped.from_float(w8.float() * step, "w4a8_g32")
    assert torch.equal(packed.s0.float()[:, None], step)
    assert torch.equal(torch.round(w8.float() * step / packed.s0.float()[:, None]), w8.float())


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 300), st.sampled_from([16, 32, 128]), st.floats(-4, 2), seeds)
def test_error_rules(n, k, group, log_scale, seed):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 10.0**log_scale
    packed = W4A8Grouped.from_float(w, f"w4a8_g{group}")
    s0 = packed.s0.float()[:, None]
    w8 = torch.round(w / s0)
    # level 0: within half an s0 step, and inside the protective range without clamping
    assert bool(((w - w8 * s0).abs() <= 0.5 * s0 + 2**-20 * w.abs()).all())
    assert int(w8.abs().max()) <= PROTECTIVE_RANGE
    # level 1: groups that took c = ceil(span/15) are within s1/2; the others took c - 1 because
    # its squared error is strictly lower
    kp = packed.qweight.shape[1] * 2
    groups = torch.nn.functional.pad(w8, (0, kp - k)).unflatten(-1, (-1, group))
    span = groups.amax(-1).clamp(min=0) - groups.amin(-1).clamp(max=0)
    ceil_s1 = torch.ceil(span / 15).clamp(min=1)
    s1 = packed.s1.float()
    assert bool(((s1 == ceil_s1) | (s1 == ceil_s1 - 1)).all())
    err = (_w8_from(packed).float().unflatten(-1, (-1, group)) - groups).abs()
    took_ceil = s1 == ceil_s1
    assert bool((err.amax(-1)[took_ceil] <= s1[took_ceil] / 2).all())
    vmin = groups.amin(-1, keepdim=True).clamp(max=0)
    _, _, err_ceil = _level1_error(groups, vmin, ceil_s1[..., None])
    assert bool((err.square().sum(-1)[~took_ceil] < err_ceil.squeeze(-1)[~took_ceil]).all())


def test_protective_range_keeps_every_level1_dequant_in_int8():
    # Every integer range [vmin, vmax] with -119 <= vmin <= 0 <= vmax <= 119, each filled with all of
    # its integers (240 slots, repeated at the top): the worst cases for the level-1 rounding.
    lo, hi = torch.meshgrid(torch.arange(-119, 1), torch.arange(0, 120), indexing="ij")
    lo, hi = lo.reshape(-1, 1).float(), hi.reshape(-1, 1).float()
    groups = torch.minimum(lo + torch.arange(240).float(), hi)
    q, s1, z = quantize_level1(groups)
    w8 = (q - z) * s1
    assert int(s1.max()) == 16 and int(z.min()) >= 0 and int(z.max()) <= 15
    assert int(w8.abs().max()) <= 127


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 6), st.integers(1, 260), st.floats(0.5, 4), seeds)
def test_heavy_tailed_weights_stay_in_int8(n, k, tail, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.exp(tail * torch.randn(n, k, generator=g))
    packed = W4A8Grouped.from_float(w, "w4a8_g32")
    assert int(_w8_from(packed).abs().max()) <= 127


@pytest.mark.parametrize("n, k, group", [(7, 100, 128), (5, 576, 128), (3, 131, 64), (1, 1, 16)])
def test_odd_tails_pad_with_exact_zeros(n, k, group):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(k))
    packed = W4A8Grouped.from_float(w, f"w4a8_g{group}")
    kp = -(-k // group) * group
    assert packed.qweight.shape == (n, kp // 2) and packed.s1.shape == (n, kp // group)
    assert packed.dequantize().shape == (n, k)
    assert bool((_w8_from(packed)[:, k:] == 0).all())  # padded columns decode to exact 0
    # the last, partial group's statistics come from its real columns only
    real_last = torch.round(w / packed.s0.float()[:, None])[:, (kp // group - 1) * group :]
    span = real_last.amax(1).clamp(min=0) - real_last.amin(1).clamp(max=0)
    ceil_s1 = torch.ceil(span / 15).clamp(min=1)
    assert bool(((packed.s1[:, -1].float() == ceil_s1) | (packed.s1[:, -1].float() == ceil_s1 - 1)).all())


def test_padding_disabled_raises():
    with pytest.raises(QuantizationError, match="K=576 is not a multiple of the group size 128"):
        W4A8Grouped.from_float(torch.randn(4, 576), "w4a8_g128", pad=False)
    assert W4A8Grouped.from_float(torch.randn(4, 512), "w4a8_g128", pad=False).in_features == 512


@pytest.mark.parametrize("k", [100, 576])
def test_reference_gemm_integer_part_is_exact(k):
    g = torch.Generator().manual_seed(k)
    packed = W4A8Grouped.from_float(torch.randn(7, k, generator=g), "w4a8_g128")
    x_q, x_s = quantize_activation(torch.randn(2, 3, k, generator=g), "w4a8_g128")
    y = packed.linear(x_q, x_s, None, torch.float32)
    acc = x_q.reshape(-1, k).long() @ _w8_from(packed)[:, :k].T  # explicit int64 computation
    expected = acc.float() * x_s.reshape(-1, 1) * packed.s0.float()[None, :]
    assert torch.equal(y.reshape(-1, 7), expected)


def test_sqnr_on_gaussian_weights():
    w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))
    assert sqnr_db(w, W4A8Grouped.from_float(w, "w4a8_g128").dequantize()) > 19.8
    assert sqnr_db(w, W4A8Grouped.from_float(w, "w4a8_g32").dequantize()) > 21.5


def test_bad_weights_raise():
    with pytest.raises(QuantizationError, match="NaN or Inf"):
        W4A8Grouped.from_float(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(QuantizationError, match="dtype torch.int8"):
        W4A8Grouped.from_float(torch.ones(2, 2, dtype=torch.int8))
    with pytest.raises(QuantizationError, match="2-d"):
        W4A8Grouped.from_float(torch.ones(2, 2, 2))


def test_docs_worked_example():
    """docs/formats.md, "Worked example: w4a8_g8": every printed number, including the bytes of the
    nibble-split order (byte b of a word = code b | code 4 + b << 4)."""
    w = torch.tensor([[0.50, -0.25, 0.10, 1.19, -0.60, 0.05], [-2.00, 0.30, 0.00, 0.70, 1.10, -0.40]])
    packed = W4A8Grouped.from_float(w, "w4a8_g8")
    assert packed.codes().tolist() == [[9, 3, 6, 15, 0, 5, 5, 5], [0, 10, 9, 12, 14, 7, 9, 9]]
    assert packed.s1.tolist() == [[12], [13]] and packed.zs1.tolist() == [[60], [117]]
    assert packed.int_weight().tolist() == [[48, -24, 12, 120, -60, 0, 0, 0], [-117, 13, 0, 39, 65, -26, 0, 0]]
    assert packed.qweight.tolist() == [[0x09, 0x53, 0x56, 0x5F], [0xE0, 0x7A, 0x99, 0x9C]]
    x_q, s_x = quantize_activation(torch.tensor([[1.0, -0.5, 0.25, 2.0, 0.0, -1.0]]), "w4a8_g8")
    assert x_q.tolist() == [[64, -32, 16, 127, 0, -64]]
    acc = x_q[0].long() @ packed.int_weight()[:, :6].long().T
    assert acc.tolist() == [19272, -1287]
    y = packed.linear(x_q, s_x, None, torch.float32)
    assert torch.allclose(y, torch.tensor([[3.0356, -0.3408]]), atol=5e-5)
