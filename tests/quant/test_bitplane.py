"""Bit-plane formats (lowc.quant.bitplane): names, plane packing, the grid, the exact integer GEMM and
the bit-plane identity the binary kernel relies on."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowc.ops  # noqa: F401  (registers lowc::qlinear / lowc::quantize_act)
from lowc.errors import QuantizationError
from lowc.quant import parse_format, quantize_activation, quantize_weight, sqnr_db, weight_from_tensors
from lowc.quant.bitplane import (
    BitplaneIntWeight,
    BitplaneSpec,
    BitplaneWeight,
    activation_planes,
    format_name,
    pack_planes,
    plane_weights,
    popcount32,
    unpack_planes,
)

FAST = settings(max_examples=25, deadline=None)


def explicit_accumulators(x: torch.Tensor, w: BitplaneIntWeight) -> torch.Tensor:
    """acc[m, g, n] by an int64 loop over groups, straight from the definition."""
    gl = w.spec.group_len(w.in_features)
    kp = w.qweight.shape[1]
    x = torch.nn.functional.pad(x.to(torch.int64), (0, kp - x.shape[1]))
    out = []
    for g in range(kp // gl):
        cols = slice(g * gl, (g + 1) * gl)
        wv = w.qweight[:, cols].to(torch.int64) - w.zero[:, g : g + 1].to(torch.int64)
        out.append(x[:, cols] @ wv.T)
    return torch.stack(out, dim=1).to(torch.int32)


def case(fmt, m, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * (1 + torch.rand(n, 1, generator=g))
    x = torch.randn(m, k, generator=g) * (1 + 3 * torch.rand(1, k, generator=g))
    packed = quantize_weight(w, fmt)
    xq, sx = quantize_activation(x, fmt)
    return w, x, packed, xq, sx


# -- names -------------------------------------------------------------------------------------------


def test_names_parse_into_bitplane_specs():
    s = parse_format("w3a8_g128_bp")
    assert isinstance(s, BitplaneSpec) and (s.weight_bits, s.act_bits, s.group, s.form) == (3, 8, 128, "bp")
    assert s.planes == 3 and s.plane_weights == (1, 2, -4) and s.act_plane_weights[-1] == -128
    assert s.act_scale_groups(576) == 1 and s.act_qmax == 127
    pc = parse_format("w6a6_pc_int")
    assert pc.group is None and pc.act_qmax == 31 and pc.group_len(100) == 128 and pc.padded_k(100) == 128
    bb = parse_format("w2a8_g128_bb_bp")
    assert bb.bit_balance and bb.levels == 5 and bb.planes == 3
    assert s.with_form("int").name == "w3a8_g128_int" and bb.with_form("int").name == "w2a8_g128_bb_int"
    assert format_name(2, 8, 0, True, "bp") == "w2a8_pc_bb_bp"
    # Existing names keep their meaning.
    assert parse_format("w4a8_g128").family == "w4a8_g"


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("w1a8_g128_bp", "weight bits 1 unsupported; bit-plane formats take 2..8"),
        ("w9a8_g128_int", "weight bits 9"),
        ("w3a3_g128_bp", "supports M in 4..8"),
        ("w3a16_g128_bp", "use w4a16"),
        ("w3a8_g48_bp", "powers of two >= 32"),
        ("w3a8_g16_bp", "32, 64, 128"),
        ("w3a8_g128_bb_bp", "only for 2-bit"),
    ],
)
def test_bad_names_raise_named_errors(name, fragment):
    with pytest.raises(QuantizationError, match=fragment):
        parse_format(name)


def test_unknown_name_lists_bitplane_forms():
    with pytest.raises(QuantizationError, match=r"w\{N\}a\{M\}_g\{G\}\[_bb\]_bp"):
        parse_format("w3a8")


# -- planes --------------------------------------------------------------------------------------------


@FAST
@given(p=st.integers(2, 8), rows=st.integers(1, 5), words=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_pack_unpack_round_trip(p, rows, words, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(-(2 ** (p - 1)), 2 ** (p - 1), (rows, 32 * words), generator=g, dtype=torch.int64)
    planes = pack_planes(v, p)
    assert planes.dtype == torch.uint32 and planes.shape == (p, rows, words)
    assert torch.equal(unpack_planes(planes).to(torch.int64), v)


def test_bit_order_is_rotated_lane_order_and_sign_plane_negative():
    v = torch.zeros(1, 64, dtype=torch.int64)
    v[0, 0] = 1  # column 0 = 4*0 + 0: plane 0, word 0, bit 0
    v[0, 33] = 2  # column 1 of word 1 = 4*0 + 1: plane 1, bit 8*1 + 0 + 1
    v[0, 31] = -4  # 3-bit: only the sign plane (j = 2); column 31 = 4*7 + 3: bit (24 + 7 + 2) mod 32
    planes = pack_planes(v, 3).to(torch.int64)
    assert planes[0, 0].tolist() == [1, 0]
    assert planes[1, 0].tolist() == [0, 2**9]
    assert planes[2, 0].tolist() == [2**1, 0]
    assert plane_weights(3) == (1, 2, -4) and plane_weights(8)[-1] == -128
    # Unrotated (activation planes of the binary kernel): column 31 of plane 2 at bit 8*3 + 7.
    assert pack_planes(v, 3, rotate=False).to(torch.int64)[2, 0].tolist() == [2**31, 0]


@FAST
@given(p=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_register_recombination_of_the_stored_order(p, seed):
    """What every kernel does with a 32-column plane word: register i = OR over planes j of
    (word_j & (0x01010101 << ((i + j) % 8))), rotated right by i, holds four byte lanes of
    q = v + 2**(p-1) (sign plane complemented) for columns 4i .. 4i+3, in order."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(-(2 ** (p - 1)), 2 ** (p - 1), (1, 32), generator=g, dtype=torch.int64)
    words = [int(w) for w in pack_planes(v, p).to(torch.int64)[:, 0, 0]]
    q = (v[0] + 2 ** (p - 1)).tolist()
    for i in range(8):
        reg = 0
        for j, w in enumerate(words):
            w = w ^ 0xFFFFFFFF if j == p - 1 else w
            reg |= w & (0x01010101 << ((i + j) % 8))
        reg = ((reg >> i) | (reg << (32 - i))) & 0xFFFFFFFF if i else reg
        assert [(reg >> (8 * r)) & 0xFF for r in range(4)] == q[4 * i: 4 * i + 4]


def test_pack_rejects_out_of_range_and_ragged_k():
    with pytest.raises(QuantizationError, match="signed 3-bit range"):
        pack_planes(torch.full((1, 32), 4), 3)
    with pytest.raises(QuantizationError, match="multiple of 32"):
        pack_planes(torch.zeros(1, 33, dtype=torch.int64), 3)


@FAST
@given(seed=st.integers(0, 2**16))
def test_popcount32_counts_bits(seed):
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(0, 2**32, (64,), generator=g, dtype=torch.int64)
    expected = torch.tensor([bin(int(w)).count("1") for w in words])
    assert torch.equal(popcount32(words), expected)


# -- the grid --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["w2a8_g128_int", "w3a8_g32_int", "w5a6_pc_int", "w8a8_g64_int", "w2a8_g64_bb_int"])
def test_quantization_error_within_half_a_step_and_padding_exact(fmt):
    w = torch.randn(9, 200) * 3
    p = BitplaneIntWeight.from_float(w, fmt)
    spec = p.spec
    gl = spec.group_len(200)
    off = 2 ** (spec.planes - 1)
    q = p.qweight.to(torch.int64) + off
    assert int(q.min()) >= 0 and int(q.max()) <= spec.levels - 1
    z = p.zero.to(torch.int64) + off
    assert int(z.min()) >= 0 and int(z.max()) <= spec.levels - 1
    step = p.scale.to(torch.float32).repeat_interleave(gl, dim=1)[:, :200]
    assert bool(((p.dequantize() - w).abs() <= step / 2 * (1 + 1e-5)).all())
    # Padded columns decode to exactly 0 (v = zs).
    pad = p.qweight[:, 200:].to(torch.int64) - p.zero.to(torch.int64).repeat_interleave(gl, 1)[:, 200:]
    assert pad.numel() and int(pad.abs().max()) == 0
    # Zero is a grid point: zero weights stay exactly zero.
    w0 = w.clone()
    w0[:, :5] = 0
    assert torch.equal(BitplaneIntWeight.from_float(w0, fmt).dequantize()[:, :5], torch.zeros(9, 5))


def test_bit_balance_uses_five_symmetric_levels():
    w = torch.randn(16, 256)
    p = BitplaneIntWeight.from_float(w, "w2a8_g128_bb_int")
    levels = (p.qweight.to(torch.int64) + 4).unique()
    assert set(levels.tolist()) <= set(range(5)) and len(levels) == 5
    plain = sqnr_db(w, quantize_weight(w, "w2a8_g128_int").dequantize())
    balanced = sqnr_db(w, p.dequantize())
    assert balanced > plain + 2.0  # a fifth level, centred on zero: 8.5 vs 6.0 dB on Gaussian weights


@pytest.mark.parametrize("bits, floor_db", [(2, 5.5), (3, 12.8), (4, 19.4), (6, 31.9), (8, 44.0)])
def test_sqnr_on_gaussian_weights_grows_6db_per_bit(bits, floor_db):
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(0))
    assert sqnr_db(w, quantize_weight(w, f"w{bits}a8_g128_int").dequantize()) > floor_db


def test_clip_ratio_shrinks_the_range():
    w = torch.randn(4, 128)
    full = BitplaneIntWeight.from_float(w, "w3a8_g128_int")
    clipped = BitplaneIntWeight.from_float(w, "w3a8_g128_int", clip=0.5)
    assert bool((clipped.scale.float() < full.scale.float()).all())


def test_padding_disabled_names_the_fix():
    with pytest.raises(QuantizationError, match="not a multiple of the group size 128 and padding is disabled"):
        BitplaneIntWeight.from_float(torch.randn(3, 200), "w3a8_g128_int", pad=False)
    BitplaneIntWeight.from_float(torch.randn(3, 256), "w3a8_g128_int", pad=False)


# -- the GEMM --------------------------------------------------------------------------------------------


@FAST
@given(
    w_bits=st.integers(2, 8), a_bits=st.integers(4, 8), group=st.sampled_from([0, 32, 64, 128]),
    bb=st.booleans(), m=st.integers(1, 6), n=st.integers(1, 9), k=st.integers(1, 300), seed=st.integers(0, 999),
)
def test_integer_and_binary_accumulators_equal_the_explicit_gemm(w_bits, a_bits, group, bb, m, n, k, seed):
    bb = bb and w_bits == 2
    fmt = format_name(w_bits, a_bits, group, bb, "bp")
    _, _, planes, xq, _ = case(fmt, m, n, k, seed)
    ints = planes.to_int()
    assert torch.equal(ints.qweight, BitplaneIntWeight.from_float(case(fmt, m, n, k, seed)[0], ints.spec).qweight)
    expected = explicit_accumulators(xq, ints)
    assert torch.equal(ints.accumulators(xq), expected)
    assert torch.equal(planes.accumulators(xq), expected)
    assert torch.equal(planes.binary_accumulators(xq), expected)
    assert int(xq.abs().max()) <= 2 ** (a_bits - 1) - 1


def test_linear_is_the_scaled_accumulators_and_tracks_float():
    w, x, p, xq, sx = case("w6a8_g64_bp", 7, 33, 320, seed=3)
    bias = torch.randn(33)
    y = p.linear(xq, sx, bias, torch.float32)
    acc = p.accumulators(xq).to(torch.float64)
    expected = (acc * p.scale.to(torch.float64).T[None]).sum(1) * sx.to(torch.float64) + bias.double()
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    assert sqnr_db(x @ w.T + bias, y) > 25


def test_op_level_qlinear_and_quantize_act():
    w, x, p, _, _ = case("w3a6_g32_bp", 4, 10, 96)
    q, s = torch.ops.lowc.quantize_act(x, "w3a6_g32_bp")
    assert q.dtype == torch.int8 and s.shape == (4, 1) and int(q.abs().max()) == 31
    y = torch.ops.lowc.qlinear(q, s, p.tensors(), None, "w3a6_g32_bp", torch.bfloat16)
    assert y.dtype == torch.bfloat16 and y.shape == (4, 10)
    torch.testing.assert_close(y, p.linear(q, s, None, torch.bfloat16))
    rebuilt = weight_from_tensors("w3a6_g32_bp", p.tensors(), 96)
    assert torch.equal(rebuilt.planes, p.planes)


def test_from_tensors_checks_shapes_and_dtypes():
    p = quantize_weight(torch.randn(5, 64), "w4a6_g32_bp")
    with pytest.raises(QuantizationError, match="planes"):
        weight_from_tensors("w4a6_g32_bp", [p.planes.to(torch.int32), p.scale, p.zero], 64)
    with pytest.raises(QuantizationError, match="expected"):
        weight_from_tensors("w4a6_g32_bp", p.tensors(), 128)


def test_activations_outside_the_format_range_are_rejected():
    p = quantize_weight(torch.randn(5, 64), "w4a6_g32_bp")
    xq, sx = quantize_activation(torch.randn(2, 64), "w4a8_g32_bp")  # INT8 values, INT6 format
    with pytest.raises(QuantizationError, match="leave INT6"):
        p.linear(xq, sx, None, torch.float32)


def test_activation_planes_recombine_to_x():
    x = torch.randint(-32, 32, (3, 70), dtype=torch.int8)
    planes = activation_planes(x, 6, 96)
    assert planes.shape == (6, 3, 3)
    back = unpack_planes(planes, rotated=False)
    assert torch.equal(back[:, :70], x.to(torch.int16)) and int(back[:, 70:].abs().sum()) == 0


def test_bits_per_weight_scale_with_planes():
    w = torch.randn(256, 1024)
    bpw = {b: quantize_weight(w, f"w{b}a8_g128_bp").bits_per_weight for b in (2, 3, 6)}
    for b, v in bpw.items():
        assert math.isclose(v, b + 24 / 128, rel_tol=1e-6)  # planes + fp16 scale and int8 zero per 128


def test_element_grid_and_with_codes_round_trip():
    w = torch.randn(6, 150)
    p = BitplaneIntWeight.from_float(w, "w3a8_g64_int")
    step, zero, qmin, qmax = p.element_grid()
    v = p.qweight[:, :150].float()
    assert bool(((v >= qmin) & (v <= qmax)).all()) and int(qmax[0, 0] - qmin[0, 0]) == 7
    torch.testing.assert_close((v - zero) * step, p.dequantize(), rtol=0, atol=0)
    same = p.with_codes(v)
    assert all(torch.equal(a, b) for a, b in zip(same.tensors(), p.tensors()))
    with pytest.raises(QuantizationError, match="outside the grid"):
        p.with_codes(v + 8)
    bb = BitplaneIntWeight.from_float(w, "w2a8_g64_bb_int")
    assert int(bb.element_grid()[3][0, 0]) == -4 + 4  # five levels: v in -4..0
