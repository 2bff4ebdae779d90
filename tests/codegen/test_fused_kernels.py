"""The fused glue kernels (codegen/templates/fused_*.py via lowc.runtime.fused) against their references.

On CPU they run under Triton's interpreter (TRITON_INTERPRET=1, set below when no GPU is present) on
small odd shapes. Quantized outputs are compared bit for bit: the kernels round every intermediate as
eager torch does and quantize with IEEE division and round-half-to-even. The RoPE + KV store kernel
must leave the cache bit-identical to lowc::rope_kv_store / lowc::kv_store (fp32 and bf16).
`pytest -m gpu` runs the same checks at Llama-3-8B sizes on a CUDA device.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import lowc.ops.fused_ops as fused_ops  # noqa: E402
from lowc.errors import KernelError, LowcError  # noqa: E402
from lowc.ops.kv_ops import KVCacheSpec  # noqa: E402
from lowc.ops.norm import rms_norm_reference  # noqa: E402
from lowc.quant.activations import quantize_activation  # noqa: E402
from lowc.runtime import fused  # noqa: E402
from lowc.runtime.kernel_cache import KernelCache  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return KernelCache(tmp_path_factory.mktemp("kernels"))


def _rows(m, k, dtype, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * (1 + 3 * torch.rand(1, k, generator=g))  # uneven channels
    return x.to(dtype).to(device)


def _expected(prologue, x, r, w, fmt):
    if prologue == "none":
        return quantize_activation(x, fmt)
    if prologue == "rms_norm":
        return fused_ops.rms_norm_quant_reference(x, w, 1e-5, fmt)
    if prologue == "add_rms_norm":
        return fused_ops.add_rms_norm_quant_reference(x, r, w, 1e-5, fmt)
    return fused_ops.silu_mul_quant_reference(x, r, fmt)


def assert_same_quantization(got, want, exact: bool):
    """(q, scale[, sum]) equal; without `exact`, q may move by one step on a few values and scales by
    a float32 ulp or one rounding of the input dtype (a float32 sum or exp evaluated in another
    order lands on the other side of a rounding boundary)."""
    assert len(got) == len(want)
    for g, e in zip(got, want):
        assert g.dtype == e.dtype and g.shape == e.shape
    if exact:
        for g, e in zip(got, want):
            assert torch.equal(g, e), f"{(g != e).sum().item()} of {g.numel()} values differ"
        return
    (q, s, *rest), (eq, es, *erest) = got, want
    moved = (q.int() - eq.int()).abs()
    assert moved.max() <= 1 and (moved > 0).float().mean() <= 0.01
    torch.testing.assert_close(s, es, rtol=8e-3, atol=0)
    for g, e in zip(rest, erest):
        assert torch.equal(g, e)  # the residual sum is one rounded add: exact


@pytest.mark.parametrize("fmt", ["w4a8_g128", "w4a4_g32_o16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("prologue", fused.PROLOGUES)
def test_act_quant_kernel_matches_reference(cache, fmt, dtype, prologue):
    x, r = _rows(5, 200, dtype, 0), _rows(5, 200, dtype, 1)  # K=200: a partial group and a masked tail
    w = (torch.rand(200, generator=torch.Generator().manual_seed(2)) + 0.5).to(dtype).to(DEVICE)
    got = fused.act_quant_triton(prologue, x, fmt, r=r, weight=w, eps=1e-5, cache=cache)
    want = _expected(prologue, x, r, w, fmt)
    # Plain quantization has no float reduction but a max: bit for bit. The norm's sum of squares
    # and silu's exp are float32 evaluations that may differ by an ulp.
    assert_same_quantization(got, want, exact=prologue == "none")


def test_act_quant_without_quantization_and_leading_dims(cache):
    x, r = _rows(6, 96, torch.bfloat16, 3).reshape(2, 3, 96), _rows(6, 96, torch.bfloat16, 4).reshape(2, 3, 96)
    w = torch.rand(96, generator=torch.Generator().manual_seed(5)).to(DEVICE) + 0.5  # fp32 weight: promotes
    out, total = fused.act_quant_triton("add_rms_norm", x, None, r=r, weight=w, eps=1e-6, cache=cache)
    exp_out, exp_total = fused_ops.add_rms_norm_reference(x, r, w, 1e-6)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 96)
    assert torch.equal(total, exp_total)
    torch.testing.assert_close(out, exp_out, rtol=1e-6, atol=1e-6)  # only the sum-of-squares order differs
    (y,) = fused.act_quant_triton("rms_norm", x, None, weight=w, eps=1e-6, cache=cache)
    torch.testing.assert_close(y, rms_norm_reference(x, w, 1e-6), rtol=1e-6, atol=1e-6)


def test_act_quant_zero_rows_and_empty_input(cache):
    x = torch.zeros(2, 64, device=DEVICE)
    q, s = fused.act_quant_triton("none", x, "w8a8", cache=cache)
    assert torch.equal(q, torch.zeros_like(q)) and torch.equal(s, torch.ones(2, 1, device=DEVICE))
    q, s = fused.act_quant_triton("none", torch.empty(0, 64, device=DEVICE), "w8a8", cache=cache)
    assert q.shape == (0, 64) and s.shape == (0, 1)
    with pytest.raises(KernelError, match="nothing to quantize"):
        fused.act_quant_triton("none", x, "w4a16_g128", cache=cache)


def _kv_case(fmt, dtype, b=3, h=4, hkv=2, t=5, d=16, device=DEVICE, seed=0, key_groups=1):
    spec = KVCacheSpec(fmt, 1, hkv, d, dtype, key_groups=key_groups)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, d, generator=g).to(dtype).transpose(1, 2).to(device)  # strided, as captured
    k = (torch.randn(b, t, hkv, d, generator=g) * 3).to(dtype).transpose(1, 2).to(device)
    v = torch.randn(b, hkv, t, d, generator=g).to(dtype).to(device)
    pos = torch.arange(t)[None, :] + torch.tensor([3, 0, 7][:b])[:, None]
    inv = 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d)
    emb = torch.cat([pos[..., None] * inv] * 2, dim=-1)[:, None]
    cos, sin = emb.cos().to(dtype).to(device), emb.sin().to(dtype).to(device)
    # Rows: slot 2 with 3 cached tokens adds 5; slot 0 empty adds 2 (3 left-pad); slot 1 at 7 adds 4.
    ctx = [torch.tensor(v, device=device) for v in ([2, 0, 1][:b], [3, 0, 7][:b], [5, 2, 4][:b])]
    tensors = spec.allocate(4, 16, device)
    for tensor in tensors:  # garbage, so that a write to a wrong place shows
        tensor.copy_(torch.randint(0, 100, tensor.shape, generator=g).to(tensor.dtype))
    return spec, q, k, v, cos, sin, ctx, tensors


@pytest.mark.parametrize("fmt", ["kv16", "kv8", "kv4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_qkv_store_kernel_is_bit_identical(cache, fmt, dtype):
    spec, q, k, v, cos, sin, ctx, tensors = _kv_case(fmt, dtype)
    mine, theirs = [t.clone() for t in tensors], [t.clone() for t in tensors]
    q_rot = fused.rope_store_triton(q, k, v, cos, sin, *spec.layer_tensors(mine, 0), *ctx, fmt, cache=cache)
    expect = fused_ops.rope_qkv_store_reference(q, k, v, cos, sin, *spec.layer_tensors(theirs, 0), *ctx, fmt)
    assert q_rot.is_contiguous() and torch.equal(q_rot, expect)
    for a, b in zip(mine, theirs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("d", [16, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_qkv_store_with_key_rotation_is_bit_identical(cache, dtype, d):
    spec, q, k, v, cos, sin, ctx, tensors = _kv_case("kv4", dtype, d=d, seed=2)
    mine, theirs, plain = ([t.clone() for t in tensors] for _ in range(3))
    q_rot = fused.rope_store_triton(q, k, v, cos, sin, *spec.layer_tensors(mine, 0), *ctx, "kv4", True, cache=cache)
    expect = fused_ops.rope_qkv_store_reference(q, k, v, cos, sin, *spec.layer_tensors(theirs, 0), *ctx, "kv4", True)
    assert torch.equal(q_rot, expect) and all(torch.equal(a, b) for a, b in zip(mine, theirs))
    unrotated = fused_ops.rope_qkv_store_reference(q, k, v, cos, sin, *spec.layer_tensors(plain, 0), *ctx, "kv4")
    assert not torch.equal(q_rot, unrotated)  # the rotation did happen


@pytest.mark.parametrize("fmt", ["kv8", "kv4"])
def test_rope_kv_store_with_key_rotation(cache, fmt):
    from lowc.ops.kv_ops import rope_kv_store_reference

    spec, _, k, _, cos, sin, ctx, tensors = _kv_case(fmt, torch.float32, seed=3)
    kc, _ = spec.layer_tensors(tensors, 0)
    mine = [t.clone() for t in kc]
    fused.rope_store_triton(None, k, None, cos, sin, mine, None, *ctx, fmt, True, cache=cache)
    rope_kv_store_reference(k, cos, sin, kc, *ctx, fmt, True)
    assert all(torch.equal(a, b) for a, b in zip(mine, kc))


def _key_centre(hkv, d, dtype, device=DEVICE, seed=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(hkv, d, generator=g) * 2).to(dtype).to(device)


@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_qkv_store_with_key_centre_is_bit_identical(cache, dtype, rotate):
    spec, q, k, v, cos, sin, ctx, tensors = _kv_case("kv4", dtype, seed=4)
    centre = _key_centre(2, 16, dtype)
    mine, theirs, plain = ([t.clone() for t in tensors] for _ in range(3))
    q_rot = fused.rope_store_triton(q, k, v, cos, sin, *spec.layer_tensors(mine, 0), *ctx, "kv4", rotate, centre,
                                    cache=cache)
    expect = fused_ops.rope_qkv_store_reference(q, k, v, cos, sin, *spec.layer_tensors(theirs, 0), *ctx, "kv4", rotate,
                                                centre)
    assert torch.equal(q_rot, expect) and all(torch.equal(a, b) for a, b in zip(mine, theirs))
    fused_ops.rope_qkv_store_reference(q, k, v, cos, sin, *spec.layer_tensors(plain, 0), *ctx, "kv4", rotate)
    assert not torch.equal(mine[0], plain[0])  # the centre was subtracted


@pytest.mark.parametrize("key_groups", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_qkv_store_with_key_groups_is_bit_identical(cache, dtype, key_groups):
    """kv4 keys with several scale/zero pairs per head vector (and the rotation and centre of the
    w4a8kv4 recipe): same bytes, scales and zeros as the reference; values keep one pair."""
    spec, q, k, v, cos, sin, ctx, tensors = _kv_case("kv4", dtype, seed=5, key_groups=key_groups)
    centre = _key_centre(2, 16, dtype)
    mine, theirs = [t.clone() for t in tensors], [t.clone() for t in tensors]
    kc, vc = spec.layer_tensors(mine, 0)
    assert kc[1].shape == (4, 2, 16, key_groups) and vc[1].shape == (4, 2, 16)
    q_rot = fused.rope_store_triton(q, k, v, cos, sin, kc, vc, *ctx, "kv4", True, centre, cache=cache)
    expect = fused_ops.rope_qkv_store_reference(q, k, v, cos, sin, *spec.layer_tensors(theirs, 0), *ctx, "kv4", True,
                                                centre)
    assert torch.equal(q_rot, expect) and all(torch.equal(a, b) for a, b in zip(mine, theirs))


@pytest.mark.parametrize("fmt", ["kv16", "kv8"])
def test_rope_kv_store_with_key_centre(cache, fmt):
    from lowc.ops.kv_ops import rope_kv_store_reference

    spec, _, k, _, cos, sin, ctx, tensors = _kv_case(fmt, torch.bfloat16, seed=6)
    centre = _key_centre(2, 16, torch.bfloat16)
    kc, _ = spec.layer_tensors(tensors, 0)
    mine = [t.clone() for t in kc]
    fused.rope_store_triton(None, k, None, cos, sin, mine, None, *ctx, fmt, False, centre, cache=cache)
    rope_kv_store_reference(k, cos, sin, kc, *ctx, fmt, False, centre)
    assert all(torch.equal(a, b) for a, b in zip(mine, kc))
    with pytest.raises(KernelError, match="after RoPE"):
        fused.rope_store_triton(None, k, None, None, None, mine, None, *ctx, fmt, False, centre, cache=cache)


@pytest.mark.parametrize("fmt", ["kv8", "kv4"])
def test_kv_store_and_rope_kv_store_modes(cache, fmt):
    from lowc.ops.kv_ops import kv_store_reference, rotate_half_rope

    spec, _, k, v, cos, sin, ctx, tensors = _kv_case(fmt, torch.float32, seed=1)
    kc, vc = spec.layer_tensors(tensors, 0)
    mine_k, mine_v = [t.clone() for t in kc], [t.clone() for t in vc]
    assert fused.rope_store_triton(None, k, None, cos, sin, mine_k, None, *ctx, fmt, cache=cache) is None
    fused.rope_store_triton(None, v, None, None, None, mine_v, None, *ctx, fmt, cache=cache)
    kv_store_reference(rotate_half_rope(k, cos, sin), kc, *ctx, fmt)
    kv_store_reference(v, vc, *ctx, fmt)
    assert all(torch.equal(a, b) for a, b in zip(mine_k + mine_v, kc + vc))


def test_cuda_wrappers_run_the_kernels(cache, monkeypatch):
    """The functions registered for CUDA check inputs like the references and launch the kernels."""
    from lowc.runtime import gemm

    monkeypatch.setattr(gemm, "gpu_support", lambda index: (True, "test device"))
    monkeypatch.setattr(fused, "default_cache", lambda: cache)
    kernels = fused._cuda_kernels()
    x, r = _rows(3, 64, torch.float32, 6), _rows(3, 64, torch.float32, 7)
    w = torch.ones(64, device=DEVICE)
    q, s, total = kernels["lowc::add_rms_norm_quant"](x, r, w, 1e-5, "w4a8_g128")
    eq, es, et = fused_ops.add_rms_norm_quant_reference(x, r, w, 1e-5, "w4a8_g128")
    assert torch.equal(q, eq) and torch.equal(s, es) and torch.equal(total, et)
    with pytest.raises(LowcError, match="floating point"):
        kernels["lowc::quantize_act"](x, "w4a16_g128")
    spec, q, k, v, cos, sin, ctx, tensors = _kv_case("kv4", torch.float32, d=12)  # not a power of two
    theirs = [t.clone() for t in tensors]
    with pytest.warns(gemm.ReferenceFallbackWarning, match="power of two"):
        kernels["lowc::rope_qkv_store"](q, k, v, cos, sin, *spec.layer_tensors(tensors, 0), *ctx, "kv4")
    fused_ops.rope_qkv_store_reference(q, k, v, cos, sin, *spec.layer_tensors(theirs, 0), *ctx, "kv4")
    assert all(torch.equal(a, b) for a, b in zip(tensors, theirs))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_fused_kernels_at_llama_sizes(dtype):
    x, r = _rows(64, 4096, dtype, 0), _rows(64, 4096, dtype, 1)
    w = torch.rand(4096, device=DEVICE, dtype=dtype) + 0.5
    for prologue, k in (("add_rms_norm", 4096), ("silu_mul", 14336), ("none", 4096)):
        a, b = _rows(64, k, dtype, 2), _rows(64, k, dtype, 3)
        got = fused.act_quant_triton(prologue, a, "w4a8_g128", r=b, weight=w if k == 4096 else None, eps=1e-5)
        # The truth is the reference on the CPU: on CUDA, torch divides by the scalar 127 as a multiply
        # by its reciprocal, which moves a few scales by an ulp.
        want = _expected(prologue, a.cpu(), b.cpu(), w.cpu(), "w4a8_g128")
        assert_same_quantization([t.cpu() for t in got], want, exact=prologue == "none")
    del x, r
    spec, q, k, v, cos, sin, ctx, tensors = _kv_case("kv4", dtype, b=3, h=32, hkv=8, t=5, d=128)
    mine, theirs = [t.clone() for t in tensors], [t.cpu() for t in tensors]
    q_rot = fused.rope_store_triton(q, k, v, cos, sin, *spec.layer_tensors(mine, 0), *ctx, "kv4")
    cpu = [t.cpu() for t in (q, k, v, cos, sin)]
    expect = fused_ops.rope_qkv_store_reference(*cpu, *spec.layer_tensors(theirs, 0), *(t.cpu() for t in ctx), "kv4")
    assert torch.equal(q_rot.cpu(), expect) and all(torch.equal(a.cpu(), b) for a, b in zip(mine, theirs))
    centre = _key_centre(8, 128, dtype)
    spec2, *_, tensors2 = _kv_case("kv4", dtype, b=3, h=32, hkv=8, t=5, d=128, key_groups=2)
    mine, theirs = [t.clone() for t in tensors2], [t.cpu() for t in tensors2]  # two key groups (w4a8kv4)
    q_rot = fused.rope_store_triton(q, k, v, cos, sin, *spec2.layer_tensors(mine, 0), *ctx, "kv4", True, centre)
    expect = fused_ops.rope_qkv_store_reference(*cpu, *spec2.layer_tensors(theirs, 0), *(t.cpu() for t in ctx),
                                                "kv4", True, centre.cpu())
    assert torch.equal(q_rot.cpu(), expect) and all(torch.equal(a.cpu(), b) for a, b in zip(mine, theirs))
    for extra in ((True,), (True, centre)):  # with the key rotation, then also the key centre
        mine, theirs = [t.clone() for t in tensors], [t.cpu() for t in tensors]
        q_rot = fused.rope_store_triton(q, k, v, cos, sin, *spec.layer_tensors(mine, 0), *ctx, "kv4", *extra)
        expect = fused_ops.rope_qkv_store_reference(*cpu, *spec.layer_tensors(theirs, 0), *(t.cpu() for t in ctx),
                                                    "kv4", *(e.cpu() if torch.is_tensor(e) else e for e in extra))
        assert torch.equal(q_rot.cpu(), expect) and all(torch.equal(a.cpu(), b) for a, b in zip(mine, theirs))
