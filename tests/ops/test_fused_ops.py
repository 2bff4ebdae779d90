"""The fused glue ops equal the unfused ops they replace, their fake kernels agree with them, and bad
inputs are lowc errors."""

import pytest
import torch

import lowc.ops  # noqa: F401
import lowc.ops.fused_ops  # noqa: F401
from lowc.errors import LowcError
from lowc.ops.kv_ops import KVCacheSpec

ops = torch.ops.lowc
DTYPES = [torch.float32, torch.bfloat16]


def _rand(*shape, dtype=torch.float32, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["w4a8_g128", "w8a8", "w4a4_g32_o16"])
def test_norm_and_silu_ops_equal_their_composition(dtype, fmt):
    x, r = _rand(3, 5, 96, dtype=dtype), _rand(3, 5, 96, dtype=dtype, seed=1)
    w = (torch.rand(96, generator=torch.Generator().manual_seed(2)) + 0.5).to(dtype)
    q, s = ops.rms_norm_quant(x, w, 1e-5, fmt)
    eq, es = ops.quantize_act(ops.rms_norm(x, w, 1e-5), fmt)
    assert torch.equal(q, eq) and torch.equal(s, es)

    q, s, total = ops.add_rms_norm_quant(x, r, w, 1e-5, fmt)
    eq, es = ops.quantize_act(ops.rms_norm(x + r, w, 1e-5), fmt)
    assert torch.equal(q, eq) and torch.equal(s, es) and torch.equal(total, x + r)

    out, total = ops.add_rms_norm(x, r, w, 1e-5)
    assert torch.equal(out, ops.rms_norm(x + r, w, 1e-5)) and torch.equal(total, x + r)

    q, s = ops.silu_mul_quant(x, r, fmt)
    eq, es = ops.quantize_act(torch.nn.functional.silu(x) * r, fmt)
    assert torch.equal(q, eq) and torch.equal(s, es)
    assert q.dtype == torch.int8 and s.dtype == torch.float32


def _cache_case(fmt, dtype, b=3, h=4, hkv=2, t=5, d=16, slots=4, max_tokens=16):
    spec = KVCacheSpec(fmt, 1, hkv, d, dtype)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(b, t, h, d, generator=g).to(dtype).transpose(1, 2)  # a strided view, as captured
    k = (torch.randn(b, hkv, t, d, generator=g) * 3).to(dtype)
    v = torch.randn(b, hkv, t, d, generator=g).to(dtype)
    angle = torch.rand(b, 1, t, d // 2, generator=g) * 6
    emb = torch.cat([angle, angle], dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    ctx = (torch.tensor([2, 0, 1][:b]), torch.tensor([3, 0, 7][:b]), torch.tensor([5, 2, 4][:b]))
    tensors = spec.allocate(slots, max_tokens)
    for tensor in tensors:
        tensor.copy_(torch.randint(0, 100, tensor.shape, generator=g).to(tensor.dtype))  # not zeros
    return spec, q, k, v, cos, sin, ctx, tensors


@pytest.mark.parametrize("fmt", ["kv16", "kv8", "kv4"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_qkv_store_equals_rope_kv_store_then_kv_store(fmt, dtype):
    spec, q, k, v, cos, sin, ctx, tensors = _cache_case(fmt, dtype)
    mine = [t.clone() for t in tensors]
    theirs = [t.clone() for t in tensors]
    kc, vc = spec.layer_tensors(mine, 0)
    q_rot = ops.rope_qkv_store(q, k, v, cos, sin, kc, vc, *ctx, fmt)
    kc2, vc2 = spec.layer_tensors(theirs, 0)
    ops.rope_kv_store(k, cos, sin, kc2, *ctx, fmt)
    ops.kv_store(v, vc2, *ctx, fmt)
    half = q.shape[-1] // 2
    expect_q = q * cos + torch.cat((-q[..., half:], q[..., :half]), dim=-1) * sin
    assert torch.equal(q_rot, expect_q)
    assert all(torch.equal(a, b) for a, b in zip(mine, theirs))
    assert not all(torch.equal(a, b) for a, b in zip(mine, tensors))  # it did write


def test_fake_kernels_match_real_outputs():
    x = _rand(2, 3, 64)
    w = torch.ones(64)
    torch.library.opcheck(ops.rms_norm_quant.default, (x, w, 1e-5, "w4a8_g128"), test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(ops.add_rms_norm_quant.default, (x, x.clone(), w, 1e-5, "w4a4_g32_o16"),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(ops.add_rms_norm.default, (x, x.clone(), w, 1e-5), test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(ops.silu_mul_quant.default, (x, x.clone(), "w8a8"), test_utils=("test_schema", "test_faketensor"))
    spec, q, k, v, cos, sin, ctx, tensors = _cache_case("kv4", torch.float32)
    kc, vc = spec.layer_tensors(tensors, 0)
    torch.library.opcheck(ops.rope_qkv_store.default, (q, k, v, cos, sin, kc, vc, *ctx, "kv4"),
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_inputs_are_lowc_errors():
    x = _rand(2, 64)
    with pytest.raises(LowcError, match="one shape and dtype"):
        ops.add_rms_norm_quant(x, x[:1], torch.ones(64), 1e-5, "w4a8_g128")
    with pytest.raises(LowcError, match="one shape and dtype"):
        ops.silu_mul_quant(x, x.double(), "w4a8_g128")
    with pytest.raises(LowcError, match="floating point"):
        ops.rms_norm_quant(x, torch.ones(64), 1e-5, "w4a16_g128")
    spec, q, k, v, cos, sin, ctx, tensors = _cache_case("kv8", torch.float32)
    kc, vc = spec.layer_tensors(tensors, 0)
    with pytest.raises(LowcError, match=r"\[B, 1, T, D\]"):
        ops.rope_qkv_store(q, k, v, cos.expand(-1, 4, -1, -1), sin, kc, vc, *ctx, "kv8")
    with pytest.raises(LowcError, match="kv4 cache"):
        ops.rope_qkv_store(q, k, v, cos, sin, kc, vc, *ctx, "kv4")
