"""The bit-plane kernels (all three realizations) against lowc.quant.bitplane's direct integer GEMM.

On CPU every kernel runs under Triton's interpreter (TRITON_INTERPRET=1, set below when no GPU is
present) on small odd shapes. The per-group INT32 accumulators must equal the reference bit for bit
(hypothesis over shapes, bit-widths, groups, split-K); without split-K the float output too, since
the kernel applies the same float32 products in the same order. `pytest -m gpu` repeats the checks
on Llama-3-8B shapes on a CUDA device.
"""

import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lowc.errors import KernelError, QuantizationError  # noqa: E402
from lowc.quant import quantize_activation, quantize_weight  # noqa: E402
from lowc.quant.bitplane import format_name  # noqa: E402
from lowc.runtime import bitplane_gemm as bg  # noqa: E402
from lowc.runtime.autotune import TileConfig  # noqa: E402
from lowc.runtime.kernel_cache import KernelCache  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return KernelCache(tmp_path_factory.mktemp("kernels"))


def make_case(fmt, m, n, k, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * (1 + torch.rand(n, 1, generator=g))
    x = torch.randn(m, k, generator=g) * (1 + 3 * torch.rand(1, k, generator=g))
    packed = quantize_weight(w, fmt)
    xq, sx = quantize_activation(x, fmt)
    bias = torch.randn(n, generator=g)
    return packed, [t.to(device) for t in packed.tensors()], xq.to(device), sx.to(device), bias.to(device)


def tile(realization, group, m, split=1, bn=16, groups_per_tile=1, w_as_b=False):
    bk = (group or 64) * groups_per_tile
    if realization == "unpack":
        return TileConfig(16, bn, bk, split, W_AS_B=int(w_as_b))
    if realization == "gemv":  # a slice per group, or 128 columns per channel; at most 4 tokens a program
        return TileConfig(min(4, 1 << (m - 1).bit_length()), bn, (group or bg.GEMV_PC_SLICE) * groups_per_tile, split, 1, 1)
    return TileConfig(max(1, min(16, 1 << (m - 1).bit_length())), bn, group or 64, split)


@settings(max_examples=12, deadline=None)
@given(
    w_bits=st.integers(2, 8), a_bits=st.integers(4, 8), group=st.sampled_from([0, 32, 64]), bb=st.booleans(),
    realization=st.sampled_from(bg.REALIZATIONS), m=st.integers(1, 5), n=st.integers(1, 40),
    k=st.integers(1, 200), split=st.sampled_from([1, 2]), seed=st.integers(0, 99),
    groups_per_tile=st.sampled_from([1, 2, 4]), w_as_b=st.booleans(),
)
def test_accumulators_equal_the_direct_integer_gemm(cache, w_bits, a_bits, group, bb, realization, m, n, k, split, seed,
                                                    groups_per_tile, w_as_b):
    """Unpack tiles of 1, 2 or 4 groups (last tile part past the groups), either operand mapping."""
    fmt = format_name(w_bits, a_bits, group, bb and w_bits == 2, "bp")
    packed, weight, xq, sx, _ = make_case(fmt, m, n, k, seed)
    cfg = tile(realization, group, m, split, groups_per_tile=groups_per_tile if group else 1, w_as_b=w_as_b)
    acc = bg.qlinear_bitplane(xq, sx, weight, None, fmt, torch.float32, realization=realization,
                              config=cfg, raw=True, cache=cache)
    assert acc.dtype == torch.int32 and torch.equal(acc.cpu(), packed.accumulators(xq.cpu()))


@settings(max_examples=14, deadline=None)
@given(
    w_bits=st.integers(2, 8), a_bits=st.integers(4, 8), group=st.sampled_from([0, 32, 64, 128]), bb=st.booleans(),
    m=st.integers(1, 4), n=st.integers(1, 20).map(lambda v: 2 * v - 1), k=st.integers(1, 420),
    split=st.sampled_from([1, 2, 3]), seed=st.integers(0, 99), slices=st.sampled_from([1, 2, 4]),
    bn=st.sampled_from([4, 16, 32]), stages=st.sampled_from([1, 3]),
)
def test_gemv_accumulators_equal_the_direct_integer_gemm(cache, w_bits, a_bits, group, bb, m, n, k, split, seed,
                                                         slices, bn, stages):
    """The CUDA-core GEMV: odd N, K of several groups (and odd K: x read byte-wise; K % 8 == 0:
    as int64 words), M = 1..4 (one program's tokens), K tiles of 1-4 slices, split-K 1-3, the K loop
    plain or software-pipelined (stages 3)."""
    fmt = format_name(w_bits, a_bits, group, bb and w_bits == 2, "bp")
    packed, weight, xq, sx, _ = make_case(fmt, m, n, k, seed)
    cfg = TileConfig(1 << (m - 1).bit_length(), bn, (group or bg.GEMV_PC_SLICE) * slices, split, 1, stages)
    acc = bg.qlinear_bitplane(xq, sx, weight, None, fmt, torch.float32, realization="gemv", config=cfg, raw=True,
                              cache=cache)
    assert acc.dtype == torch.int32 and torch.equal(acc.cpu(), packed.accumulators(xq.cpu()))


@pytest.mark.parametrize("realization, groups_per_tile, w_as_b", [
    ("unpack", 1, False), ("unpack", 2, True), ("binary", 1, False), ("gemv", 2, False)])
@pytest.mark.parametrize("fmt", ["w3a8_g32_bp", "w6a6_pc_bp", "w2a8_g64_bb_bp", "w8a8_g32_bp"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_float_output_equals_reference_without_split_k(cache, realization, groups_per_tile, w_as_b, fmt, out_dtype):
    packed, weight, xq, sx, bias = make_case(fmt, 3, 21, 150, seed=1)
    group = packed.spec.group or 0
    cfg = tile(realization, group, 3, groups_per_tile=groups_per_tile if group else 1, w_as_b=w_as_b)
    y = bg.qlinear_bitplane(xq, sx, weight, bias, fmt, out_dtype, realization=realization, config=cfg, cache=cache)
    ref = packed.linear(xq.cpu(), sx.cpu(), bias.cpu(), out_dtype)
    tree_order = realization == "gemv" and cfg.BK > (group or cfg.BK)  # the GEMV sums a tile's groups as a tree
    if DEVICE == "cpu" and out_dtype == torch.float32 and not tree_order:
        assert torch.equal(y, ref)  # same float32 products, same order, no FMA in the interpreter
    elif out_dtype == torch.float32 and tree_order:
        # Same exact INT32 parts and float32 products, added in another order: rounding only.
        torch.testing.assert_close(y.cpu(), ref, rtol=2.0**-20, atol=2.0**-20 * float(ref.abs().max()))
    else:
        # The interpreter's float32 -> bfloat16 cast truncates (torch rounds to nearest): 1 ulp; on the
        # GPU an FMA contraction may differ in the last float32 bit.
        ulp = 2.0**-7 if out_dtype == torch.bfloat16 else 2.0**-22
        torch.testing.assert_close(y.cpu().float(), ref.float(), rtol=ulp, atol=1e-5)


@pytest.mark.parametrize("realization", bg.REALIZATIONS)
def test_split_k_and_leading_dims(cache, realization):
    packed, weight, xq, sx, bias = make_case("w5a7_g32_bp", 4, 19, 256, seed=2)
    xq3, sx3 = xq.reshape(2, 2, -1), sx.reshape(2, 2, 1)
    y = bg.qlinear_bitplane(xq3, sx3, weight, bias, "w5a7_g32_bp", torch.float32, realization=realization,
                            config=tile(realization, 32, 4, split=3), cache=cache)
    ref = packed.linear(xq3.cpu(), sx3.cpu(), bias.cpu(), torch.float32)
    assert y.shape == (2, 2, 19)
    torch.testing.assert_close(y.cpu(), ref, rtol=1e-5, atol=1e-5)  # only the order of 3 float adds differs


def test_rendered_sources_are_readable_and_distinct(cache):
    specs = [bg.kernel_spec("w3a8_g128_bp", r) for r in bg.REALIZATIONS]
    assert [s.op for s in specs] == ["qlinear_unpack", "qlinear_binary", "qlinear_gemv"] and specs[0].w_bits == 3
    assert bg.kernel_spec("w2a8_g128_bb_bp", "unpack").w_bits == 3  # five levels need three planes
    paths = [cache.get(s).path for s in specs]
    assert len(set(paths)) == 3
    text = paths[1].read_text()
    assert "W_BITS = tl.constexpr(3)" in text and "A_BITS = tl.constexpr(8)" in text and "popcount" in text
    assert "tl.dot" in paths[0].read_text()
    gemv = paths[2].read_text()
    assert "dp4a.u32.s32" in gemv and "tl.dot(" not in gemv.split("# ---- kernel")[1]


@pytest.mark.parametrize("planes", range(2, 9))
def test_simd_recombination_arithmetic(planes):
    """`recombine_slice`'s register arithmetic on explicit 32-bit integers, for every zero zs and
    random v of a 32-column word stored by pack_planes: the masked planes of register i never
    overlap, rotated right by i they give q = v + 2^(P-1) for columns 4i..4i+3, and lane +
    (128 - 2^(P-1) - zs) stays in 1..255, so the XOR gives the int8 bytes of v - zs (P <= 7); with
    8 planes (no complement) the bits are v's own bytes."""
    from lowc.quant.bitplane import pack_planes

    g = torch.Generator().manual_seed(planes)
    half = 2 ** (planes - 1)
    v = torch.randint(-half, half, (40, 32), generator=g)
    stored = pack_planes(v, planes).to(torch.int64)  # [P, 40, 1]
    for row in range(v.shape[0]):
        words = [int(w) for w in stored[:, row, 0]]
        for i in range(8):
            t = 0
            for j, w in enumerate(words):
                if planes <= 7 and j == planes - 1:
                    w = ~w & 0xFFFFFFFF
                t |= w & (0x01010101 << ((i + j) % 8))
            q = ((t >> i) | (t << (32 - i))) & 0xFFFFFFFF if i else t
            lanes_q = [(q >> (8 * r)) & 0xFF for r in range(4)]
            lanes = v[row, 4 * i: 4 * i + 4].tolist()
            if planes == 8:
                assert [b - 256 if b & 0x80 else b for b in lanes_q] == lanes
                continue
            assert lanes_q == [lane + half for lane in lanes]
            for zs in range(-half, half):
                c = 128 - half - zs
                assert 1 <= c and all(1 <= lq + c <= 255 for lq in lanes_q)  # no lane carries
                r = ((q + c * 0x01010101) & 0xFFFFFFFF) ^ 0x80808080
                got = [((r >> (8 * k)) & 0xFF) - (256 if (r >> (8 * k)) & 0x80 else 0) for k in range(4)]
                assert got == [lane - zs for lane in lanes]


# -- the selector ----------------------------------------------------------------------------------------


def test_selector_rule_without_measurement(tmp_path):
    """Decode (M <= 2) runs the GEMV, larger M the unpack tiles."""
    sel = bg.RealizationSelector(tmp_path, policy="miss", shipped_dir=tmp_path / "none")
    r, cfg = sel.choose("w3a8_g128_bp", "bfloat16", 1, 4096, 4096, "cpu")
    assert r == "gemv" and cfg.BM == 1 and cfg.BK == 2048 and cfg.BN == 16 and cfg.SPLIT_K > 1 and bg.gemv_fits_registers(cfg)
    r, cfg = sel.choose("w3a8_g128_bp", "bfloat16", 4, 4096, 4096, "cpu")
    assert r == "unpack" and cfg.BK == 128 and cfg.BM == 16 and cfg.SPLIT_K > 1
    r, cfg = sel.choose("w6a6_pc_bp", "bfloat16", 4096, 4096, 4096, "cpu")
    assert r == "unpack" and cfg.BM == 128 and cfg.SPLIT_K == 1


def test_selector_measures_both_realizations_and_stores_the_choice(tmp_path):
    sel = bg.RealizationSelector(tmp_path, policy="miss", shipped_dir=tmp_path / "none")
    seen = set()

    def bench(realization, cfg):
        seen.add(realization)
        return (1e-6 if realization == "binary" else 2e-6) * (1 + cfg.BN / 1024)

    r, cfg = sel.choose("w2a8_g128_bp", "bfloat16", 3, 4096, 4096, "h100", bench=bench)
    assert r == "binary" and seen == set(bg.REALIZATIONS) and cfg.BN == 16
    table = json.loads((tmp_path / "autotune" / "bitplane-h100.json").read_text())["entries"]
    entry = table["w2a8_g128_bp|obfloat16|m4|n4096|k4096"]
    assert entry["realization"] == "binary" and set(entry["us_by_realization"]) == set(bg.REALIZATIONS)
    # M=3 and M=4 share the bucket; a fresh selector reads the stored choice without timing anything.
    fresh = bg.RealizationSelector(tmp_path, policy="miss", shipped_dir=tmp_path / "none")
    assert fresh.choose("w2a8_g128_bp", "bfloat16", 4, 4096, 4096, "h100", bench=None) == (r, cfg)
    # A different M bucket is a different decision; an unmeasured shape takes the nearest measured one.
    assert fresh.choose("w2a8_g128_bp", "bfloat16", 64, 4096, 4096, "h100")[0] == "unpack"
    assert fresh.choose("w2a8_g128_bp", "bfloat16", 3, 4096, 11008, "h100") == (r, cfg)


def test_selector_picks_the_gemv_per_m_bucket(tmp_path):
    """The GEMV is a candidate up to GEMV_MAX_M tokens only; where it is fastest it is stored and
    read back per M bucket, and a larger bucket never gets it."""
    sel = bg.RealizationSelector(tmp_path, policy="miss", shipped_dir=tmp_path / "none")

    def bench(realization, cfg):
        return {"gemv": 1e-6, "unpack": 2e-6, "binary": 3e-6}[realization] * (1 + cfg.BN / 4096)

    for m in (1, 2, 4):
        r, cfg = sel.choose("w3a8_g128_bp", "bfloat16", m, 4096, 4096, "h200", bench=bench)
        assert r == "gemv" and cfg.BM == m and cfg.BK % 128 == 0 and bg.gemv_fits_registers(cfg)
    assert sel.choose("w3a8_g128_bp", "bfloat16", 16, 4096, 4096, "h200", bench=bench)[0] == "unpack"
    assert bg.candidate_configs(bg.kernel_spec("w3a8_g128_bp", "gemv"), "gemv", 5, 64, 256) == []
    entries = json.loads((tmp_path / "autotune" / "bitplane-h200.json").read_text())["entries"]
    assert {k.split("|")[2]: v["realization"] for k, v in entries.items()} == {
        "m1": "gemv", "m2": "gemv", "m4": "gemv", "m16": "unpack"}
    assert "gemv" not in entries["w3a8_g128_bp|obfloat16|m16|n4096|k4096"]["us_by_realization"]


def test_selector_ignores_stale_entries(tmp_path):
    sel = bg.RealizationSelector(tmp_path, policy="off", shipped_dir=tmp_path / "none")
    key = sel.key("w3a8_g128_bp", "bfloat16", 1, 64, 256)
    bad = {"realization": "binary", "config": TileConfig(16, 128, 256).to_dict()}  # BK != group, tile too big
    sel.user_table("cpu").update({key: bad}, "cpu")
    assert sel.choose("w3a8_g128_bp", "bfloat16", 1, 64, 256, "cpu")[0] == bg.default_realization(1) == "gemv"


# -- bad input -------------------------------------------------------------------------------------------


def test_bad_inputs_name_the_problem(cache):
    packed, weight, xq, sx, _ = make_case("w3a8_g32_bp", 2, 8, 64)
    with pytest.raises(KernelError, match="bitplane pass rewrites it to w3a8_g32_bp"):
        bg.kernel_spec("w3a8_g32_int", "unpack")
    with pytest.raises(KernelError, match="not a bit-plane format"):
        bg.kernel_spec("w4a8_g128", "unpack")
    with pytest.raises(KernelError, match="unknown bit-plane realization"):
        bg.kernel_spec("w3a8_g32_bp", "mma_b1")
    with pytest.raises(KernelError, match="1 to 8 whole groups"):
        bg.qlinear_bitplane(xq, sx, weight, None, "w3a8_g32_bp", torch.float32, realization="unpack",
                            config=TileConfig(16, 16, 512), cache=cache)
    with pytest.raises(KernelError, match="binary K tile is one group"):
        bg.check_config(bg.kernel_spec("w3a8_g32_bp", "binary"), "binary", TileConfig(4, 16, 64))
    with pytest.raises(KernelError, match="W_AS_B"):
        bg.check_config(bg.kernel_spec("w3a8_g32_bp", "binary"), "binary", TileConfig(4, 16, 32, W_AS_B=1))
    with pytest.raises(KernelError, match="BM must be <= 4"):
        bg.check_config(bg.kernel_spec("w3a8_g32_bp", "gemv"), "gemv", TileConfig(8, 16, 32))
    with pytest.raises(KernelError, match="1 to 32 slices of 128 columns"):
        bg.check_config(bg.kernel_spec("w3a8_pc_bp", "gemv"), "gemv", TileConfig(1, 16, 64))
    with pytest.raises(KernelError, match="BM and BN must be >= 16"):
        bg.check_config(bg.kernel_spec("w3a8_g32_bp", "unpack"), "unpack", TileConfig(4, 16, 32))
    with pytest.raises(QuantizationError, match="expected uint32"):
        bg.qlinear_bitplane(xq, sx, [weight[0].to(torch.int32), *weight[1:]], None, "w3a8_g32_bp",
                            torch.float32, cache=cache)
    with pytest.raises(QuantizationError, match="int8"):
        bg.qlinear_bitplane(xq.float(), sx, weight, None, "w3a8_g32_bp", torch.float32, cache=cache)


def test_dispatch_recognises_bitplane_formats():
    assert bg.is_bitplane_format("w3a8_g128_bp") and not bg.is_bitplane_format("w3a8_g128_int")
    assert not bg.is_bitplane_format("w4a8_g128") and not bg.is_bitplane_format("nonsense")


# -- GPU (device machine) -------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("fmt, realization, m", [
    ("w2a8_g128_bp", "unpack", 1), ("w2a8_g128_bp", "binary", 1), ("w3a8_g128_bp", "unpack", 16),
    ("w3a8_g128_bp", "binary", 16), ("w6a6_g128_bp", "unpack", 128), ("w6a6_pc_bp", "unpack", 33),
    ("w2a8_g128_bb_bp", "binary", 4), ("w5a4_g64_bp", "unpack", 256),
    ("w2a8_g128_bp", "gemv", 1), ("w3a8_g128_bp", "gemv", 4), ("w2a8_g128_bb_bp", "gemv", 2), ("w6a6_pc_bp", "gemv", 3),
])
def test_gpu_llama_shapes_exact(tmp_path, fmt, realization, m):
    n, k = 4096, 4096
    packed, weight, xq, sx, bias = make_case(fmt, m, n, k, device="cuda")
    cfg = bg.default_config(bg.kernel_spec(fmt, realization, raw=True), realization, m, n, k)
    acc = bg.qlinear_bitplane(xq, sx, weight, None, fmt, torch.float32, realization=realization, config=cfg, raw=True)
    assert torch.equal(acc.cpu(), packed.accumulators(xq.cpu()))
    y = bg.qlinear_bitplane(xq, sx, weight, bias, fmt, torch.float32, realization=realization,
                            selector=bg.RealizationSelector(tmp_path, policy="off"))  # no timing in tests
    torch.testing.assert_close(y.cpu(), packed.linear(xq.cpu(), sx.cpu(), bias.cpu(), torch.float32),
                               rtol=1e-4, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt, m", [("w2a8_g128_bp", 1), ("w3a8_g128_bp", 2), ("w6a6_pc_bp", 1)])
def test_gpu_every_gemv_candidate_exact(fmt, m):
    """Every tile the tuner may pick for the GEMV (plain and software-pipelined loops, whole-K and
    split-K programs) gives the exact INT32 accumulators on a Llama-3-8B shape."""
    n, k = 4096, 4096
    packed, weight, xq, sx, _ = make_case(fmt, m, n, k, device="cuda")
    ref = packed.accumulators(xq.cpu())
    configs = bg.candidate_configs(bg.kernel_spec(fmt, "gemv", raw=True), "gemv", m, n, k)
    assert any(c.num_stages > 1 for c in configs) and any(c.SPLIT_K == 1 for c in configs)
    for cfg in configs:
        acc = bg.qlinear_bitplane(xq, sx, weight, None, fmt, torch.float32, realization="gemv", config=cfg, raw=True)
        assert torch.equal(acc.cpu(), ref), cfg
