"""The generated qlinear kernels against lowc.quant's references.

On CPU every kernel runs under Triton's interpreter (TRITON_INTERPRET=1, set below when no GPU is
present) on small odd shapes: M, N odd, K not a multiple of the tile, split-K on and off. Integer
families are checked bit for bit through their raw INT32 accumulator; float outputs against stated
tolerances. `pytest -m gpu` runs the same checks on Llama-3-8B shapes on a CUDA device.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lowc.codegen import render as render_mod  # noqa: E402
from lowc.codegen.spec import spec_for_qlinear  # noqa: E402
from lowc.errors import KernelError, QuantizationError  # noqa: E402
from lowc.quant import quantize_activation, quantize_weight  # noqa: E402
from lowc.runtime import gemm  # noqa: E402
from lowc.runtime.autotune import TileConfig  # noqa: E402
from lowc.runtime.kernel_cache import KernelCache  # noqa: E402

INTEGER_FORMATS = ["w8a8", "w4a8_g128", "w4a8_g32", "w4a8_pc"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return KernelCache(tmp_path_factory.mktemp("kernels"))


def make_case(fmt, m, n, k, seed=0, x_dtype=torch.bfloat16, device="cpu"):
    """(packed weight, x as the kernel takes it, x_scale or None, bias) with random, non-zero data."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * (1 + torch.rand(n, 1, generator=g))
    x = torch.randn(m, k, generator=g) * (1 + 3 * torch.rand(1, k, generator=g))
    bias = torch.randn(n, generator=g)
    packed = quantize_weight(w, fmt)
    if packed.spec.act_bits == 16:
        xq, sx = x.to(x_dtype), None
    else:
        xq, sx = quantize_activation(x, fmt)
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return packed, [to(t) for t in packed.tensors()], to(xq), to(sx), to(bias)


# Small odd shapes: M and N odd, K not a multiple of BK (and for w4a8_pc, odd).
SHAPES = [(5, 37, 200), (1, 19, 328)]
CONFIGS = [TileConfig(16, 32, 64), TileConfig(16, 16, 128, SPLIT_K=3), TileConfig(32, 32, 256, SPLIT_K=2)]


@pytest.mark.parametrize("fmt", INTEGER_FORMATS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"bk{c.BK}s{c.SPLIT_K}")
def test_integer_accumulator_equals_reference_exactly(cache, fmt, shape, config):
    m, n, k = shape
    if fmt == "w4a8_pc":
        k += 1  # odd K: the packed weight carries one padding nibble
    _, weight, xq, sx, _ = make_case(fmt, m, n, k)
    acc = gemm.qlinear_triton(xq, sx, weight, None, fmt, torch.int32, config=config, cache=cache)
    ref = cache.get(spec_for_qlinear(fmt, torch.int8, torch.int32)).reference(xq, sx, weight, None, torch.int32)
    assert acc.dtype == torch.int32 and torch.equal(acc, ref)


@pytest.mark.parametrize("fmt", INTEGER_FORMATS)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_integer_formats_float_output_matches_reference(cache, fmt, out_dtype):
    packed, weight, xq, sx, bias = make_case(fmt, 3, 41, 264, seed=1)
    xq = xq.reshape(3, 1, -1)  # leading dims are kept
    y = gemm.qlinear_triton(xq, sx.reshape(3, 1, 1), weight, bias, fmt, out_dtype, config=CONFIGS[1], cache=cache)
    ref = packed.linear(xq, sx.reshape(3, 1, 1), bias, out_dtype)
    assert y.shape == ref.shape == (3, 1, 41) and y.dtype == out_dtype
    # Same products in the same order; only an FMA contraction of the bias add may differ (1 ulp).
    ulp = 2.0**-23 if out_dtype == torch.float32 else 2.0**-8
    torch.testing.assert_close(y.float(), ref.float(), rtol=2 * ulp, atol=1e-6)


@pytest.mark.parametrize(
    "x_dtype,rel_tol",
    # The kernel rounds each dequantized weight once to the activation dtype; float32 is exact math.
    [(torch.bfloat16, 6e-3), (torch.float16, 1e-3), (torch.float32, 1e-5)],
)
@pytest.mark.parametrize("config", CONFIGS[:2], ids=lambda c: f"bk{c.BK}s{c.SPLIT_K}")
def test_w4a16_matches_reference_within_tolerance(cache, x_dtype, rel_tol, config):
    packed, weight, x, _, bias = make_case("w4a16_g128", 5, 37, 200, seed=2, x_dtype=x_dtype)
    y = gemm.qlinear_triton(x, None, weight, bias, "w4a16_g128", torch.float32, config=config, cache=cache)
    ref = packed.linear(x, None, bias, torch.float32)
    assert ((y - ref).norm() / ref.norm()).item() < rel_tol


def test_w4a16_small_group_and_wide_tile(cache):
    packed, weight, x, _, _ = make_case("w4a16_g32", 3, 21, 100, seed=3, x_dtype=torch.float16)
    y = gemm.qlinear_triton(x, None, weight, None, "w4a16_g32", torch.float16, config=CONFIGS[2], cache=cache)
    ref = packed.linear(x, None, None, torch.float32)
    assert ((y.float() - ref).norm() / ref.norm()).item() < 2e-3


@pytest.mark.parametrize("config", [TileConfig(16, 32, 128), TileConfig(16, 16, 128, SPLIT_K=2)], ids=["s1", "s2"])
def test_w4a4_integer_parts_are_exact_with_unit_scales(cache, config):
    # With every scale 1 the float epilogue adds integers below 2**24: the output is the exact sum
    # of the per-group INT32 partials and the INT8 outlier part, so any integer slip shows.
    fmt, m, n, k = "w4a4_g128_o128", 5, 37, 200 + 128
    packed, weight, xq, sx, _ = make_case(fmt, m, n, k, seed=4)
    weight[1] = torch.ones_like(weight[1])
    weight[3] = torch.ones_like(weight[3])
    sx = torch.ones_like(sx)
    y = gemm.qlinear_triton(xq, sx, weight, None, fmt, torch.float32, config=config, cache=cache)
    acc_g, acc_o = type(packed).from_tensors(fmt, weight, k).int_accumulators(xq)
    assert torch.equal(y, (acc_g.sum(-1) + acc_o).to(torch.float32))


@pytest.mark.parametrize("fmt,k", [("w4a4_g128_o128", 456), ("w4a4_g64_o32", 160), ("w4a4_g128_o0", 300)])
def test_w4a4_matches_reference(cache, fmt, k):
    packed, weight, xq, sx, bias = make_case(fmt, 3, 19, k, seed=5)
    group = packed.spec.group
    y = gemm.qlinear_triton(xq, sx, weight, bias, fmt, torch.float32, config=TileConfig(16, 16, group, SPLIT_K=2), cache=cache)
    ref = packed.linear(xq, sx, bias, torch.float32)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)  # float32 summation order only


@pytest.mark.parametrize("fmt,k", [("w4a8_g128", 264), ("w4a8_pc", 201)])
def test_dequant_first_strategy_matches_the_fused_kernel(cache, fmt, k):
    packed, weight, xq, sx, bias = make_case(fmt, 5, 37, k, seed=7)
    two_pass = TileConfig(16, 32, 64, DEQUANT_FIRST=1)
    acc = gemm.qlinear_triton(xq, sx, weight, None, fmt, torch.int32, config=two_pass, cache=cache)
    ref = cache.get(spec_for_qlinear(fmt, torch.int8, torch.int32)).reference(xq, sx, weight, None, torch.int32)
    assert torch.equal(acc, ref)
    y = gemm.qlinear_triton(xq, sx, weight, bias, fmt, torch.float32, config=two_pass, cache=cache)
    fused = gemm.qlinear_triton(xq, sx, weight, bias, fmt, torch.float32, config=CONFIGS[0], cache=cache)
    assert torch.equal(y, fused)


def test_dequant_first_is_only_for_w4a8(cache):
    _, weight, xq, sx, _ = make_case("w8a8", 2, 8, 64)
    with pytest.raises(KernelError, match="DEQUANT_FIRST"):
        gemm.qlinear_triton(xq, sx, weight, None, "w8a8", torch.float32, config=TileConfig(16, 16, 64, DEQUANT_FIRST=1), cache=cache)


def test_split_k_leaves_scratch_zeroed_and_repeats_exactly(cache):
    _, weight, xq, sx, _ = make_case("w4a8_g128", 3, 37, 512, seed=6)
    cfg = TileConfig(16, 16, 128, SPLIT_K=4)
    first = gemm.qlinear_triton(xq, sx, weight, None, "w4a8_g128", torch.int32, config=cfg, cache=cache)
    second = gemm.qlinear_triton(xq, sx, weight, None, "w4a8_g128", torch.int32, config=cfg, cache=cache)
    assert torch.equal(first, second)
    for (purpose, *_), buf in cache._scratch.items():
        assert int(buf.abs().sum()) == 0, purpose


# The CUDA-core decode kernel (GEMV=1, w4a8_g only): BM tokens per program, any split; K must be a
# multiple of 8 (x read as 8-byte words). Odd M and N, K not a multiple of BK, M over several tiles.
GEMV_CASES = [
    ("w4a8_g128", (1, 19, 328), TileConfig(1, 16, 128, GEMV=1)),
    ("w4a8_g128", (5, 37, 512), TileConfig(4, 16, 256, SPLIT_K=2, GEMV=1)),
    ("w4a8_g32", (3, 21, 200), TileConfig(2, 8, 64, SPLIT_K=3, num_stages=1, GEMV=1)),
    ("w4a8_g128", (2, 9, 328), TileConfig(2, 4, 512, num_warps=8, num_stages=1, GEMV=1)),  # whole K, masked
]


# Tokens on the MMA's A side, the dequantized weight on B (W_AS_B, w4a8_g only): the accumulator is
# transposed once after the loop; odd M and N, masked K, split-K, and a BM that is not BN.
W_AS_B_CASES = [
    ("w4a8_g128", (5, 37, 328), TileConfig(16, 32, 128, SPLIT_K=2, W_AS_B=1)),
    ("w4a8_g32", (19, 21, 200), TileConfig(16, 16, 64, W_AS_B=1)),
]


@pytest.mark.parametrize("fmt,shape,config", GEMV_CASES + W_AS_B_CASES,
                         ids=lambda v: str(v) if not isinstance(v, TileConfig) else ("gemv" if v.GEMV else "w_as_b"))
def test_gemv_and_weight_as_b_accumulators_equal_reference_exactly(cache, fmt, shape, config):
    m, n, k = shape
    _, weight, xq, sx, _ = make_case(fmt, m, n, k, seed=13)
    acc = gemm.qlinear_triton(xq, sx, weight, None, fmt, torch.int32, config=config, cache=cache)
    ref = cache.get(spec_for_qlinear(fmt, torch.int8, torch.int32)).reference(xq, sx, weight, None, torch.int32)
    assert torch.equal(acc, ref)


def test_gemv_float_output_equals_the_tensor_core_kernel(cache):
    # Same INT32 accumulator, same epilogue: the float outputs of the two kernels are identical.
    _, weight, xq, sx, bias = make_case("w4a8_g128", 3, 41, 264, seed=14)
    args = (xq, sx, weight, bias, "w4a8_g128", torch.bfloat16)
    y = gemm.qlinear_triton(*args, config=TileConfig(2, 16, 128, SPLIT_K=2, GEMV=1), cache=cache)
    assert torch.equal(y, gemm.qlinear_triton(*args, config=CONFIGS[0], cache=cache))


def test_gemv_config_falls_back_when_x_is_not_word_aligned(cache):
    # K = 201 is no multiple of 8: a stored GEMV config must not be used; the tensor-core kernel runs.
    _, weight, xq, sx, _ = make_case("w4a8_g128", 2, 19, 201, seed=15)
    acc = gemm.qlinear_triton(xq, sx, weight, None, "w4a8_g128", torch.int32, config=TileConfig(1, 16, 128, GEMV=1), cache=cache)
    ref = cache.get(spec_for_qlinear("w4a8_g128", torch.int8, torch.int32)).reference(xq, sx, weight, None, torch.int32)
    assert torch.equal(acc, ref)


def test_gemv_config_is_only_for_w4a8_group(cache):
    _, weight, xq, sx, _ = make_case("w8a8", 2, 8, 64)
    with pytest.raises(KernelError, match="GEMV exists only"):
        gemm.qlinear_triton(xq, sx, weight, None, "w8a8", torch.float32, config=TileConfig(1, 16, 64, GEMV=1), cache=cache)


def test_weight_packed_for_another_k_is_rejected(cache):
    _, weight, xq, sx, _ = make_case("w4a8_g128", 2, 8, 256)
    with pytest.raises(QuantizationError, match="packed for another in_features"):
        gemm.qlinear_triton(xq[:, :100], sx[:, :], weight, None, "w4a8_g128", torch.float32, cache=cache)


def test_missing_activation_scale_is_rejected(cache):
    _, weight, xq, _, _ = make_case("w8a8", 2, 8, 64)
    with pytest.raises(QuantizationError, match="x_scale"):
        gemm.qlinear_triton(xq, None, weight, None, "w8a8", torch.float32, cache=cache)


def test_invalid_config_is_rejected(cache):
    _, weight, xq, sx, _ = make_case("w4a4_g128_o128", 2, 8, 256 + 128)
    with pytest.raises(KernelError, match="BK must equal the group"):
        gemm.qlinear_triton(xq, sx, weight, None, "w4a4_g128_o128", torch.float32, config=TileConfig(16, 16, 64), cache=cache)


def test_kernel_failure_names_the_spec_and_the_kernel_file(tmp_path, monkeypatch):
    original = render_mod._read_template

    def broken(name):
        doc, body = original(name)
        if name == "qlinear_w8a8":
            body = body.replace("acc = tl.zeros((BN, BM), dtype=tl.int32)", "acc = tl.zeros((BN, BM), dtype=tl.int32) + no_such_name")
        return doc, body

    monkeypatch.setattr(render_mod, "_read_template", broken)
    _, weight, xq, sx, _ = make_case("w8a8", 2, 8, 64)
    with pytest.raises(KernelError) as info:
        gemm.qlinear_triton(xq, sx, weight, None, "w8a8", torch.float32, config=CONFIGS[0], cache=KernelCache(tmp_path))
    message = str(info.value)
    assert "qlinear_w8a8_xint8_ofloat32" in message and str(tmp_path / "kernels") in message


def test_old_gpu_runs_the_reference_with_a_warning(monkeypatch):
    monkeypatch.setattr(gemm, "gpu_support", lambda index: (False, "Tesla T4 (compute capability (7, 5))"))
    packed, weight, xq, sx, bias = make_case("w8a8", 2, 8, 64)
    with pytest.warns(gemm.ReferenceFallbackWarning, match="Tesla T4"):
        y = gemm.qlinear_cuda(xq, sx, weight, bias, "w8a8", torch.bfloat16)
    assert torch.equal(y, packed.linear(xq, sx, bias, torch.bfloat16))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_registration_without_gpu_warns_and_keeps_the_reference():
    with pytest.warns(gemm.ReferenceFallbackWarning, match="no CUDA GPU"):
        assert gemm.register_cuda_kernels() is False


# -- on the GPU: Llama-3-8B linear shapes through the registered op ---------------------------------

LLAMA_SHAPES = [(4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336)]
GPU_FORMATS = ["w4a8_g128", "w4a8_pc", "w8a8", "w4a16_g128", "w4a4_g128_o128"]


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", GPU_FORMATS)
@pytest.mark.parametrize("nk", LLAMA_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("m", [1, 16, 64, 256, 4096])
def test_gpu_llama_shapes_through_the_op(fmt, nk, m):
    """The registered CUDA kernel (with the tuned or default config) against the reference; for the
    integer families also the raw INT32 accumulator, bit for bit."""
    n, k = nk
    if m == 4096 and nk != (4096, 4096):
        pytest.skip("M=4096 is checked on the 4096x4096 shape (the reference needs M*N*K/64 memory for w4a4)")
    assert gemm.register_cuda_kernels()
    packed, weight, xq, sx, _ = make_case(fmt, m, n, k, seed=m, device="cuda")
    spec = packed.spec
    y = torch.ops.lowc.qlinear(xq, sx, weight, None, fmt, torch.bfloat16)
    ref = type(packed).from_tensors(fmt, weight, k).linear(xq, sx, None, torch.float32)
    rel = ((y.float() - ref).norm() / ref.norm()).item()
    assert rel < (6e-3 if spec.act_bits == 16 else 4e-3), rel
    if spec.family in ("w8a8", "w4a8_g", "w4a8_pc") and m in (1, 64, 4096):
        acc = gemm.qlinear_triton(xq, sx, weight, None, fmt, torch.int32)
        raw = gemm.default_cache().get(spec_for_qlinear(fmt, torch.int8, torch.int32))
        assert torch.equal(acc, raw.reference(xq, sx, weight, None, torch.int32))


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["w4a8_g128", "w4a8_pc"])
@pytest.mark.parametrize("config", [TileConfig(16, 64, 256, SPLIT_K=4), TileConfig(128, 128, 128, 1, 8, 3),
                                    TileConfig(128, 128, 128, 1, 8, 4, DEQUANT_FIRST=1)], ids=["splitk", "fused", "two_pass"])
def test_gpu_w4a8_strategies_are_exact(fmt, config):
    packed, weight, xq, sx, _ = make_case(fmt, 200, 4096, 4096, seed=11, device="cuda")
    acc = gemm.qlinear_triton(xq, sx, weight, None, fmt, torch.int32, config=config)
    raw = gemm.default_cache().get(spec_for_qlinear(fmt, torch.int8, torch.int32))
    assert torch.equal(acc, raw.reference(xq, sx, weight, None, torch.int32))


@pytest.mark.gpu
@pytest.mark.parametrize("nk", LLAMA_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("m", [1, 3, 16])
def test_gpu_gemv_is_exact(nk, m):
    """The CUDA-core decode kernel (inline PTX: prmt + dp4a) bit for bit, with and without split-K."""
    from lowc.runtime.autotune import gemv_config

    n, k = nk
    packed, weight, xq, sx, _ = make_case("w4a8_g128", m, n, k, seed=20 + m, device="cuda")
    raw = gemm.default_cache().get(spec_for_qlinear("w4a8_g128", torch.int8, torch.int32))
    ref = raw.reference(xq, sx, weight, None, torch.int32)
    spec = spec_for_qlinear("w4a8_g128", torch.int8, torch.int32)
    bm = 4 if m == 3 else m
    whole_k = TileConfig(bm, 4, 1 << (k - 1).bit_length(), num_warps=8, num_stages=1, GEMV=1)  # K=14336: masked
    for cfg in (gemv_config(spec, m, n, k), TileConfig(bm, 64, 512, SPLIT_K=1, num_stages=3, GEMV=1), whole_k):
        acc = gemm.qlinear_triton(xq, sx, weight, None, "w4a8_g128", torch.int32, config=cfg)
        assert torch.equal(acc, ref), cfg


@pytest.mark.gpu
def test_gpu_gemv_split_k_replays_in_a_cuda_graph():
    packed, weight, xq, sx, _ = make_case("w4a8_g128", 1, 4096, 4096, seed=21, device="cuda")
    cfg = TileConfig(1, 32, 512, SPLIT_K=8, num_stages=1, GEMV=1)
    expected = gemm.qlinear_triton(xq, sx, weight, None, "w4a8_g128", torch.int32, config=cfg)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gemm.qlinear_triton(xq, sx, weight, None, "w4a8_g128", torch.int32, config=cfg)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, expected)


@pytest.mark.gpu
def test_gpu_split_k_replays_in_a_cuda_graph():
    """Split-K leaves its workspace zeroed, so a captured launch replays to the same exact result."""
    packed, weight, xq, sx, _ = make_case("w4a8_g128", 1, 4096, 4096, seed=12, device="cuda")
    cfg = TileConfig(16, 64, 256, SPLIT_K=8)
    expected = gemm.qlinear_triton(xq, sx, weight, None, "w4a8_g128", torch.int32, config=cfg)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gemm.qlinear_triton(xq, sx, weight, None, "w4a8_g128", torch.int32, config=cfg)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, expected)



@pytest.mark.gpu
def test_gpu_registering_again_keeps_bitplane_formats():
    """gemm.register_cuda_kernels() after the bit-plane registration (another component, a test) must not
    take bit-plane formats away from lowc::qlinear: it once did, and they failed with KeyError 'bitplane'."""
    from lowc.runtime import bitplane_gemm

    assert bitplane_gemm.register_cuda_kernels()
    assert gemm.register_cuda_kernels()
    packed, weight, xq, sx, _ = make_case("w2a8_g128_bp", 3, 256, 512, seed=7, device="cuda")
    y = torch.ops.lowc.qlinear(xq, sx, weight, None, "w2a8_g128_bp", torch.bfloat16)
    ref = type(packed).from_tensors("w2a8_g128_bp", weight, 512).linear(xq, sx, None, torch.float32)
    assert ((y.float() - ref).norm() / ref.norm()).item() < 1e-2
